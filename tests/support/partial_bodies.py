"""Requests whose body is never finished: a server that reads a body whole before answering hangs on them."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit


def answer_before_the_body_ends(
    url: str, headers: dict[str, str], *, declared: int | None = None, chunk: bytes = b""
) -> tuple[int, dict]:
    """POST to ``url`` a body that never ends, and read the answer: (status, JSON body).

    With ``declared``, the headers promise that many bytes and none are sent; otherwise the body is
    chunked and ``chunk`` is its only chunk, without the last (empty) one that would end it.
    """
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        connection.putrequest("POST", parts.path)
        for name, value in headers.items():
            connection.putheader(name, value)
        if declared is not None:
            connection.putheader("Content-Length", str(declared))
            connection.endheaders()
        else:
            connection.putheader("Transfer-Encoding", "chunked")
            connection.endheaders()
            connection.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()
