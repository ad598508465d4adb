"""The API surface the tutorial uses, each exchange checked against the OpenAPI document.

Every call goes through ``ContractClient``, which fails the test when a
request or response breaks the spec; the assertions here check what the
spec alone can't (values, links, state).
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
import requests

from htc_emulator import ExchangeRecorder, running
from tests.support.spec import ContractValidator, corrected_spec

# A no-op job that runs quickly wherever the tutorial image is registered.
NOOP = {"imageName": "noop:v1", "commands": ["python", "-c", "pass"], "execTimeoutSeconds": 60}


@pytest.fixture(scope="module")
def noop_image(emulator, tmp_path_factory):
    dockerfile = tmp_path_factory.mktemp("noop") / "Dockerfile"
    dockerfile.write_text('FROM python:3.12-slim\nCMD ["python", "-c", "pass"]\n')
    emulator.register_image("noop:v1", dockerfile)
    return "noop:v1"


def test_token_exchange_at_root_and_api_paths(api, emulator):
    for url in (emulator.root_url + "/auth/token", emulator.api_url + "/auth/token"):
        body = api.ok("GET", url, auth=None, headers={"Authorization": f"Token {emulator.api_key}"})
        assert body["expiresIn"] == 21600
        claims = jwt.decode(body["tokenValue"], options={"verify_signature": False})
        assert claims["exp"] - claims["iat"] == 21600
        assert "groups" in claims


def test_regions_are_a_list_the_tutorial_can_read(api):
    regions = api.ok("GET", "/htc/regions")
    assert isinstance(regions, list) and regions
    names = [r["region"] for r in regions]
    assert "AWS_EU_WEST_1" in names
    assert all(r["supportedArchitectures"] for r in regions)
    gcp = api.ok("GET", "/htc/regions", params={"cloudProvider": "GCP"})
    assert gcp and all(r["cloudProvider"] == "GCP" for r in gcp)
    assert api.ok("GET", "/htc/regions/AWS_EU_WEST_1")["region"] == "AWS_EU_WEST_1"


def test_storage_options(api, emulator):
    options = api.ok("GET", "/htc/storage")
    assert {"region": "AWS_EU_WEST_1", "storageName": emulator.bucket, "provider": "AWS"} in options
    assert api.ok("GET", "/htc/storage/region/AWS_EU_WEST_1")["storageName"] == emulator.bucket
    assert api.get("/htc/storage/region/GCP_US_EAST_1").status_code == 404


def test_project_create_get_list(api):
    created = api.ok(
        "POST",
        "/htc/projects",
        json={"projectName": "htc-tutorial", "projectDescription": "Tutorial project", "regions": ["AWS_EU_WEST_1"]},
    )
    project_id = created["projectId"]
    assert created["projectFolderPath"] == f"projects/{project_id}/"
    assert created["containerRegistry"].endswith("/")
    assert api.ok("GET", f"/htc/projects/{project_id}") == created
    listed = api.ok("GET", "/htc/projects", params={"pageSize": 10000})
    assert created in listed["items"] and "next" not in listed
    patched = api.ok("PATCH", f"/htc/projects/{project_id}", json={"regions": ["AWS_US_EAST_1"]})
    assert patched["regions"] == ["AWS_EU_WEST_1", "AWS_US_EAST_1"]


def test_container_registry(api, emulator, noop_image):
    project_id = api.new_project()
    first = api.ok("POST", f"/htc/projects/{project_id}/container-registry/repo/noop")
    again = api.ok("POST", f"/htc/projects/{project_id}/container-registry/repo/noop")
    assert first["successfullyCreated"] is True and again["successfullyCreated"] is False
    assert first["registryURI"] == api.ok("GET", f"/htc/projects/{project_id}")["containerRegistry"]
    for base in (emulator.root_url, emulator.api_url):
        token = api.get(f"{base}/htc/projects/{project_id}/container-registry/token")
        assert token.status_code == 200 and token.headers["content-type"].startswith("text/plain")
        assert len(token.text) >= 20
    images = api.ok("GET", f"/htc/projects/{project_id}/container-registry/images")
    assert noop_image in images["images"]
    assert api.ok("GET", f"/htc/projects/{project_id}/container-registry/images/{noop_image}") == {"status": "READY"}
    missing = api.get(f"/htc/projects/{project_id}/container-registry/images/nothere:v1")
    assert missing.status_code == 404 and missing.json()["errorType"] == "IMAGE_UNAVAILABLE"


def test_image_listed_only_once_its_repository_exists(api, noop_image):
    project_id = api.new_project()
    assert api.ok("GET", f"/htc/projects/{project_id}/container-registry/images")["images"] == []


def test_task_create_get_list_patch_delete(api):
    project_id = api.new_project()
    task = api.ok("POST", f"/htc/projects/{project_id}/tasks", json={"taskName": "a", "taskDescription": "b"})
    task_id = task["taskId"]
    assert task["lifecycleStatus"] == "ACTIVE"
    assert task["taskFolderPath"] == f"projects/{project_id}/tasks/{task_id}/"
    assert api.ok("GET", f"/htc/projects/{project_id}/tasks/{task_id}") == task
    assert [t["taskId"] for t in api.ok("GET", f"/htc/projects/{project_id}/tasks")["items"]] == [task_id]
    archived = api.ok("PATCH", f"/htc/projects/{project_id}/tasks/{task_id}", json={"lifecycleStatus": "ARCHIVED"})
    assert archived["lifecycleStatus"] == "ARCHIVED" and archived["archivedAt"]
    active = api.ok("PATCH", f"/htc/projects/{project_id}/tasks/{task_id}", json={"lifecycleStatus": "ACTIVE"})
    assert active["archivedAt"] is None and active["deletedAt"] is None
    deleted = api.ok("DELETE", f"/htc/projects/{project_id}/tasks/{task_id}")
    assert deleted["lifecycleStatus"] == "DELETED" and deleted["deletedAt"]
    again = api.patch(f"/htc/projects/{project_id}/tasks/{task_id}", json={"lifecycleStatus": "ACTIVE"})
    assert again.status_code == 400


def test_job_submit_list_get_events_logs_statistics(api, noop_image):
    project_id = api.new_project(repositories=["noop"])
    task_id = api.new_task(project_id)
    body = [
        {
            "jobName": "j",
            "batchSize": 3,
            "htcJobDefinition": {**NOOP, "tags": {"k": "v"}},
            "regions": ["AWS_EU_WEST_1"],
            "tags": [{"key": "a", "value": "b"}],
            "retryStrategy": {"maxRetries": 0},
        }
    ]
    echo = api.ok("POST", f"/htc/projects/{project_id}/tasks/{task_id}/jobs/batch", json=body, params={"group": "g1"})
    assert len(echo) == 1
    parent = echo[0]["parentJobId"]
    assert echo[0]["group"] == "g1" and echo[0]["batchSize"] == 3 and "regions" not in echo[0]
    definition = echo[0]["htcJobDefinition"]
    assert {k: v for k, v in definition.items() if v is not None} == body[0]["htcJobDefinition"]
    assert definition["envs"] is None and echo[0]["experimental"] is None
    api.wait_terminal(project_id, task_id, 3)
    jobs = api.ok("GET", f"/htc/projects/{project_id}/tasks/{task_id}/jobs", params={"viewType": "FULL"})["items"]
    assert sorted(j["jobUUID"] for j in jobs) == [f"{parent}:{i}" for i in range(3)]
    job = api.job(project_id, task_id, f"{parent}:1")
    assert job["status"] == "SUCCEEDED" and job["container"]["exitCode"] == 0 and job["group"] == "g1"
    assert job["tags"] == [{"key": "a", "value": "b"}] and job["region"] == "AWS_EU_WEST_1"
    events = api.ok("GET", f"/htc/projects/{project_id}/tasks/{task_id}/jobs/{parent}:1/events")["items"]
    assert events[-1]["status"] == "SUCCEEDED"
    api.ok("GET", f"/htc/projects/{project_id}/tasks/{task_id}/jobs/{parent}:1/logs")
    groups = api.ok(
        "GET", f"/htc/projects/{project_id}/tasks/{task_id}/group-summary-statistics", params={"group": ["g1"]}
    )
    assert groups["items"] == [
        {
            "group": "g1",
            "jobStatuses": {
                "SUBMITTED_TO_RESCALE": 0,
                "SUBMITTED_TO_PROVIDER": 0,
                "RUNNABLE": 0,
                "STARTING": 0,
                "RUNNING": 0,
                "SUCCEEDED": 3,
                "FAILED": 0,
            },
        }
    ]
    assert (
        api.ok("GET", f"/htc/projects/{project_id}/tasks/{task_id}/summary-statistics")["jobStatuses"]["SUCCEEDED"] == 3
    )
    assert api.ok("GET", f"/htc/projects/{project_id}/tasks/{task_id}/groups") == ["g1"]
    cancel = api.post(f"/htc/projects/{project_id}/tasks/{task_id}/jobs/cancel", params={"group": "g1"})
    assert cancel.status_code == 200 and cancel.content == b""


def test_paging_past_one_page_with_absolute_next_links(api, noop_image):
    project_id = api.new_project(repositories=["noop"])
    task_id = api.new_task(project_id)
    for group in ("a", "b"):
        api.submit(project_id, task_id, NOOP, batch_size=130, group=group)
    path = f"/htc/projects/{project_id}/tasks/{task_id}/jobs"
    first = api.ok("GET", path, params={"group": "b", "viewType": "SIMPLE"})
    assert len(first["items"]) == 100  # the spec's default pageSize
    link = urlsplit(first["next"])
    assert f"{link.scheme}://{link.netloc}" == api.emu.root_url and link.path == "/api/v1" + path
    assert parse_qs(link.query) == {"group": ["b"], "viewType": ["SIMPLE"], "pageIndex": ["100"]}
    second = api.ok("GET", first["next"])
    assert len(second["items"]) == 30 and "next" not in second
    seen = [j["jobUUID"] for j in first["items"] + second["items"]]
    assert len(set(seen)) == 130 and all(j["group"] == "b" for j in first["items"] + second["items"])
    pages, url = 0, path + "?pageSize=7"
    while url:
        body = api.ok("GET", url)
        pages += 1
        url = body.get("next")
    assert pages == 38  # ceil(260 / 7)
    api.wait_terminal(project_id, task_id, 260, timeout=120)


def test_job_list_filters(api, noop_image):
    project_id = api.new_project(repositories=["noop"])
    task_id = api.new_task(project_id)
    ok_parent = api.submit(project_id, task_id, NOOP, batch_size=2, group="ok")
    bad_parent = api.submit(
        project_id, task_id, {**NOOP, "commands": ["python", "-c", "raise SystemExit(4)"]}, batch_size=2, group="bad"
    )
    api.wait_terminal(project_id, task_id, 4)
    path = f"/htc/projects/{project_id}/tasks/{task_id}/jobs"

    def ids(**params):
        return sorted(j["jobUUID"] for j in api.ok("GET", path, params=params)["items"])

    assert ids(status="FAILED") == [f"{bad_parent}:0", f"{bad_parent}:1"]
    assert ids(status="SUCCEEDED", group="bad") == []
    assert ids(group="ok") == [f"{ok_parent}:0", f"{ok_parent}:1"]
    assert ids(jobId=[f"{ok_parent}:1", f"{bad_parent}:0"]) == sorted([f"{ok_parent}:1", f"{bad_parent}:0"])
    simple = api.ok("GET", path, params={"viewType": "SIMPLE", "status": "FAILED"})["items"][0]
    assert simple["failureCode"] == "ErrorNonZeroContainerExitCode" and "commands" not in simple
    full = api.ok("GET", path, params={"viewType": "FULL", "status": "FAILED"})["items"][0]
    assert full["commands"] == ["python", "-c", "raise SystemExit(4)"] and full["container"]["exitCode"] == 4


def test_storage_tokens_and_paths(api, emulator):
    project_id = api.new_project(regions=["AWS_EU_WEST_1", "AWS_US_EAST_1"])
    task_id = api.new_task(project_id)
    shared = f"s3://{emulator.bucket}/projects/{project_id}/shared/"
    task_path = f"s3://{emulator.bucket}/projects/{project_id}/tasks/{task_id}/"
    project_token = api.ok("GET", f"/htc/projects/{project_id}/storage/token")
    assert project_token["projectSharedStoragePath"] == project_token["storagePath"] == shared
    assert project_token["region"] == "AWS_EU_WEST_1"
    assert set(project_token["credentials"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
    regional = api.ok("GET", f"/htc/projects/{project_id}/storage/token/AWS_US_EAST_1")
    assert regional["region"] == "AWS_US_EAST_1"
    task_token = api.ok("GET", f"/htc/projects/{project_id}/tasks/{task_id}/storage/token/AWS_EU_WEST_1")
    assert task_token["storagePath"] == task_path and task_token["projectSharedStoragePath"] == shared
    assert api.ok("GET", f"/htc/projects/{project_id}/tasks/{task_id}/storage/token")["storagePath"] == task_path
    tokens = api.ok("GET", f"/htc/projects/{project_id}/tasks/{task_id}/storage/tokens")
    assert tokens["defaultRegion"] == "AWS_EU_WEST_1" and len(tokens["regionStores"]) == 2
    assert len(api.ok("GET", f"/htc/projects/{project_id}/storage/tokens")["regionStores"]) == 2
    stores = api.ok("GET", f"/htc/projects/{project_id}/tasks/{task_id}/storage/regional-storage")
    assert stores["regionalStores"][0]["taskPath"] == task_path
    assert api.get(f"/htc/projects/{project_id}/storage/token/AWS_EU_WEST_2").status_code == 404
    for url in (
        f"/htc/projects/{project_id}/storage/presigned-url",
        f"/htc/projects/{project_id}/tasks/{task_id}/storage/presigned-url",
    ):
        presigned = api.ok("GET", url, params={"filePath": "dir/file.txt"})
        assert presigned["url"].startswith(emulator.s3_endpoint + "/")


def test_response_checker_catches_a_broken_response(openapi_spec, emulator):
    """The contract check itself can fail: a response in the spec's documented shape for /htc/regions
    (a single object) is refused by the corrected spec, and a wrong type is refused everywhere."""
    import requests

    validator = ContractValidator(emulator.api_url, openapi_spec)

    def fake(path: str, body: bytes) -> requests.Response:
        response = requests.Response()
        response.status_code = 200
        response.headers["Content-Type"] = "application/json"
        response._content = body
        response.request = requests.Request(
            "GET", emulator.api_url + path, headers={"Authorization": "Bearer x"}
        ).prepare()
        return response

    assert validator.response_errors(fake("/htc/regions", b'{"name": "x"}'))
    assert validator.response_errors(fake("/htc/projects/p", b'{"projectName": 5}'))
    assert not validator.response_errors(fake("/htc/projects/p", b'{"projectName": "x", "projectDescription": "y"}'))
    assert corrected_spec(openapi_spec, "http://h")["servers"] == [{"url": "http://h"}]


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
