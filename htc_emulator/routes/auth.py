"""Authentication: the API key for a bearer token, who the key's owner is, the keys that verify tokens."""

from __future__ import annotations

import base64
import binascii
from urllib.parse import parse_qs

from fastapi import APIRouter, Request

from .. import job_rights, views
from ..auth import AuthenticationError, TokenAuthority
from ..errors import oauth2_error
from ..models import Backend
from .dependencies import BackendDep, TokensDep

router = APIRouter()


@router.get("/auth/token")
def get_token(request: Request, tokens: TokensDep, backend: BackendDep) -> dict:
    """A user token for ``Authorization: Token <API key>``; a job token for ``Refresh <the job's refresh token>``."""
    authorization = request.headers.get("authorization")
    try:
        if tokens.scheme(authorization) == "refresh":
            return _refreshed_job_token(tokens, backend, authorization)
        tokens.check_api_key(authorization)
    except AuthenticationError as exc:
        return oauth2_error(401, "invalid_client", str(exc))
    token, expires_in = tokens.user_token()
    return {"tokenValue": token, "expiresIn": expires_in}


def _refreshed_job_token(tokens: TokenAuthority, backend: Backend, authorization: str) -> dict:
    """A fresh token for the job a refresh token names, while that job lives (401 once it is over)."""
    principal = tokens.refresh_principal(authorization)
    job_rights.require_live_job(principal, backend)
    _, job = backend.token_subjects(principal.task_id, principal.job_id)
    token = tokens.job_token(
        project_id=job.project_id,
        task_id=job.task_id,
        job_id=job.job_id,
        lifetime=tokens.token_lifetime,
        extra_claims=job.claims,
    )
    return {"tokenValue": token, "expiresIn": tokens.token_lifetime}


@router.get("/auth/whoami")
def who_am_i(request: Request, tokens: TokensDep) -> dict:
    try:
        tokens.check_api_key(request.headers.get("authorization"))
    except AuthenticationError as exc:
        return oauth2_error(401, "invalid_client", str(exc))
    return views.whoami_view()


@router.get("/auth/token/whoami")
def token_payload(request: Request, tokens: TokensDep) -> dict:
    """The bearer token's verified payload (a user's or a job's)."""
    try:
        return tokens.payload(request.headers.get("authorization"))
    except AuthenticationError as exc:
        return oauth2_error(401, "invalid_token", str(exc), {"WWW-Authenticate": "Bearer"})


@router.get("/.well-known/jwks.json")
def json_web_key_set(tokens: TokensDep) -> dict:
    return tokens.jwks()


@router.post("/oauth2/token")
async def oauth2_token(request: Request, tokens: TokensDep) -> dict:
    """OAuth 2.0 client-credentials grant (RFC 6749 4.4): the API key is the client secret.

    The client authenticates with HTTP Basic (any client id, the API key as
    password), ``Authorization: Token <key>``, or a ``client_secret`` form field.
    """
    form = {k: v[-1] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()}
    grant = form.get("grant_type")
    if grant is None:
        return oauth2_error(400, "invalid_request", "grant_type is required (client_credentials)")
    if grant != "client_credentials":
        return oauth2_error(400, "unsupported_grant_type", f"grant_type {grant} is not supported")
    try:
        tokens.check_api_key(_client_secret(request.headers.get("authorization"), form))
    except AuthenticationError as exc:
        return oauth2_error(400, "invalid_client", str(exc))
    token, expires_in = tokens.user_token()
    return {"access_token": token, "token_type": "Bearer", "expires_in": expires_in}


def _client_secret(authorization: str | None, form: dict) -> str | None:
    """The client's secret as an ``Authorization: Token`` value, from whichever place the client used."""
    scheme, _, value = (authorization or "").partition(" ")
    if scheme.lower() == "basic":
        try:
            return "Token " + base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return None
    if "client_secret" in form:
        return "Token " + form["client_secret"]
    return authorization
