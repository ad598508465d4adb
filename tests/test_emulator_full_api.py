"""The platform's answer shapes and the operations beyond the tutorial's path."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from htc_emulator import running


@pytest.mark.parametrize("name", ["AWS_REGION", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"])
def test_environment_names_beginning_with_aws_are_reserved(api, place, name):
    project_id, task_id = place
    body = [{"htcJobDefinition": {"imageName": "noop:v1", "envs": [{"name": name, "value": "x"}]}}]
    response = api.post(f"/htc/projects/{project_id}/tasks/{task_id}/jobs/batch", json=body, request_valid=None)
    assert response.status_code == 400, response.text
    assert name in response.json()["message"]
    assert api.job_count(project_id, task_id) == 0


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
    response.request = requests.Request(
        "GET", emulator.api_url + "/htc/projects/p/tasks/t", headers={"Authorization": "Bearer x"}
    ).prepare()
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
    refusals = [
        ({"grant_type": "client_credentials"}, ("c", "wrong"), "invalid_client"),
        ({"grant_type": "password"}, ("c", emulator.api_key), "unsupported_grant_type"),
        ({}, ("c", emulator.api_key), "invalid_request"),
    ]
    for form, auth, error in refusals:
        response = requests.post(url, data=form, auth=auth, timeout=30)
        assert response.status_code == 400 and response.json()["error"] == error


# --- limits, obeyed by the scheduler's intake ---------------------------------------------

SLEEPER = {
    "imageName": "opencv-htc-tutorial:v1",
    "maxVCpus": 1,
    "execTimeoutSeconds": 600,
    "commands": ["python", "-c", "import time; time.sleep(0.3)"],
}


def events_of(api, project_id, task_id, job_id) -> list[dict]:
    return api.ok("GET", f"/htc/projects/{project_id}/tasks/{task_id}/jobs/{job_id}/events")["items"]


def test_project_limits_create_overwrite_patch_delete(api):
    project_id = api.new_project()
    base = f"/htc/projects/{project_id}/limits"
    first = api.post(base, json={"vCPUs": 4, "modifierRole": "PROJECT_ADMIN"})
    assert first.status_code == 201 and first.json()["vCPUs"] == 4
    limit_id = first.json()["id"]
    again = api.post(base, json={"vCPUs": 6, "modifierRole": "PROJECT_ADMIN"}).json()
    assert (again["id"], again["vCPUs"]) == (limit_id, 6)  # overwritten, not added
    admin = api.post(base, json={"vCPUs": 2, "modifierRole": "WORKSPACE_ADMIN"}).json()
    assert sorted(lim["modifierRole"] for lim in api.ok("GET", base)) == ["PROJECT_ADMIN", "WORKSPACE_ADMIN"]
    assert api.ok("PATCH", f"{base}/{limit_id}", json={"vCPUs": 1})["vCPUs"] == 1
    assert api.ok("GET", f"{base}/{limit_id}")["vCPUs"] == 1
    for body, field in (
        ({"vCPUs": -1, "modifierRole": "PROJECT_ADMIN"}, "vCPUs"),
        ({"vCPUs": 1, "modifierRole": "OWNER"}, "modifierRole"),
    ):
        refused = api.post(base, json=body, request_valid=None)
        assert refused.status_code == 400 and field in refused.json()["message"]
    assert api.delete(f"{base}/{limit_id}").status_code == 204
    assert api.get(f"{base}/{limit_id}").status_code == 404
    assert [lim["id"] for lim in api.ok("GET", base)] == [admin["id"]]
    assert api.delete(base).status_code == 204 and api.ok("GET", base) == []
    assert api.get(f"/htc/projects/{project_id}/limits/999999").status_code == 404


def test_jobs_wait_for_capacity_under_a_limit(api):
    project_id = api.new_project(repositories=["opencv-htc-tutorial"])
    task_id = api.new_task(project_id)
    api.post(f"/htc/projects/{project_id}/limits", json={"vCPUs": 1, "modifierRole": "PROJECT_ADMIN"})
    parent = api.submit(project_id, task_id, SLEEPER, batch_size=3)
    api.wait_terminal(project_id, task_id, 3)
    spans = []
    for index in range(3):
        events = events_of(api, project_id, task_id, f"{parent}:{index}")
        admitted = next(e["dateTime"] for e in events if e["status"] == "SUBMITTED_TO_PROVIDER")
        spans.append((admitted, events[-1]["dateTime"], events[-1]["status"]))
    spans.sort()
    assert all(status == "SUCCEEDED" for _, _, status in spans)
    # One vCPU: each job was admitted only once the one before it had finished.
    assert all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:], strict=False)), spans


def test_jobs_held_by_a_limit_move_on_when_it_is_lifted(api):
    project_id = api.new_project(repositories=["opencv-htc-tutorial"])
    task_id = api.new_task(project_id)
    api.post(f"/htc/projects/{project_id}/limits", json={"vCPUs": 0, "modifierRole": "WORKSPACE_ADMIN"})
    parent = api.submit(project_id, task_id, SLEEPER, batch_size=2)
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:  # the intake looks again every 0.1 s: ten looks, all held
        assert {api.job(project_id, task_id, f"{parent}:{i}")["status"] for i in range(2)} == {"SUBMITTED_TO_RESCALE"}
        time.sleep(0.1)
    assert api.delete(f"/htc/projects/{project_id}/limits").status_code == 204
    assert api.wait_terminal(project_id, task_id, 2)["SUCCEEDED"] == 2


def test_workspace_limit_is_read_only_and_absent_by_default(api):
    assert api.get("/htc/workspaces/emulator-workspace/limits").status_code == 404
    assert api.get("/htc/workspaces/someone-else/limits").status_code == 404


# --- dimensions --------------------------------------------------------------------


def test_dimensions_constrain_where_jobs_may_run(api):
    offered = api.ok("GET", "/htc/workspaces/emulator-workspace/dimensions")
    assert {"AWS_EU_WEST_1", "GCP_US_CENTRAL_1"} <= {c["region"] for c in offered}
    project_id = api.new_project(repositories=["opencv-htc-tutorial"])
    task_id = api.new_task(project_id)
    path = f"/htc/projects/{project_id}/dimensions"
    assert api.ok("GET", path) == []
    x86_only = [{"region": "AWS_EU_WEST_1", "priority": "ON_DEMAND_PRIORITY", "machineType": "htc-emulator-x86-64"}]
    created = api.request("PUT", path, json=x86_only)
    assert created.status_code == 201 and created.json()[0]["derived"]["architecture"] == "X86"
    assert api.ok("GET", path) == created.json()
    body = [{"htcJobDefinition": {**SLEEPER, "architecture": "AARCH64"}}]
    refused = api.post(f"/htc/projects/{project_id}/tasks/{task_id}/jobs/batch", json=body)
    assert refused.status_code == 400 and "AARCH64" in refused.json()["message"]
    assert (
        sum(api.ok("GET", f"/htc/projects/{project_id}/tasks/{task_id}/summary-statistics")["jobStatuses"].values())
        == 0
    )
    api.submit(project_id, task_id, {**SLEEPER, "architecture": "X86"})
    unknown = api.request("PUT", path, json=[{"machineType": "quantum-1"}])
    assert unknown.status_code == 400 and "quantum-1" in unknown.json()["message"]
    assert api.ok("GET", path) == created.json()  # a refused PUT changes nothing
    assert api.request("PUT", path, json=[]).json() == []
    api.submit(project_id, task_id, {**SLEEPER, "architecture": "AARCH64"})
    api.wait_terminal(project_id, task_id, 2)


# --- task retention ----------------------------------------------------------------


def test_retention_archives_then_deletes_idle_tasks_with_their_storage(client_for):
    with running(time_scale=0.0005) as emu:  # an hour lasts 1.8 s
        api = client_for(emu)
        project_id = api.new_project()
        kept, idle = api.new_task(project_id), api.new_task(project_id)
        url = api.ok(
            "GET",
            f"/htc/projects/{project_id}/tasks/{idle}/storage/presigned-url",
            params={"filePath": "out/result.txt"},
        )["url"]
        assert requests.put(url, data=b"result", timeout=30).status_code == 200
        policy_path = f"/htc/projects/{project_id}/task-retention-policy"
        assert api.get(policy_path).status_code == 404
        # The workspace policy would never delete; the project's own one takes precedence.
        api.request(
            "PUT",
            "/htc/workspaces/emulator-workspace/task-retention-policy",
            json={"archiveAfter": 0, "deleteAfter": 0},
        )
        set_policy = api.request("PUT", policy_path, json={"archiveAfter": 1, "deleteAfter": 1})
        assert set_policy.status_code == 201 and api.ok("GET", policy_path)["archiveAfter"] == 1
        seen = []
        deadline = time.monotonic() + 60
        while (status := api.ok("GET", f"/htc/projects/{project_id}/tasks/{idle}")["lifecycleStatus"]) != "DELETED":
            seen.append(status)
            assert time.monotonic() < deadline, seen[-1]
            # Activity keeps the other task ACTIVE: a PATCH to ACTIVE is activity.
            api.ok("PATCH", f"/htc/projects/{project_id}/tasks/{kept}", json={"lifecycleStatus": "ACTIVE"})
            time.sleep(0.1)
        assert "ARCHIVED" in seen
        assert emu.storage.delete_prefix(f"projects/{project_id}/tasks/{idle}/") == 0
        assert api.ok("GET", f"/htc/projects/{project_id}/tasks/{kept}")["lifecycleStatus"] == "ACTIVE"
        assert api.delete(policy_path).status_code == 204 and api.get(policy_path).status_code == 404


def test_workspace_retention_policy(api):
    path = "/htc/workspaces/emulator-workspace/task-retention-policy"
    assert api.get("/htc/workspaces/other/task-retention-policy").status_code == 404
    refused = api.request("PUT", path, json={"archiveAfter": -1, "deleteAfter": 0}, request_valid=False)
    assert refused.status_code == 400 and "archiveAfter" in refused.json()["message"]


# --- metrics and GCP clusters -------------------------------------------------------


def test_metrics_count_the_real_state(api):
    project_id = api.new_project()
    task_id = api.new_task(project_id)
    api.submit(project_id, task_id, {"imageName": "nothere:v1"}, batch_size=2)
    api.wait_terminal(project_id, task_id, 2)
    response = api.get("/htc/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    assert f'htc_jobs{{project="{project_id}",status="FAILED"}} 2' in response.text.splitlines()


def test_gcp_clusters_follow_the_configured_regions(api):
    clusters = api.ok("GET", "/htc/gcp/clusters/emulator-workspace")["clusters"]
    gcp_regions = [r["region"] for r in api.ok("GET", "/htc/regions", params={"cloudProvider": "GCP"})]
    assert sorted(c["region"] for c in clusters) == sorted(gcp_regions)
    assert api.get("/htc/gcp/clusters/someone-else").status_code == 404


def test_no_spec_operation_answers_501(api, openapi_spec):
    for path, item in openapi_spec["paths"].items():
        concrete = re.sub(r"\{[^}]+\}", "x", path)
        for method in ("get", "put", "post", "patch", "delete"):
            if method in item:
                response = api.request(method.upper(), concrete, request_valid=None)
                assert response.status_code < 500, (method, path, response.status_code)
