"""The platform's answer shapes and the operations beyond the tutorial's path."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


@pytest.fixture(scope="module")
def place(api):
    project_id = api.new_project()
    return project_id, api.new_task(project_id)


def job_count(api, project_id, task_id) -> int:
    return sum(api.ok("GET", f"/htc/projects/{project_id}/tasks/{task_id}/summary-statistics")["jobStatuses"].values())


@pytest.mark.parametrize("name", ["AWS_REGION", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"])
def test_environment_names_beginning_with_aws_are_reserved(api, place, name):
    project_id, task_id = place
    body = [{"htcJobDefinition": {"imageName": "noop:v1", "envs": [{"name": name, "value": "x"}]}}]
    response = api.post(f"/htc/projects/{project_id}/tasks/{task_id}/jobs/batch", json=body, request_valid=None)
    assert response.status_code == 400, response.text
    assert name in response.json()["message"]
    assert job_count(api, project_id, task_id) == 0


def test_a_batch_without_group_reads_back_with_group_null(api, place):
    """A third-party client reads a batch's and a job's `group` unconditionally."""
    project_id, task_id = place
    body = [{"htcJobDefinition": {"imageName": "nothere:v1", "commands": ["true"]}}]
    [echo] = api.ok("POST", f"/htc/projects/{project_id}/tasks/{task_id}/jobs/batch", json=body)
    assert echo["group"] is None and echo["jobName"] is None and echo["batchSize"] == 1
    job = api.ok("GET", f"/htc/projects/{project_id}/tasks/{task_id}/jobs/{echo['parentJobId']}:0")
    assert "group" in job and job["group"] is None
    assert {"failureCode", "providerJobId", "jobExecutionEnvironment", "startedAt"} <= set(job)


def test_shape_check_names_a_left_out_property(api, emulator):
    """The check every test client runs can fail: a task without archivedAt is refused."""
    body = b'{"taskId": "t", "projectId": "p", "taskName": "a", "taskDescription": "b"}'
    response = requests.Response()
    response.status_code = 200
    response.headers["Content-Type"] = "application/json"
    response._content = body
    response.request = requests.Request("GET", emulator.api_url + "/htc/projects/p/tasks/t",
                                        headers={"Authorization": "Bearer x"}).prepare()
    assert "body.archivedAt is missing" in api.validator.shape_errors(response)


# --- tokens: JWKS, payload, OAuth 2.0 ---------------------------------------------

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
    refusals = [({"grant_type": "client_credentials"}, ("c", "wrong"), "invalid_client"),
                ({"grant_type": "password"}, ("c", emulator.api_key), "unsupported_grant_type"),
                ({}, ("c", emulator.api_key), "invalid_request")]
    for form, auth, error in refusals:
        response = requests.post(url, data=form, auth=auth, timeout=30)
        assert response.status_code == 400 and response.json()["error"] == error
