"""Input rules the routes share: integers as the spec writes them, group names, request limits.

Query strings reach the routes as text. Python's ``int()`` reads any
Unicode digit (``"٣"`` is 3) and refuses long digit strings with an
error, so a query integer is matched against ASCII digits of bounded
length first. Text in bodies is checked by the schemas
(:mod:`htc_emulator.schemas`), and what the model stores by
:func:`htc_emulator.models.require_storable`.
"""

from __future__ import annotations

import re

from .errors import InvalidRequest

# The original tutorial documents at most 100 batch definitions per
# request and 1,000 jobs per batch; a task's own ceiling is
# :data:`htc_emulator.models.MAX_JOBS_PER_TASK`.
MAX_BATCHES_PER_REQUEST = 100
MAX_JOBS_PER_BATCH = 1000

# Request bodies, in bytes: past its operation's limit a body is refused (413) before more of it is
# read, so no request, authenticated or not, can make the emulator hold more than this.
MAX_BODY_BYTES = 1 << 20  # every operation but the two below
MAX_JOB_BATCH_BODY_BYTES = 8 << 20  # POST .../jobs/batch: up to 100 batch definitions
MAX_TOKEN_FORM_BYTES = 64 << 10  # POST /oauth2/token: a form with a grant type and a client secret

# An int32 in decimal ASCII digits, with an optional minus sign.
_SPEC_INTEGER = re.compile(r"-?[0-9]{1,10}")
_INT32 = range(-(2**31), 2**31)


def query_integer(name: str, raw: str, minimum: int, maximum: int) -> int:
    """A query parameter the spec types as an integer, within ``[minimum, maximum]``."""
    if not _SPEC_INTEGER.fullmatch(raw) or int(raw) not in _INT32:
        raise InvalidRequest(name, f"must be an integer written in ASCII digits, not {raw[:20]!r}")
    value = int(raw)
    if not minimum <= value <= maximum:
        raise InvalidRequest(name, f"must be between {minimum} and {maximum}")
    return value


def page_offset(raw: str | None) -> int:
    """The offset a ``pageIndex`` this server issued stands for (absent or empty: the first page)."""
    if not raw:
        return 0
    if not re.fullmatch(r"[0-9]{1,10}", raw):
        raise InvalidRequest("pageIndex", "not a page index this server issued")
    return int(raw)


def group_name(raw: str | None) -> str | None:
    """A ``group`` query parameter: absent means no group; empty is refused, never "every group"."""
    if raw is None:
        return None
    if not raw:
        raise InvalidRequest("group", "must not be empty; leave the parameter out for no group")
    return raw


def group_names(raw: list[str] | None) -> list[str] | None:
    """A repeated ``group`` query parameter, each one checked by :func:`group_name`."""
    return None if raw is None else [group_name(name) for name in raw]
