"""Job tokens: what a job needs and nothing more (403 beyond), while its job lives (401 after).

The table of rights is ``htc_emulator/job_rights.py``; the same check from inside a
running job is ``test_job_lifecycle.py::test_job_token_reaches_only_its_own_project_and_task``.
"""

from __future__ import annotations

import time

import pytest

from tests.support.refusals import DEFINITION


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
    # The tests compare the task's statistics before and after a refused call: the job must have stopped
    # moving through its start (with the platform's refresh and start latency that takes a while).
    deadline = time.monotonic() + 300
    while api.job(project_id, task_id, f"{parent}:0")["status"] != "RUNNING":
        assert time.monotonic() < deadline, "the sleeping job never got to RUNNING"
        time.sleep(0.2)
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

    project_id = api.new_project(repositories=["opencv-htc-tutorial"])
    task_id = api.new_task(project_id)
    job_id, token = job_token_for(api, project_id, task_id, DEFINITION)  # a job that ends at once
    api.wait_terminal(project_id, task_id, 1)
    path = f"/htc/projects/{project_id}/tasks/{task_id}/jobs/{job_id}/logs"
    assert api.get(path, auth=token).status_code == 200  # within the afterlife
    monkeypatch.setattr(job_rights, "JOB_TOKEN_AFTERLIFE_SECONDS", 0)
    refused = api.get(path, auth=token, request_valid=None)
    assert refused.status_code == 401 and "ended" in refused.json()["errorDescription"]


def test_a_job_token_for_a_job_that_never_ran_is_refused(api, runnable_place):
    project_id, task_id = runnable_place
    token = api.emu.scheduler.tokens.job_token(project_id=project_id, task_id=task_id, job_id="made-up:0", lifetime=600)
    refused = api.get(f"/htc/projects/{project_id}/tasks/{task_id}", auth=token, request_valid=None)
    assert refused.status_code == 401
