"""The platform's answer shapes and the operations beyond the tutorial's path."""

from __future__ import annotations

import pytest


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
    import requests

    body = b'{"taskId": "t", "projectId": "p", "taskName": "a", "taskDescription": "b"}'
    response = requests.Response()
    response.status_code = 200
    response.headers["Content-Type"] = "application/json"
    response._content = body
    response.request = requests.Request("GET", emulator.api_url + "/htc/projects/p/tasks/t",
                                        headers={"Authorization": "Bearer x"}).prepare()
    assert "body.archivedAt is missing" in api.validator.shape_errors(response)
