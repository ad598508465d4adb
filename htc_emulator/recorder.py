"""Keep every HTTP exchange the API serves, so a test session can check them all against the spec.

The notebook's kernel and the worker's jobs are other processes, so the only
place that sees every request of a session is the server itself.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from urllib.parse import quote


@dataclass(frozen=True)
class Exchange:
    """One request and the response it got, as bytes on the wire."""

    method: str
    url: str
    request_headers: dict[str, str]
    request_body: bytes
    status: int
    response_headers: dict[str, str]
    response_body: bytes


class ExchangeRecorder:
    """An ASGI wrapper that appends an :class:`Exchange` for every HTTP request."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._exchanges: list[Exchange] = []

    @property
    def exchanges(self) -> list[Exchange]:
        with self._lock:
            return list(self._exchanges)

    def asgi(self, app):
        recorder = self

        async def middleware(scope, receive, send):
            if scope["type"] != "http":
                return await app(scope, receive, send)
            request_body, response_body, response = bytearray(), bytearray(), {}

            async def receive_and_keep():
                message = await receive()
                if message["type"] == "http.request":
                    request_body.extend(message.get("body", b""))
                return message

            async def send_and_keep(message):
                if message["type"] == "http.response.start":
                    response.update(status=message["status"], headers=_decode(message.get("headers", [])))
                elif message["type"] == "http.response.body":
                    response_body.extend(message.get("body", b""))
                await send(message)

            try:
                await app(scope, receive_and_keep, send_and_keep)
            finally:
                # Starlette sends its 500 and then re-raises the exception: a crash is recorded
                # too, as the 500 it sent, or as a bare 500 if it died before answering at all.
                headers = _decode(scope["headers"])
                query = scope["query_string"].decode("latin-1")
                # As sent: scope["path"] is percent-decoded, so an id holding "#" or "?" would cut it short.
                raw_path = scope.get("raw_path")
                path = raw_path.decode("latin-1") if raw_path else quote(scope["path"])
                url = f"http://{headers.get('host', 'localhost')}{path}" + (f"?{query}" if query else "")
                exchange = Exchange(
                    scope["method"],
                    url,
                    headers,
                    bytes(request_body),
                    response.get("status", 500),
                    response.get("headers", {}),
                    bytes(response_body),
                )
                with recorder._lock:
                    recorder._exchanges.append(exchange)

        return middleware


def _decode(headers) -> dict[str, str]:
    return {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in headers}
