"""The model's refusals and how the HTTP layer answers them.

The model raises :class:`NotFound` and :class:`InvalidRequest` (and
:mod:`htc_emulator.auth` its :class:`~htc_emulator.auth.AuthenticationError`
and :class:`~htc_emulator.auth.PermissionDenied`); :func:`install_error_handlers`
turns each into the body the spec documents for it: an ``HTCRequestError``
for bad input (400) and for reading jobs that are not there (404), an
``OAuth2ErrorResponse`` otherwise.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .auth import AuthenticationError, PermissionDenied

# Where a value sits in a request: names and list positions, as pydantic's ``loc``.
Location = tuple[str | int, ...]


class NotFound(Exception):
    """An id that names nothing (HTTP 404)."""


class BodyTooLarge(StarletteHTTPException):
    """A request body past its operation's limit (HTTP 413), raised as soon as it is read that far."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"this operation takes a body of at most {limit} bytes")
        self.limit = limit


class InvalidRequest(Exception):
    """A request the platform would refuse (HTTP 400), naming where the bad value is.

    ``location`` is a field name, or its place in the body (``(0, "htcJobDefinition")``:
    the first batch's definition), written out by :func:`field_path`.
    """

    def __init__(self, location: str | Location, message: str) -> None:
        self.location: Location = (location,) if isinstance(location, str) else tuple(location)
        self.field = field_path(self.location)
        self.message = message
        super().__init__(f"{self.field}: {message}")


def field_path(location: Location) -> str:
    """``(0, "htcJobDefinition", "envs")`` as ``[0].htcJobDefinition.envs``."""
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def request_error(status: int, error_type: str, description: str, message: str | None = None) -> JSONResponse:
    """An ``HTCRequestError`` body."""
    return JSONResponse({"errorType": error_type, "errorDescription": description, "message": message}, status)


def oauth2_error(status: int, error: str, description: str, headers: dict | None = None) -> JSONResponse:
    """An ``OAuth2ErrorResponse`` body."""
    return JSONResponse({"error": error, "errorDescription": description}, status, headers=headers)


def payload_too_large(limit: int) -> JSONResponse:
    """413 for a request body past its operation's limit (:mod:`htc_emulator.routes.body_limit`)."""
    return request_error(
        413, "PAYLOAD_TOO_LARGE", "Request body too large", f"this operation takes a body of at most {limit} bytes"
    )


def unauthenticated(exc: AuthenticationError) -> JSONResponse:
    """401 for a bearer token that is missing, malformed, expired or no longer live."""
    return oauth2_error(401, "invalid_token", str(exc), {"WWW-Authenticate": "Bearer"})


def forbidden(exc: PermissionDenied) -> JSONResponse:
    """403 for a valid token that may not do this (a job token outside its rights)."""
    return oauth2_error(403, "forbidden", str(exc))


def _uses_request_error_404(request: Request) -> bool:
    # The spec's 404 for reading jobs (list, get, events, logs) is an
    # HTCRequestError; elsewhere it is an OAuth2ErrorResponse.
    return request.method == "GET" and "/jobs" in request.url.path


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0]
        if first["type"] == "json_invalid":
            return request_error(400, "INVALID_REQUEST", "Malformed JSON body", f"body: {first['msg']}")
        names = [str(p) for p in first["loc"] if isinstance(p, str) and p not in ("body", "query", "path")]
        field = names[-1] if names else "body"
        details = "; ".join(f"{field_path(e['loc'])}: {e['msg']}" for e in errors)
        return request_error(400, "INVALID_REQUEST", f"Invalid value for {field}", details)

    @app.exception_handler(InvalidRequest)
    async def _refused(request: Request, exc: InvalidRequest) -> JSONResponse:
        return request_error(400, "INVALID_REQUEST", f"Invalid value for {exc.field}", str(exc))

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound) -> JSONResponse:
        if _uses_request_error_404(request):
            return request_error(404, "NOT_FOUND", str(exc))
        return oauth2_error(404, "NOT_FOUND", str(exc))

    @app.exception_handler(AuthenticationError)
    async def _unauthenticated(request: Request, exc: AuthenticationError) -> JSONResponse:
        return unauthenticated(exc)

    @app.exception_handler(PermissionDenied)
    async def _forbidden(request: Request, exc: PermissionDenied) -> JSONResponse:
        return forbidden(exc)

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
        return payload_too_large(exc.limit)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return oauth2_error(exc.status_code, "NOT_FOUND" if exc.status_code == 404 else "HTTP_ERROR", str(exc.detail))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        return request_error(500, "INTERNAL_ERROR", "Internal server error", type(exc).__name__)
