"""The bearer check in front of every ``/htc/**`` call: who is calling, and may they.

401 when the token is missing, malformed or expired (a job token also once
its task is deleted or its job is over); 403 when a job token asks for what
its job does not need (:mod:`htc_emulator.job_rights`). The middleware runs
it before routing and body parsing, so a caller without a valid token learns
nothing about paths or input; :data:`~htc_emulator.routes.dependencies.PrincipalDep`
runs it where an app was built without the middleware.
"""

from __future__ import annotations

from .. import job_rights
from ..auth import AuthenticationError, PermissionDenied, Principal, TokenAuthority
from ..errors import forbidden, unauthenticated
from ..models import Backend
from . import API_PREFIX


def authenticate(
    tokens: TokenAuthority, backend: Backend, authorization: str | None, method: str, path: str
) -> Principal:
    """The caller of ``method path`` with this ``Authorization`` header; refused as the platform refuses."""
    principal = tokens.principal(authorization)
    if principal.is_job:
        job_rights.require_live_job(principal, backend)
        job_rights.authorize(principal, method, path.removeprefix(API_PREFIX))
    return principal


def is_guarded(path: str) -> bool:
    return path.startswith("/htc/") or path.startswith(f"{API_PREFIX}/htc/")


def auth_middleware(app, tokens: TokenAuthority, backend: Backend):
    """The ASGI app ``app`` behind the bearer check; the caller is kept for the routes (``request.state.principal``)."""

    async def middleware(scope, receive, send):
        if scope["type"] != "http" or not is_guarded(scope.get("path", "")):
            return await app(scope, receive, send)
        authorization = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        try:
            principal = authenticate(tokens, backend, authorization, scope["method"], scope["path"])
        except AuthenticationError as exc:
            return await unauthenticated(exc)(scope, receive, send)
        except PermissionDenied as exc:
            return await forbidden(exc)(scope, receive, send)
        scope.setdefault("state", {})["principal"] = principal
        return await app(scope, receive, send)

    return middleware
