"""Job log pages as the platform serves them from CloudWatch: opaque tokens, and empty pages that carry ``next``.

The platform reads a job's log from CloudWatch Logs, whose forward and backward
tokens (``f/<56 digits>/s``, ``b/<56 digits>/s``) it passes on as ``pageIndex``.
CloudWatch answers some requests with no events and a token all the same (htc-cli's
``TestLogs_AwsBugEmptyPagesWithToken``: two empty pages with tokens, then the lines),
so a client must follow ``next`` until it is absent, not stop at an empty page.

Here a chain of requests for one log (each following the previous page's token) gets
its first two pages empty, then the lines ``page_size`` at a time with every third page
empty; the page that reaches the end of the lines has no token. A token names its job,
its order, its place and its step in the chain, and carries a MAC, so a token this
server did not issue for this log is refused (400 naming ``pageIndex``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence

from .errors import InvalidRequest

LEADING_EMPTY_PAGES = 2
EMPTY_PAGE_EVERY = 3
_OFFSET_DIGITS, _STEP_DIGITS, _MAC_DIGITS = 10, 6, 40
_TOKEN = re.compile(rf"([fb])/([0-9]{{{_OFFSET_DIGITS}}})([0-9]{{{_STEP_DIGITS}}})([0-9]{{{_MAC_DIGITS}}})/s")


class LogPages:
    """Issues and reads the page tokens of job logs."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or secrets.token_bytes(32)

    def _mac(self, job_id: str, direction: str, offset: int, step: int) -> str:
        digest = hmac.new(self._key, f"{job_id}|{direction}|{offset}|{step}".encode(), hashlib.sha256).digest()
        return str(int.from_bytes(digest, "big"))[:_MAC_DIGITS].zfill(_MAC_DIGITS)

    def _token(self, job_id: str, direction: str, offset: int, step: int) -> str:
        mac = self._mac(job_id, direction, offset, step)
        return f"{direction}/{offset:0{_OFFSET_DIGITS}d}{step:0{_STEP_DIGITS}d}{mac}/s"

    def _read(self, job_id: str, direction: str, token: str | None) -> tuple[int, int]:
        if not token:
            return 0, 0
        found = _TOKEN.fullmatch(token)
        if found is None or found[1] != direction:
            raise InvalidRequest("pageIndex", "not a log page token this server issued for this log and order")
        offset, step = int(found[2]), int(found[3])
        if not hmac.compare_digest(found[4], self._mac(job_id, direction, offset, step)):
            raise InvalidRequest("pageIndex", "not a log page token this server issued for this log and order")
        return offset, step

    def page(
        self, job_id: str, lines: Sequence, token: str | None, page_size: int, *, newest_first: bool
    ) -> tuple[list, str | None]:
        """The lines of the page ``token`` names (the first page without one), and the next page's token, if any."""
        direction = "b" if newest_first else "f"
        offset, step = self._read(job_id, direction, token)
        if step < LEADING_EMPTY_PAGES or step % EMPTY_PAGE_EVERY == 1:
            return [], self._token(job_id, direction, offset, step + 1)
        end = offset + page_size
        following = self._token(job_id, direction, end, step + 1) if end < len(lines) else None
        return list(lines[offset:end]), following
