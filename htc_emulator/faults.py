"""Fault injection, so that client retries can be tested on purpose.

Two targets:

* ``"api"``: the HTTP API. Kinds ``"429"`` (with ``Retry-After``),
  ``"500"``, ``"503"`` (with ``Retry-After``) and ``"slow"`` (the request
  waits ``slow_seconds`` and then succeeds): a request faulted so never
  reaches a handler, so it changes nothing. And ``"lost"``: the request is
  carried out (a submit is committed), but its answer is lost on the way
  back: none comes until the client gives up and closes the connection (its
  read timeout), or, after ``lost_answer_seconds``, a 504 comes instead, as
  from a load balancer whose wait for the server ran out.
* ``"storage"``: S3 requests to the moto server made with client
  credentials. Kinds ``"500"`` (``InternalError``), ``"503"``
  (``SlowDown``) and ``"slow"``.

``"ok"`` in a script lets one request through untouched.

Python::

    emu.faults.set_rate(0.2, kinds=["429", "503"])          # 20 % of API calls
    emu.faults.script(["429", "500", "ok", "slow"])          # the next 4 calls, in order
    emu.faults.script(["lost"], path=r"/jobs/batch$")        # the next submit lands, its answer does not
    emu.faults.script(["503"], target="storage")             # the next S3 request
    emu.faults.set_rate(0.5, kinds=["500"], path=r"/jobs$")  # only paths matching a regex
    emu.faults.clear()
    emu.faults.injected                                      # Counter of (target, kind)

A script runs before the rate: while it has entries, every request its
``path`` matches takes the next one. The rate and the script of a target
each keep their own ``path``.
"""

from __future__ import annotations

import asyncio
import collections
import json
import random
import re
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

TARGETS = ("api", "storage")
KINDS = {"api": {"429", "500", "503", "slow", "lost", "ok"}, "storage": {"500", "503", "slow", "ok"}}

_API_ERRORS = {
    "429": ("TOO_MANY_REQUESTS", "Rate limit exceeded (injected fault)"),
    "500": ("INTERNAL_SERVER_ERROR", "Internal server error (injected fault)"),
    "503": ("SERVICE_UNAVAILABLE", "Service unavailable (injected fault)"),
}
_S3_ERRORS = {
    "500": ("InternalError", "We encountered an internal error. Please try again."),
    "503": ("SlowDown", "Please reduce your request rate."),
}


@dataclass
class _Rule:
    """A rate or a script, each with its own path filter, so that scripting one never re-scopes the other."""

    kinds: collections.deque | tuple[str, ...]
    rate: float = 0.0
    path: re.Pattern | None = None

    def matches(self, path: str) -> bool:
        return self.path is None or self.path.search(path) is not None


class FaultInjector:
    """Decides, per request, whether to inject a fault and which."""

    def __init__(
        self,
        retry_after: int = 1,
        slow_seconds: float = 1.0,
        seed: int | None = None,
        lost_answer_seconds: float = 60.0,
    ) -> None:
        self.retry_after = retry_after
        self.slow_seconds = slow_seconds
        # An AWS load balancer's default idle timeout: what a client that never gives up gets instead.
        self.lost_answer_seconds = lost_answer_seconds
        self.injected: collections.Counter = collections.Counter()
        self._random = random.Random(seed)
        self._rates: dict[str, _Rule | None] = dict.fromkeys(TARGETS)
        self._scripts: dict[str, _Rule | None] = dict.fromkeys(TARGETS)
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: dict) -> FaultInjector:
        """Build from ``{"rate", "kinds", "script", "target", "path", "retry_after", "slow_seconds", "seed",
        "lost_answer_seconds"}``."""
        config = dict(config)
        injector = cls(
            retry_after=config.pop("retry_after", 1),
            slow_seconds=config.pop("slow_seconds", 1.0),
            seed=config.pop("seed", None),
            lost_answer_seconds=config.pop("lost_answer_seconds", 60.0),
        )
        target = config.pop("target", "api")
        path = config.pop("path", None)
        if "rate" in config:
            injector.set_rate(config.pop("rate"), config.pop("kinds", ("503",)), target=target, path=path)
        if "script" in config:
            injector.script(config.pop("script"), target=target, path=path)
        if config:
            raise ValueError(f"unknown fault settings: {sorted(config)}")
        return injector

    @staticmethod
    def _check(kinds: Iterable[str], target: str) -> tuple[str, ...]:
        if target not in TARGETS:
            raise ValueError(f"fault target must be one of {TARGETS}, not {target!r}")
        kinds = tuple(str(k) for k in kinds)
        unknown = set(kinds) - KINDS[target]
        if unknown:
            raise ValueError(f"unknown {target} fault kinds {sorted(unknown)}; use {sorted(KINDS[target])}")
        return kinds

    def set_rate(
        self, rate: float, kinds: Iterable[str] = ("503",), *, target: str = "api", path: str | None = None
    ) -> None:
        """Inject one of ``kinds`` (chosen at random) into a fraction ``rate`` of requests."""
        kinds = self._check(kinds, target)
        if not 0.0 <= rate <= 1.0 or (rate > 0 and not kinds):
            raise ValueError("rate must be within [0, 1] and needs at least one kind")
        with self._lock:
            self._rates[target] = _Rule(kinds, float(rate), re.compile(path) if path else None)

    def script(self, kinds: Iterable[str], *, target: str = "api", path: str | None = None) -> None:
        """Inject exactly this sequence into the next matching requests."""
        kinds = self._check(kinds, target)
        with self._lock:
            self._scripts[target] = _Rule(collections.deque(kinds), path=re.compile(path) if path else None)

    def clear(self, target: str | None = None) -> None:
        with self._lock:
            for name in [target] if target else TARGETS:
                self._rates[name] = self._scripts[name] = None

    def pick(self, target: str, path: str) -> str | None:
        """The fault for this request, or None."""
        with self._lock:
            script, rate = self._scripts[target], self._rates[target]
            if script is not None and script.kinds and script.matches(path):
                kind = script.kinds.popleft()
            elif rate is not None and rate.rate and rate.matches(path) and self._random.random() < rate.rate:
                kind = self._random.choice(rate.kinds)
            else:
                return None
            if kind == "ok":
                return None
            self.injected[(target, kind)] += 1
            return kind

    def asgi(self, app):
        """Wrap an ASGI app with the ``api`` faults."""
        injector = self

        async def middleware(scope, receive, send):
            if scope["type"] != "http":
                return await app(scope, receive, send)
            kind = injector.pick("api", scope["path"])
            if kind == "lost":
                return await injector._lose_answer(app, scope, receive, send)
            if kind == "slow":
                await asyncio.sleep(injector.slow_seconds)
            elif kind is not None:
                error_type, description = _API_ERRORS[kind]
                body = json.dumps({"errorType": error_type, "errorDescription": description, "message": None}).encode()
                headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                if kind in ("429", "503"):
                    headers.append((b"retry-after", str(injector.retry_after).encode()))
                await send({"type": "http.response.start", "status": int(kind), "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
            return await app(scope, receive, send)

        return middleware

    async def _lose_answer(self, app, scope, receive, send) -> None:
        """Carry the request out, hold its answer back until the client hangs up; 504 if it never does."""

        async def dropped(message) -> None:
            return None

        await app(scope, receive, dropped)
        try:
            # Once the handler has read the body, the next message is the client's disconnect.
            while (await asyncio.wait_for(receive(), self.lost_answer_seconds))["type"] != "http.disconnect":
                pass
        except TimeoutError:
            body = json.dumps(
                {
                    "errorType": "GATEWAY_TIMEOUT",
                    "errorDescription": "The server's answer did not arrive in time (injected fault)",
                    "message": None,
                }
            ).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 504, "headers": headers})
            await send({"type": "http.response.body", "body": body})

    def wsgi(self, app, spare_access_key: str):
        """Wrap moto's WSGI app with the ``storage`` faults.

        Requests signed with ``spare_access_key`` (the emulator's own) pass.
        """
        injector = self

        def middleware(environ, start_response):
            if f"Credential={spare_access_key}/" in environ.get("HTTP_AUTHORIZATION", ""):
                return app(environ, start_response)
            kind = injector.pick("storage", environ.get("PATH_INFO", ""))
            if kind == "slow":
                time.sleep(injector.slow_seconds)
            elif kind is not None:
                code, message = _S3_ERRORS[kind]
                body = (
                    '<?xml version="1.0" encoding="UTF-8"?>'
                    f"<Error><Code>{code}</Code><Message>{message}</Message>"
                    f"<RequestId>{uuid.uuid4().hex}</RequestId></Error>"
                ).encode()
                status = "500 Internal Server Error" if kind == "500" else "503 Slow Down"
                start_response(status, [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
                return [body]
            return app(environ, start_response)

        return middleware
