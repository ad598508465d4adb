"""Request bodies over their operation's limit are refused (413) before more of them is read.

Every request, with credentials or without: a declared ``Content-Length`` over
the limit is answered at once, and a body sent without one (chunked) is counted
as it is read and refused as soon as it goes past. The limits are in
:mod:`htc_emulator.validation`; two operations take other than the default.
FastAPI's own ``max_body_size`` does the same, but answers a declared length in
Starlette's plain text; here every refusal is the emulator's ``HTCRequestError``.
"""

from __future__ import annotations

import re

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import BodyTooLarge, payload_too_large
from ..validation import MAX_BODY_BYTES, MAX_JOB_BATCH_BODY_BYTES, MAX_TOKEN_FORM_BYTES
from . import API_PREFIX

# (path, limit) where an operation takes other than MAX_BODY_BYTES.
OPERATION_LIMITS = (
    (re.compile(rf"(?:{API_PREFIX})?/oauth2/token/?"), MAX_TOKEN_FORM_BYTES),
    (re.compile(rf"{API_PREFIX}/htc/projects/[^/]+/tasks/[^/]+/jobs/batch/?"), MAX_JOB_BATCH_BODY_BYTES),
)


def body_limit(path: str) -> int:
    """The most a request to ``path`` may send, in bytes."""
    return next((limit for pattern, limit in OPERATION_LIMITS if pattern.fullmatch(path)), MAX_BODY_BYTES)


class BodyLimitMiddleware:
    """ASGI middleware: the limits above, on every HTTP request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = body_limit(scope["path"])
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > limit:
            return await payload_too_large(limit)(scope, receive, send)
        received = 0

        async def receive_within_limit() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge(limit)  # answered by the error handlers, like any refusal
            return message

        await self.app(scope, receive_within_limit, send)
