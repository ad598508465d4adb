"""Authentication: the API key for tokens, bearer tokens on every /htc call (401), JWKS, OAuth 2.0, whoami.

What a job's token may do is in ``test_job_tokens.py``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator

import jwt
import pytest
import requests
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from htc_emulator import running
from htc_emulator.app import create_app
from htc_emulator.routes import API_PREFIX
from htc_emulator.routes.dependencies import Services
from htc_emulator.validation import MAX_TOKEN_FORM_BYTES
from tests.support.partial_bodies import answer_before_the_body_ends


def test_api_key_exchange_needs_the_token_scheme_and_the_right_key(api, emulator):
    url = emulator.root_url + "/auth/token"
    for headers in (
        {},
        {"Authorization": "Token wrong-key"},
        {"Authorization": f"Bearer {emulator.api_key}"},
        {"Authorization": "Token "},
    ):
        response = api.get(url, auth=None, headers=headers, request_valid=None)
        assert response.status_code == 401 and response.json()["error"] == "invalid_client"
    assert api.get(url, auth=None, headers={"Authorization": f"Token {emulator.api_key}"}).status_code == 200


def test_token_exchange_at_root_and_api_paths(api, emulator):
    for url in (emulator.root_url + "/auth/token", emulator.api_url + "/auth/token"):
        body = api.ok("GET", url, auth=None, headers={"Authorization": f"Token {emulator.api_key}"})
        assert body["expiresIn"] == 21600
        claims = jwt.decode(body["tokenValue"], options={"verify_signature": False})
        assert claims["exp"] - claims["iat"] == 21600
        assert "groups" in claims


def test_whoami_with_the_api_key(api, emulator):
    me = api.ok("GET", "/auth/whoami", auth=None, headers={"Authorization": f"Token {emulator.api_key}"})
    assert me["user"]["workspace"]["id"] == "emulator-workspace"
    assert api.get("/auth/whoami", auth=None, request_valid=None).status_code == 401


def test_token_whoami_returns_the_payload(api, emulator):
    payload = api.ok("GET", "/auth/token/whoami")
    assert payload == jwt.decode(api.token, options={"verify_signature": False})
    job_token = emulator.scheduler.tokens.job_token(project_id="p", task_id="t", job_id="j:0", lifetime=60)
    assert api.ok("GET", "/auth/token/whoami", auth=job_token)["jobId"] == "j:0"
    for token in ("garbage", None):
        refused = api.get("/auth/token/whoami", auth=token, request_valid=None)
        assert refused.status_code == 401 and refused.json()["error"] == "invalid_token"


def test_oauth2_client_credentials(api, emulator):
    url = emulator.api_url + "/oauth2/token"
    for extra in ({"auth": ("htc-client", emulator.api_key)}, {"data_extra": {"client_secret": emulator.api_key}}):
        form = {"grant_type": "client_credentials", **extra.get("data_extra", {})}
        response = requests.post(url, data=form, auth=extra.get("auth"), timeout=30)
        body = response.json()
        assert response.status_code == 200 and body["token_type"] == "Bearer" and body["expires_in"] == 21600
        assert api.ok("GET", "/htc/regions", auth=body["access_token"])
    refusals = [
        ({"grant_type": "client_credentials"}, ("c", "wrong"), "invalid_client"),
        ({"grant_type": "password"}, ("c", emulator.api_key), "unsupported_grant_type"),
        ({}, ("c", emulator.api_key), "invalid_request"),
    ]
    for form, auth, error in refusals:
        response = requests.post(url, data=form, auth=auth, timeout=30)
        assert response.status_code == 400 and response.json()["error"] == error


def test_a_token_request_without_credentials_is_refused_before_its_body_is_read(emulator):
    """Issue 19: 200 MB posted to /oauth2/token with no credentials was read whole before the 400 (the emulator
    grew by 400-640 MB). A form there is a grant type and a client secret: past 64 KiB it is refused at once."""
    url = emulator.api_url + "/oauth2/token"
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    for attempt in ({"declared": 200 << 20}, {"chunk": b"x" * (MAX_TOKEN_FORM_BYTES + 1)}):
        status, body = answer_before_the_body_ends(url, form, **attempt)
        assert status == 413 and body["errorType"] == "PAYLOAD_TOO_LARGE", (attempt.keys(), body)
        assert str(MAX_TOKEN_FORM_BYTES) in body["message"]


# --- bearer tokens ---------------------------------------------------------------


def forged(claims: dict, key: bytes = b"x" * 32, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


def test_htc_calls_need_a_valid_bearer_token(api, emulator):
    now = int(time.time())
    other_signer = forged({"iss": "htc-emulator", "sub": "emulator-user", "iat": now, "exp": now + 600})
    unsigned = forged(
        {"iss": "htc-emulator", "sub": "emulator-user", "iat": now, "exp": now + 600}, key=None, algorithm="none"
    )
    for token in (None, "garbage", emulator.api_key, other_signer, unsigned):
        response = api.get("/htc/regions", auth=token, request_valid=None)
        assert response.status_code == 401, token
        assert response.headers["www-authenticate"] == "Bearer"
    response = api.get(
        "/htc/regions", auth=None, headers={"Authorization": f"Token {emulator.api_key}"}, request_valid=None
    )
    assert response.status_code == 401


def test_tokens_verify_with_a_jwks_client(api, emulator):
    """RS256 tokens whose key is published at /.well-known/jwks.json, as a JWKS client reads it."""
    for base in (emulator.root_url, emulator.api_url):
        keys = api.ok("GET", f"{base}/.well-known/jwks.json", auth=None)["keys"]
        assert [k["kty"] for k in keys] == ["RSA"] and "d" not in keys[0]
    client = jwt.PyJWKClient(emulator.root_url + "/.well-known/jwks.json")
    key = client.get_signing_key_from_jwt(api.token)
    claims = jwt.decode(api.token, key.key, algorithms=["RS256"], issuer="htc-emulator")
    assert claims["sub"] == "emulator-user" and claims["tokenType"] == "USER"


def hs256_by_hand(claims: dict, secret: bytes) -> str:
    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = json.dumps({"alg": "HS256", "typ": "JWT"}).encode()
    signing_input = f"{part(header)}.{part(json.dumps(claims).encode())}"
    return f"{signing_input}.{part(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"


def test_a_token_signed_with_another_key_or_the_public_key_is_refused(api, emulator):
    now = int(time.time())
    claims = {"iss": "htc-emulator", "sub": "emulator-user", "iat": now, "exp": now + 600}
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = jwt.PyJWKClient(emulator.root_url + "/.well-known/jwks.json").get_signing_keys()[0].key
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    forged_hs256 = hs256_by_hand(claims, pem)  # PyJWT itself refuses to sign with a PEM as HMAC secret
    for token in (jwt.encode(claims, other_key, algorithm="RS256"), forged_hs256):
        assert api.get("/htc/regions", auth=token, request_valid=None).status_code == 401


def test_authentication_comes_before_input_validation(api, emulator):
    project_id = api.new_project()
    task_id = api.new_task(project_id)
    response = api.post(
        f"/htc/projects/{project_id}/tasks/{task_id}/jobs/batch",
        auth="nope",
        data=b"{not json",
        headers={"Content-Type": "application/json"},
        request_valid=None,
    )
    assert response.status_code == 401


@pytest.mark.slow
def test_expired_tokens_are_refused(client_for):
    with running(token_lifetime=2) as emu:
        client = client_for(emu)
        # A token's times are whole seconds: one fetched late in a second would have most of a second less to
        # live, so it is fetched early in one (and lives 1.9 s or more, far longer than the call that uses it).
        while time.time() % 1 >= 0.1:
            time.sleep(0.01)
        body = client.ok(
            "GET", emu.root_url + "/auth/token", auth=None, headers={"Authorization": f"Token {emu.api_key}"}
        )
        assert body["expiresIn"] == 2
        token = body["tokenValue"]
        assert client.get("/htc/storage", auth=token).status_code == 200
        expires = jwt.decode(token, options={"verify_signature": False})["exp"]
        time.sleep(max(0.0, expires + 0.1 - time.time()))
        expired = client.get("/htc/storage", auth=token, request_valid=None)
        assert expired.status_code == 401 and "expired" in expired.json()["errorDescription"]


@contextlib.contextmanager
def served(app) -> Iterator[str]:
    """``app`` alone on a loopback port, behind no middleware; its root URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the app did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_an_app_without_the_bearer_middleware_still_checks_the_caller(api, emulator):
    """The routes take their caller from a dependency that authenticates when no middleware did:
    storage credentials for the user, 401 without a valid token, never a 500."""
    project_id = api.new_project()
    task_id = api.new_task(project_id)
    services = Services(
        backend=emulator.backend,
        tokens=emulator.scheduler.tokens,
        storage=emulator.storage,
        images=emulator.scheduler.images,
    )
    with served(create_app(services)) as root:
        url = f"{root}{API_PREFIX}/htc/projects/{project_id}/storage/token"
        granted = requests.get(url, headers={"Authorization": f"Bearer {api.token}"}, timeout=30)
        assert granted.status_code == 200, granted.text
        assert granted.json()["credentials"]["AWS_SESSION_TOKEN"]
        for headers in ({}, {"Authorization": "Bearer garbage"}):
            refused = requests.get(url, headers=headers, timeout=30)
            assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer", refused.text
        never_ran = emulator.scheduler.tokens.job_token(
            project_id=project_id, task_id=task_id, job_id="made-up:0", lifetime=600
        )
        refused = requests.get(url, headers={"Authorization": f"Bearer {never_ran}"}, timeout=30)
        assert refused.status_code == 401 and "never ran" in refused.json()["errorDescription"]
        unlisted = requests.get(f"{root}{API_PREFIX}/htc/projects", timeout=30)
        assert unlisted.status_code == 401
