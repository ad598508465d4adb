"""The rules several parts of the project share, in one table, and every copy of each rule tested against it.

The worker ships alone in its container, so it keeps its own copies; the client and the
emulator have theirs. Each copy must give the table's answer:

* **object keys** (relative to a storage prefix): a key is refused when any ``/``-separated
  segment is empty, ``.`` or ``..`` (so also an empty key, a leading or trailing ``/`` and
  ``a//b``), or when it holds a backslash or a NUL. Nothing is decoded first: ``%2e%2e`` is
  three literal characters, not ``..``. Copies: ``htc_helpers._safe_key``, the worker layer's
  ``safe_key``, the emulator's ``storage.safe_relative_key`` (presigned URLs) and its S3
  gate's ``_check_key``, which sees whole keys (a storage prefix joined to the key): with
  the rule stated per segment, a prefix changes nothing.
* **image lists**: one key a line; lines end at ``\\n`` (or ``\\r\\n``) and nowhere else, not at
  the other line breaks ``str.splitlines`` knows (U+2028, ``\\x1c``, ``\\x85``, ``\\x0b``...),
  which are legal in a file name; ASCII blanks around a key are dropped; blank lines are
  skipped. Copies: ``htc_helpers._parse_image_list``, the worker layer's ``parse_item_list``.
* **region names**: a Rescale region ``AWS_EU_WEST_1`` is the AWS region ``eu-west-1``;
  anything else, or none, is ``us-east-1``, S3's default (never the machine's own AWS
  settings). Copies: ``htc_helpers._aws_region``, the worker layer's ``aws_region``.
"""

from __future__ import annotations

import pytest

import htc_helpers as htc
from face_tagger import htc_worker as hw
from htc_emulator.s3_gate import S3Denied, _check_key
from htc_emulator.storage import InvalidObjectKey, project_shared_prefix, safe_relative_key, task_prefix

SAFE_KEYS = [
    "photo.jpg",
    "a/b/c.jpg",
    ".hidden",
    "a/.b",
    "a..b",
    "..a/b",
    "a/...",
    "a/%2e%2e/b",  # encoded: literal characters, never decoded into '..'
    "%2F..%2Fescape",
    "a%5Cb",
    "fotó.jpg",
    "写真/顔.jpg",
    "line\u2028separator.jpg",
    "group\x1cseparator.jpg",
    "next\x85line.jpg",
    "\uff0e\uff0e/fullwidth-dots.jpg",
    "a\u2215b.jpg",  # a division slash is not a separator
    "with space.jpg",
    "a:b.jpg",
]
UNSAFE_KEYS = [
    "",
    "/abs.jpg",
    "//abs.jpg",
    "a//b.jpg",
    "a/",
    ".",
    "..",
    "./a.jpg",
    "a/./b",
    "a/.",
    "../etc/passwd",
    "a/../../b.jpg",
    "a/..",
    "a\\b.jpg",
    "..\\escape.jpg",
    "\\abs.jpg",
    "a\x00b.jpg",
    "\x00",
]
IMAGE_LISTS = [
    ("a.jpg\nsub/b.jpg\n", ["a.jpg", "sub/b.jpg"]),
    ("a.jpg\r\nb.jpg\r\n", ["a.jpg", "b.jpg"]),
    ("a.jpg\n\n  b.jpg  \r\n\n", ["a.jpg", "b.jpg"]),
    ("no-newline-at-the-end.jpg", ["no-newline-at-the-end.jpg"]),
    ("", []),
    ("\n \n\t\r\n", []),
    ("\twith space.jpg \n", ["with space.jpg"]),
    (
        "line\u2028separator.jpg\nparagraph\u2029separator.jpg\n",
        ["line\u2028separator.jpg", "paragraph\u2029separator.jpg"],
    ),
    (
        "group\x1cseparator.jpg\nfile\x1dsep.jpg\nrecord\x1esep.jpg\n",
        ["group\x1cseparator.jpg", "file\x1dsep.jpg", "record\x1esep.jpg"],
    ),
    (
        "next\x85line.jpg\nvertical\x0btab.jpg\nform\x0cfeed.jpg\n",
        ["next\x85line.jpg", "vertical\x0btab.jpg", "form\x0cfeed.jpg"],
    ),
    ("a.jpg\rb.jpg\n", ["a.jpg\rb.jpg"]),  # a lone carriage return ends no line
    ("\u3000ideographic-space.jpg\n", ["\u3000ideographic-space.jpg"]),  # only ASCII blanks are trimmed
]
REGIONS = [
    ("AWS_EU_WEST_1", "eu-west-1"),
    ("AWS_US_EAST_2", "us-east-2"),
    ("AWS_AP_SOUTHEAST_1", "ap-southeast-1"),
    ("AWS_US_GOV_WEST_1", "us-gov-west-1"),
    ("GCP_US_CENTRAL_1", "us-east-1"),
    ("AZURE_EAST_US", "us-east-1"),
    ("AWS_", "us-east-1"),
    ("", "us-east-1"),
    (None, "us-east-1"),
]


def refused(check, key: str) -> bool:
    """Whether ``check`` refuses ``key``; an exception of another kind is a failure of its own."""
    try:
        check(key)
    except (ValueError, hw.ItemError, S3Denied):
        return True
    return False


def gate_check(key: str) -> None:
    """The S3 gate sees the whole key: the key under each kind of storage prefix must get the same answer."""
    for prefix in (project_shared_prefix("p1"), task_prefix("p1", "t1")):
        _check_key(prefix + key)


KEY_RULES = {
    "htc_helpers._safe_key": htc._safe_key,
    "htc_worker.safe_key": hw.safe_key,
    "htc_emulator.storage.safe_relative_key": safe_relative_key,
    "htc_emulator.s3_gate._check_key": gate_check,
}


@pytest.mark.parametrize("copy", KEY_RULES)
@pytest.mark.parametrize("key", SAFE_KEYS)
def test_every_copy_accepts_the_safe_keys(copy, key):
    assert not refused(KEY_RULES[copy], key)


@pytest.mark.parametrize("copy", KEY_RULES)
@pytest.mark.parametrize("key", UNSAFE_KEYS)
def test_every_copy_refuses_the_unsafe_keys(copy, key):
    assert refused(KEY_RULES[copy], key)


@pytest.mark.parametrize("key", UNSAFE_KEYS)
def test_each_copy_refuses_with_its_own_error(key):
    """The error each caller expects: the client's ValueError, the worker layer's ItemError, a 400 and a 403."""
    with pytest.raises(ValueError, match="refusing object key"):
        htc._safe_key(key)
    with pytest.raises(hw.ItemError, match="unsafe object key"):
        hw.safe_key(key)
    with pytest.raises(InvalidObjectKey, match="object path must"):
        safe_relative_key(key)
    with pytest.raises(S3Denied) as denied:
        gate_check(key)
    assert (denied.value.status, denied.value.code) == (403, "AccessDenied")


def test_accepted_keys_come_back_unchanged():
    for key in SAFE_KEYS:
        assert htc._safe_key(key) == hw.safe_key(key) == safe_relative_key(key) == key


@pytest.mark.parametrize("parse", [htc._parse_image_list, hw.parse_item_list], ids=["htc_helpers", "htc_worker"])
@pytest.mark.parametrize("text, keys", IMAGE_LISTS)
def test_every_copy_parses_image_lists_alike(parse, text, keys):
    assert parse(text) == keys


@pytest.mark.parametrize("to_aws", [htc._aws_region, hw.aws_region], ids=["htc_helpers", "htc_worker"])
@pytest.mark.parametrize("rescale, aws", REGIONS)
def test_every_copy_names_regions_alike(to_aws, rescale, aws):
    assert to_aws(rescale) == aws
