"""API keys and bearer tokens: the emulator signs its own JWTs.

Tokens are signed with an RSA key made at start-up (RS256); its public half
is published as a JSON Web Key Set (``/.well-known/jwks.json``), so a client
can verify a token with any JWKS client, as with the platform's.

A user token (from ``GET /auth/token``) reaches everything the API key's
owner can. A job token, injected into each running job as
``RESCALE_HTC_BEARER_TOKEN``, names its project, task and job; what it may
do, and for how long, is decided in :mod:`htc_emulator.job_rights`. Its
user-defined claims are named ``userDefined_<name>``, as on the platform. A
job also gets a refresh token (``RESCALE_HTC_REFRESH_TOKEN``), which
``GET /auth/token`` exchanges (``Authorization: Refresh <token>``) for a fresh
job token while the job lives; it is not a bearer token itself. Sources:
:mod:`htc_emulator.platform_profile`.
"""

from __future__ import annotations

import base64
import hmac
import json
import secrets
import time
import uuid
from dataclasses import dataclass

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from .platform_profile import USER_CLAIM_PREFIX

ISSUER = "htc-emulator"
ALGORITHM = "RS256"
USER_ID = "emulator-user"
USER_EMAIL = "user@htc-emulator.invalid"
WORKSPACE_ID = "emulator-workspace"
WORKSPACE_NAME = "HTC emulator workspace"
ORGANIZATION_CODE = "emulator-org"

# Claims the emulator sets itself; a job's user-defined ``claims`` may not
# replace them, or a job could widen its own scope.
RESERVED_CLAIMS = frozenset(
    {
        "iss",
        "sub",
        "aud",
        "exp",
        "iat",
        "nbf",
        "jti",
        "groups",
        "tokenType",
        "workspaceId",
        "projectId",
        "taskId",
        "jobId",
    }
)


class AuthenticationError(Exception):
    """The credentials are missing, malformed, wrong or expired (HTTP 401)."""


class PermissionDenied(Exception):
    """Valid credentials, but not for this resource (HTTP 403)."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: the user, or one job acting with its job token."""

    kind: str  # "user" or "job"
    project_id: str | None = None
    task_id: str | None = None
    job_id: str | None = None
    expires_at: int | None = None  # the token's exp claim (seconds since the epoch)

    @property
    def is_job(self) -> bool:
        return self.kind == "job"


class TokenAuthority:
    """Checks the API key and issues and verifies RS256 JWTs."""

    def __init__(self, api_key: str, token_lifetime: int = 21600) -> None:
        if token_lifetime <= 0:
            raise ValueError("token_lifetime must be positive")
        self._api_key = api_key
        self.token_lifetime = int(token_lifetime)
        self._private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._public_key = self._private_key.public_key()
        self.key_id = str(uuid.uuid4())
        self._refresh_key = secrets.token_bytes(32)

    def jwks(self) -> dict:
        """The JSON Web Key Set that verifies every token this authority signs."""
        key = RSAAlgorithm.to_jwk(self._public_key, as_dict=True)
        return {"keys": [{**key, "kid": self.key_id, "alg": ALGORITHM, "use": "sig"}]}

    def _sign(self, claims: dict) -> str:
        return jwt.encode(claims, self._private_key, algorithm=ALGORITHM, headers={"kid": self.key_id})

    @staticmethod
    def scheme(authorization: str | None) -> str:
        """The scheme of an ``Authorization`` header, lower-case (``token``, ``refresh``, ``bearer``)."""
        return (authorization or "").partition(" ")[0].lower()

    def check_api_key(self, authorization: str | None) -> None:
        """Accept only ``Authorization: Token <api key>``."""
        scheme, _, value = (authorization or "").partition(" ")
        if scheme.lower() != "token" or not value.strip():
            raise AuthenticationError("expected header 'Authorization: Token <API key>'")
        if not hmac.compare_digest(value.strip().encode(), self._api_key.encode()):
            raise AuthenticationError("invalid API key")

    def user_token(self) -> tuple[str, int]:
        """A fresh user JWT and its lifetime in seconds."""
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": USER_ID,
            "iat": now,
            "exp": now + self.token_lifetime,
            "jti": uuid.uuid4().hex,
            "tokenType": "USER",
            "workspaceId": WORKSPACE_ID,
            "email": USER_EMAIL,
            "groups": ["HTC_USER", "WORKSPACE_MEMBER"],
        }
        return self._sign(claims), self.token_lifetime

    def job_token(
        self,
        *,
        project_id: str,
        task_id: str,
        job_id: str,
        lifetime: int,
        extra_claims: dict[str, str] | None = None,
    ) -> str:
        """A JWT scoped to one job's project and task; ``extra_claims`` (the job's ``claims``) as ``userDefined_*``."""
        now = int(time.time())
        claims = {USER_CLAIM_PREFIX + name: value for name, value in (extra_claims or {}).items()}
        claims.update(
            {
                "iss": ISSUER,
                "sub": USER_ID,
                "iat": now,
                "exp": now + max(1, int(lifetime)),
                "jti": uuid.uuid4().hex,
                "tokenType": "JOB",
                "workspaceId": WORKSPACE_ID,
                "projectId": project_id,
                "taskId": task_id,
                "jobId": job_id,
                "groups": ["HTC_JOB"],
            }
        )
        return self._sign(claims)

    def refresh_token(self, *, project_id: str, task_id: str, job_id: str, lifetime: int) -> str:
        """A job's refresh token: what ``Authorization: Refresh`` exchanges for a fresh job token.

        Opaque to its holder (the platform's is too), so an HMAC, not a JWT: one per job, and an
        RSA signature would double what signing costs a job's start.
        """
        body = json.dumps([project_id, task_id, job_id, int(time.time()) + max(1, int(lifetime))]).encode()
        return f"{_b64(body)}.{_b64(self._refresh_mac(body))}"

    def refresh_principal(self, authorization: str | None) -> Principal:
        """The job whose refresh token ``Authorization: Refresh <token>`` carries, while it is valid."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "refresh" or not token.strip():
            raise AuthenticationError("expected header 'Authorization: Refresh <token>'")
        body_part, _, mac_part = token.strip().partition(".")
        try:
            body, mac = _unb64(body_part), _unb64(mac_part)
            if not hmac.compare_digest(mac, self._refresh_mac(body)):
                raise ValueError("not signed here")
            project_id, task_id, job_id, expires_at = json.loads(body)
        except ValueError:
            raise AuthenticationError("invalid refresh token") from None
        if expires_at <= time.time():
            raise AuthenticationError("refresh token expired")
        return Principal(kind="job", project_id=project_id, task_id=task_id, job_id=job_id, expires_at=expires_at)

    def _refresh_mac(self, body: bytes) -> bytes:
        return hmac.digest(self._refresh_key, body, "sha256")

    def payload(self, authorization: str | None) -> dict:
        """The verified claims of ``Authorization: Bearer <jwt>``."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationError("expected header 'Authorization: Bearer <token>'")
        try:
            return jwt.decode(
                token.strip(),
                self._public_key,
                algorithms=[ALGORITHM],
                issuer=ISSUER,
                options={"require": ["exp", "iat", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthenticationError("token expired") from exc
        except jwt.InvalidTokenError as exc:
            raise AuthenticationError("invalid token") from exc

    def principal(self, authorization: str | None) -> Principal:
        """Verify ``Authorization: Bearer <jwt>`` and say who is calling."""
        claims = self.payload(authorization)
        if claims.get("tokenType") == "JOB":
            return Principal(
                kind="job",
                project_id=claims.get("projectId"),
                task_id=claims.get("taskId"),
                job_id=claims.get("jobId"),
                expires_at=claims["exp"],
            )
        return Principal(kind="user", expires_at=claims["exp"])


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    """Raises ValueError (binascii.Error) for what is not base64url."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
