"""The API server keeps a client's connection open between its requests, as a pooled client expects."""

from __future__ import annotations

import http.client
import time
from urllib.parse import urlsplit

import pytest


@pytest.mark.slow
def test_a_connection_idle_between_polls_still_answers(api, emulator):
    """A client reuses a pooled connection without knowing whether the server is about to close it: a POST
    sent as the server closes is lost (clients do not resend a POST). uvicorn closes an idle connection after
    5 s by default, so a test that waited 5 s between two calls failed now and then (seen in CI)."""
    parts = urlsplit(emulator.api_url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    headers = {"Authorization": f"Bearer {api.token}"}
    try:
        for pause in (0, 6):
            time.sleep(pause)
            connection.request("GET", f"{parts.path}/htc/projects", headers=headers)
            response = connection.getresponse()
            response.read()
            assert response.status == 200
    finally:
        connection.close()
