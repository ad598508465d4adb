"""The exchange recorder keeps every exchange as sent and answered: crashes as their 500, paths as sent."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

import pytest
import requests

from htc_emulator import ExchangeRecorder, running


def test_a_crashing_route_is_recorded_as_its_500(client_for, monkeypatch):
    """Starlette sends its 500 and then re-raises; the recorder must keep that exchange all the same."""
    with running(recorder=ExchangeRecorder()) as emu:
        client = client_for(emu)

        def crash():
            raise RuntimeError("backend bug")

        monkeypatch.setattr(emu.backend, "list_projects", crash)
        response = client.get("/htc/projects", request_valid=None)
        assert response.status_code == 500
        # The server thread records the exchange after the client has its answer.
        deadline = time.monotonic() + 5
        while not (crashed := [e for e in emu.recorder.exchanges if e.url.endswith("/htc/projects")]):
            assert time.monotonic() < deadline, "the crashed exchange was never recorded"
            time.sleep(0.01)
        assert [(e.method, e.status) for e in crashed] == [("GET", 500)]
        assert b"RuntimeError" in crashed[0].response_body


def test_an_app_that_dies_before_answering_is_recorded_as_500():
    async def dies(scope, receive, send):
        raise RuntimeError("no response at all")

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message):
        raise AssertionError("nothing should be sent")

    recorder = ExchangeRecorder()
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/htc/projects",
        "query_string": b"",
        "headers": [(b"host", b"h")],
    }
    with pytest.raises(RuntimeError):
        asyncio.run(recorder.asgi(dies)(scope, receive, send))
    [exchange] = recorder.exchanges
    assert (exchange.method, exchange.url, exchange.status) == ("POST", "http://h/htc/projects", 500)


def test_a_recorded_url_keeps_path_parameters_as_sent():
    """An id with ``#`` or ``?`` (percent-encoded on the wire) must not cut the recorded path short."""
    with running(recorder=ExchangeRecorder()) as emu:
        sent = f"{emu.api_url}/htc/projects/p%23x/tasks/t%3Fy/jobs/cancel"
        requests.post(sent, params={"group": "g"}, timeout=30)
        deadline = time.monotonic() + 5
        while not (recorded := [e for e in emu.recorder.exchanges if "/tasks/" in e.url]):
            assert time.monotonic() < deadline, "the exchange was never recorded"
            time.sleep(0.01)
    assert urlsplit(recorded[0].url).path == urlsplit(sent).path
    assert urlsplit(recorded[0].url).query == "group=g"
