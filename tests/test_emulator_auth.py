"""API key exchange, bearer tokens (401) and job-token scope (403)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import jwt
import pytest
import requests
import uvicorn

from htc_emulator import running
from htc_emulator.app import create_app
from htc_emulator.routes import API_PREFIX
from htc_emulator.routes.dependencies import Services


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


def test_whoami_with_the_api_key(api, emulator):
    me = api.ok("GET", "/auth/whoami", auth=None, headers={"Authorization": f"Token {emulator.api_key}"})
    assert me["user"]["workspace"]["id"] == "emulator-workspace"
    assert api.get("/auth/whoami", auth=None, request_valid=None).status_code == 401


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


def test_expired_tokens_are_refused(client_for):
    with running(token_lifetime=1) as emu:
        client = client_for(emu)
        body = client.ok(
            "GET", emu.root_url + "/auth/token", auth=None, headers={"Authorization": f"Token {emu.api_key}"}
        )
        assert body["expiresIn"] == 1
        token = body["tokenValue"]
        assert client.get("/htc/storage", auth=token).status_code == 200
        time.sleep(2.1)
        expired = client.get("/htc/storage", auth=token, request_valid=None)
        assert expired.status_code == 401 and "expired" in expired.json()["errorDescription"]


@pytest.fixture(scope="module")
def scoped(api, emulator):
    """A project with two tasks, another project, and the job token of a job running in the first task."""
    project_id = api.new_project(repositories=["opencv-htc-tutorial"])
    task_id, sibling_id = api.new_task(project_id), api.new_task(project_id)
    other_project = api.new_project()
    parent = api.submit(
        project_id,
        task_id,
        {
            "imageName": "opencv-htc-tutorial:v1",
            "execTimeoutSeconds": 600,
            "commands": ["python", "-c", "import time; time.sleep(300)"],
        },
    )
    token = emulator.scheduler.tokens.job_token(
        project_id=project_id, task_id=task_id, job_id=f"{parent}:0", lifetime=600
    )
    yield project_id, task_id, sibling_id, other_project, token
    api.post(f"/htc/projects/{project_id}/tasks/{task_id}/jobs/cancel")


@pytest.mark.parametrize(
    "method,path,expected",
    [
        # What a job needs: its task, its jobs and their logs, storage for its task, shared files to read.
        ("GET", "/htc/projects/{p}/storage/token", 200),
        ("GET", "/htc/projects/{p}/storage/token/AWS_EU_WEST_1", 200),
        ("GET", "/htc/projects/{p}/tasks/{t}/storage/token", 200),
        ("GET", "/htc/projects/{p}/tasks/{t}/storage/token/AWS_EU_WEST_1", 200),
        ("GET", "/htc/projects/{p}/tasks/{t}/storage/regional-storage", 200),
        ("GET", "/htc/projects/{p}/tasks/{t}", 200),
        ("GET", "/htc/projects/{p}/tasks/{t}/jobs", 200),
        ("GET", "/htc/projects/{p}/tasks/{t}/summary-statistics", 200),
        # Nothing more, even in its own project and task.
        ("POST", "/htc/projects/{p}/tasks", 403),
        ("PATCH", "/htc/projects/{p}", 403),
        ("GET", "/htc/projects/{p}", 403),
        ("POST", "/htc/projects/{p}/container-registry/repo/more", 403),
        ("GET", "/htc/projects/{p}/container-registry/token", 403),
        ("GET", "/htc/projects/{p}/storage/presigned-url?filePath=x.txt", 403),
        ("GET", "/htc/projects/{p}/tasks/{t}/storage/presigned-url?filePath=x.txt", 403),
        ("POST", "/htc/projects/{p}/tasks/{t}/jobs/batch", 403),
        ("POST", "/htc/projects/{p}/tasks/{t}/jobs/cancel", 403),
        ("PATCH", "/htc/projects/{p}/tasks/{t}", 403),
        ("DELETE", "/htc/projects/{p}/tasks/{t}", 403),
        ("GET", "/htc/projects/{p}/tasks/{s}/storage/token", 403),
        ("GET", "/htc/projects/{p}/tasks/{s}", 403),
        ("DELETE", "/htc/projects/{p}/tasks/{s}", 403),
        ("GET", "/htc/projects/{o}", 403),
        ("GET", "/htc/projects/{o}/storage/token", 403),
        ("POST", "/htc/projects/{o}/tasks", 403),
        ("GET", "/htc/projects", 403),
        ("GET", "/htc/regions", 403),
        ("GET", "/htc/storage", 403),
    ],
)
def test_job_tokens_reach_only_their_own_project_and_task(api, scoped, method, path, expected):
    project_id, task_id, sibling_id, other_project, token = scoped
    url = path.format(p=project_id, t=task_id, s=sibling_id, o=other_project)
    bodies = {
        "/tasks": {"taskName": "x", "taskDescription": "y"},
        "/batch": [{"htcJobDefinition": {"imageName": "opencv-htc-tutorial:v1"}}],
        "{p}": {"regions": ["AWS_US_WEST_2"]},
        "{t}": {"lifecycleStatus": "ARCHIVED"},
    }
    kwargs = next(({"json": body} for end, body in bodies.items() if path.endswith(end)), {})
    before = api.ok("GET", f"/htc/projects/{project_id}/tasks/{task_id}/summary-statistics")
    response = api.request(method, url, auth=token, request_valid=None, **kwargs)
    assert response.status_code == expected, response.text
    assert api.ok("GET", f"/htc/projects/{project_id}/tasks/{sibling_id}")["lifecycleStatus"] == "ACTIVE"
    if expected == 403:
        assert api.ok("GET", f"/htc/projects/{project_id}/tasks/{task_id}/summary-statistics") == before
        assert api.ok("GET", f"/htc/projects/{project_id}")["regions"] == ["AWS_EU_WEST_1"]
        assert api.ok("GET", f"/htc/projects/{project_id}/tasks/{task_id}")["lifecycleStatus"] == "ACTIVE"


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
