"""Hostile and unlucky input: refused with a 400 naming the problem, nothing stored, nothing broken later."""

from __future__ import annotations

import json

import pytest

from htc_emulator import running
from htc_emulator.errors import InvalidRequest

DEFINITION = {"imageName": "opencv-htc-tutorial:v1", "commands": ["python", "-c", "pass"], "execTimeoutSeconds": 60}
LONE_SURROGATE = "\ud800"


@pytest.fixture(scope="module")
def place(api):
    project_id = api.new_project(repositories=["opencv-htc-tutorial"])
    return project_id, api.new_task(project_id)


def assert_bad_request(response, *named: str) -> None:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["errorType"] == "INVALID_REQUEST", body
    for text in named:
        assert text in body["errorDescription"] + (body["message"] or ""), body


def raw_json(api, method: str, path: str, body, **kwargs):
    # json.dumps writes a lone surrogate as the escape "\ud800", which JSON allows.
    return api.request(
        method, path, data=json.dumps(body), headers={"Content-Type": "application/json"}, request_valid=None, **kwargs
    )


def counts(api, project_id: str, task_id: str) -> tuple[int, int, int]:
    """Projects, tasks of the project, jobs of the task; every list must still serialise."""
    projects = api.ok("GET", "/htc/projects", params={"pageSize": 10000})["items"]
    tasks = api.ok("GET", f"/htc/projects/{project_id}/tasks", params={"pageSize": 10000})["items"]
    jobs = api.ok("GET", f"/htc/projects/{project_id}/tasks/{task_id}/jobs", params={"pageSize": 10000})["items"]
    return len(projects), len(tasks), len(jobs)


def job_batch(**changes) -> dict:
    return {
        "jobName": "j",
        "batchSize": 1,
        "htcJobDefinition": {**DEFINITION, **changes.pop("definition", {})},
        **changes,
    }


# --- text that could not be served back --------------------------------------------------

SURROGATE_BODIES = [
    ("/htc/projects", {"projectName": LONE_SURROGATE, "projectDescription": "d"}, "projectName"),
    ("/htc/projects", {"projectName": "p", "projectDescription": "a" + LONE_SURROGATE}, "projectDescription"),
    ("tasks", {"taskName": LONE_SURROGATE, "taskDescription": "d"}, "taskName"),
    ("tasks", {"taskName": "t", "taskDescription": LONE_SURROGATE}, "taskDescription"),
    ("jobs/batch", [job_batch(jobName=LONE_SURROGATE)], "jobName"),
    ("jobs/batch", [job_batch(definition={"envs": [{"name": "X", "value": LONE_SURROGATE}]})], "value"),
    ("jobs/batch", [job_batch(definition={"commands": ["echo", LONE_SURROGATE]})], "commands"),
    ("jobs/batch", [job_batch(definition={"tags": {LONE_SURROGATE: "v"}})], "tags"),
    ("jobs/batch", [job_batch(tags=[{"key": "k", "value": "\udfff"}])], "value"),
]


@pytest.mark.parametrize("where,body,field", SURROGATE_BODIES)
def test_text_that_cannot_be_served_is_refused_and_stores_nothing(api, place, where, body, field):
    project_id, task_id = place
    path = {
        "tasks": f"/htc/projects/{project_id}/tasks",
        "jobs/batch": f"/htc/projects/{project_id}/tasks/{task_id}/jobs/batch",
    }.get(where, where)
    before = counts(api, project_id, task_id)
    assert_bad_request(raw_json(api, "POST", path, body), field, "surrogate")
    assert counts(api, project_id, task_id) == before


def test_the_model_refuses_to_store_what_it_could_not_serve(emulator, place):
    """The guard under the HTTP layer: whoever calls the model, nothing unservable is stored."""
    project_id, task_id = place
    backend = emulator.backend
    before = (len(backend.projects), len(backend.tasks), len(backend.task_jobs(project_id, task_id)))
    with pytest.raises(InvalidRequest, match="projectName"):
        backend.create_project(LONE_SURROGATE, "d", [], [])
    with pytest.raises(InvalidRequest, match="taskDescription"):
        backend.create_task(project_id, "t", LONE_SURROGATE)
    with pytest.raises(InvalidRequest, match="body"):
        backend.submit(project_id, task_id, None, [{"htcJobDefinition": {**DEFINITION, "commands": [LONE_SURROGATE]}}])
    with pytest.raises(InvalidRequest, match="group"):
        backend.submit(project_id, task_id, LONE_SURROGATE, [{"htcJobDefinition": DEFINITION}])
    assert (len(backend.projects), len(backend.tasks), len(backend.task_jobs(project_id, task_id))) == before


# --- query integers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,value",
    [
        ("pageIndex", "\u00b2"),  # superscript two: str.isdigit() says yes, int() says no
        ("pageIndex", "\u0663"),  # Arabic-Indic three: int() reads it as 3
        ("pageIndex", "1" * 5000),  # beyond int()'s digit limit
        ("pageIndex", "-1"),
        ("pageSize", "\u0663"),
        ("pageSize", "5_0"),
        ("pageSize", "+5"),
        ("pageSize", " 5"),
        ("pageSize", "5.0"),
        ("pageSize", "1" * 5000),
    ],
)
def test_query_integers_are_ascii_digits_of_sensible_length(api, place, name, value):
    project_id, task_id = place
    for path in (
        "/htc/projects",
        f"/htc/projects/{project_id}/tasks/{task_id}/jobs",
        f"/htc/projects/{project_id}/tasks/{task_id}/group-summary-statistics",
    ):
        assert_bad_request(api.get(path, params={name: value}, request_valid=None), name)


def test_issued_page_indexes_still_work(api, place):
    project_id, _ = place
    for name in ("a", "b", "c"):
        api.ok("POST", f"/htc/projects/{project_id}/tasks", json={"taskName": name, "taskDescription": "d"})
    first = api.ok("GET", f"/htc/projects/{project_id}/tasks", params={"pageSize": "2"})
    second = api.ok("GET", first["next"])
    assert len(first["items"]) == 2 and second["items"]


# --- empty group ---------------------------------------------------------------------------


def test_an_empty_group_is_refused_everywhere_and_cancels_nothing(api, place):
    project_id, task_id = place
    base = f"/htc/projects/{project_id}/tasks/{task_id}"
    sleeper = {**DEFINITION, "commands": ["python", "-c", "import time; time.sleep(120)"], "execTimeoutSeconds": 600}
    parent = api.submit(project_id, task_id, sleeper, group="keep")
    before = counts(api, project_id, task_id)
    try:
        assert_bad_request(
            api.post(f"{base}/jobs/batch", params={"group": ""}, json=[job_batch()], request_valid=None), "group"
        )
        assert_bad_request(api.get(f"{base}/jobs", params={"group": ""}, request_valid=None), "group")
        assert_bad_request(
            api.get(f"{base}/group-summary-statistics", params={"group": ["keep", ""]}, request_valid=None), "group"
        )
        assert_bad_request(api.post(f"{base}/jobs/cancel", params={"group": ""}, request_valid=None), "group")
        assert counts(api, project_id, task_id) == before
        assert not api.emu.backend.jobs[f"{parent}:0"].cancel_requested
    finally:
        api.post(f"{base}/jobs/cancel", params={"group": "keep"})


# --- bounded requests ----------------------------------------------------------------------


def test_more_than_100_batch_definitions_are_refused(api, place):
    project_id, task_id = place
    before = counts(api, project_id, task_id)
    response = api.post(
        f"/htc/projects/{project_id}/tasks/{task_id}/jobs/batch",
        json=[job_batch() for _ in range(101)],
        request_valid=None,
    )
    assert_bad_request(response, "body", "100")
    assert counts(api, project_id, task_id) == before


def test_a_task_holds_a_bounded_number_of_jobs(client_for):
    with running(max_jobs_per_task=5, concurrency=1) as emu:
        api = client_for(emu)
        project_id = api.new_project()
        task_id = api.new_task(project_id)
        path = f"/htc/projects/{project_id}/tasks/{task_id}/jobs/batch"
        api.ok("POST", path, json=[job_batch(batchSize=3)])
        response = api.post(path, json=[job_batch(batchSize=1), job_batch(batchSize=2)])
        assert_bad_request(response, "batchSize", "at most 5 jobs")
        assert len(emu.backend.task_jobs(project_id, task_id)) == 3
        api.ok("POST", path, json=[job_batch(batchSize=2)])  # up to the ceiling is fine


# --- job tokens live as long as their job ---------------------------------------------------


def job_token_for(api, project_id: str, task_id: str, definition: dict) -> tuple[str, str]:
    """A job in the task, and the token the scheduler would give it."""
    job_id = api.submit(project_id, task_id, definition) + ":0"
    return job_id, api.emu.scheduler.tokens.job_token(
        project_id=project_id, task_id=task_id, job_id=job_id, lifetime=600
    )


def test_a_job_token_stops_working_when_its_task_is_deleted(api):
    project_id = api.new_project(repositories=["opencv-htc-tutorial"])
    task_id = api.new_task(project_id)
    sleeper = {**DEFINITION, "commands": ["python", "-c", "import time; time.sleep(120)"], "execTimeoutSeconds": 600}
    _, token = job_token_for(api, project_id, task_id, sleeper)
    path = f"/htc/projects/{project_id}/tasks/{task_id}/storage/token"
    assert api.get(path, auth=token).status_code == 200
    api.ok("DELETE", f"/htc/projects/{project_id}/tasks/{task_id}")
    refused = api.get(path, auth=token, request_valid=None)
    assert refused.status_code == 401 and "deleted" in refused.json()["errorDescription"]
    refused = api.get(f"/htc/projects/{project_id}/storage/token", auth=token, request_valid=None)
    assert refused.status_code == 401


def test_a_job_token_stops_working_soon_after_its_job_ends(api, monkeypatch):
    from htc_emulator import job_rights

    project_id = api.new_project()
    task_id = api.new_task(project_id)
    # No repository in the project: the job fails as soon as it is started.
    job_id, token = job_token_for(api, project_id, task_id, DEFINITION)
    api.wait_terminal(project_id, task_id, 1)
    path = f"/htc/projects/{project_id}/tasks/{task_id}/jobs/{job_id}/logs"
    assert api.get(path, auth=token).status_code == 200  # within the afterlife
    monkeypatch.setattr(job_rights, "JOB_TOKEN_AFTERLIFE_SECONDS", 0)
    refused = api.get(path, auth=token, request_valid=None)
    assert refused.status_code == 401 and "ended" in refused.json()["errorDescription"]


def test_a_job_token_for_a_job_that_never_ran_is_refused(api, place):
    project_id, task_id = place
    token = api.emu.scheduler.tokens.job_token(project_id=project_id, task_id=task_id, job_id="made-up:0", lifetime=600)
    refused = api.get(f"/htc/projects/{project_id}/tasks/{task_id}", auth=token, request_valid=None)
    assert refused.status_code == 401
