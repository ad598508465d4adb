"""What a refused request must look like, and what it must leave alone.

The project's rule: bad input gets a 400 ``HTCRequestError`` that names the
problem, and a rejected request changes no state. The request builders make
the valid batches the tests spoil one field at a time.
"""

from __future__ import annotations

# A job that runs quickly on the tutorial's image, where the project has its repository.
DEFINITION = {"imageName": "opencv-htc-tutorial:v1", "commands": ["python", "-c", "pass"], "execTimeoutSeconds": 60}


def job_batch(**changes) -> dict:
    """One valid batch definition with ``changes`` (``definition=`` changes its job definition)."""
    return {
        "jobName": "j",
        "batchSize": 1,
        "htcJobDefinition": {**DEFINITION, **changes.pop("definition", {})},
        **changes,
    }


def batch(**changes) -> list[dict]:
    """A request body of one batch: :func:`job_batch` in a list."""
    return [job_batch(**changes)]


def assert_bad_request(response, field: str) -> None:
    """A 400 ``HTCRequestError`` (exactly its three properties) naming ``field`` in its description and message."""
    assert response.status_code == 400, response.text
    body = response.json()
    assert set(body) == {"errorType", "errorDescription", "message"}
    assert field in body["errorDescription"], body
    assert field in body["message"], body


def assert_refused(response, *named: str) -> None:
    """A 400 ``INVALID_REQUEST`` whose description and message together mention each of ``named``."""
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["errorType"] == "INVALID_REQUEST", body
    for text in named:
        assert text in body["errorDescription"] + (body["message"] or ""), body


def counts(api, project_id: str, task_id: str) -> tuple[int, int, int]:
    """Projects, tasks of the project, jobs of the task; every list must still serialise."""
    projects = api.ok("GET", "/htc/projects", params={"pageSize": 10000})["items"]
    tasks = api.ok("GET", f"/htc/projects/{project_id}/tasks", params={"pageSize": 10000})["items"]
    jobs = api.ok("GET", f"/htc/projects/{project_id}/tasks/{task_id}/jobs", params={"pageSize": 10000})["items"]
    return len(projects), len(tasks), len(jobs)
