"""Bad input: a 400 HTCRequestError naming the field, never a 500, and no state change.

Where the spec itself refuses the request, the test also checks that it
does (``request_valid=False``), so the emulator and the document agree.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

GOOD_DEFINITION = {
    "imageName": "opencv-htc-tutorial:v1",
    "commands": ["python", "-c", "pass"],
    "execTimeoutSeconds": 60,
}


def assert_bad_request(response, field: str) -> None:
    assert response.status_code == 400, response.text
    body = response.json()
    assert set(body) == {"errorType", "errorDescription", "message"}
    assert field in body["errorDescription"], body
    assert field in body["message"], body


def batch(**changes) -> list[dict]:
    definition = {**GOOD_DEFINITION, **changes.pop("definition", {})}
    return [{"jobName": "j", "batchSize": 1, "htcJobDefinition": definition, **changes}]


BAD_BATCHES = [
    # (body, field named in the error, does the spec itself refuse it?)
    (batch(batchSize=0), "batchSize", False),
    (batch(batchSize=1001), "batchSize", False),
    (batch(batchSize="5"), "batchSize", False),
    (batch(batchSize=None), "batchSize", False),
    (batch(definition={"imageName": "UPPER"}), "imageName", False),
    # The spec's pattern is unanchored, so only a whole-name match (as Java's) refuses these.
    (batch(definition={"imageName": "name with spaces:v1"}), "imageName", None),
    (batch(definition={"imageName": "repo:tag:extra"}), "imageName", None),
    (batch(definition={"imageName": ""}), "imageName", False),
    (batch(definition={"execTimeoutSeconds": 59}), "execTimeoutSeconds", False),
    (batch(definition={"execTimeoutSeconds": 1209601}), "execTimeoutSeconds", False),
    (batch(definition={"maxVCpus": 65}), "maxVCpus", False),
    (batch(definition={"maxMemory": 3}), "maxMemory", False),
    (batch(definition={"envs": [{"name": "AWS_BATCH_JOB_ARRAY_INDEX", "value": "3"}]}), "name", False),
    (batch(definition={"envs": [{"name": "MY_AWS_BATCH_THING", "value": "x"}]}), "name", False),
    (batch(definition={"envs": [{"name": "AWS_SECRET_ACCESS_KEY", "value": "x"}]}), "name", False),
    # Reserved by the envs description, not by the name pattern.
    (batch(definition={"envs": [{"name": "RESCALE_HTC_BEARER_TOKEN", "value": "x"}]}), "name", None),
    (batch(definition={"envs": [{"name": "A=B", "value": "x"}]}), "name", None),
    (batch(definition={"envs": [{"name": "X"}]}), "value", False),
    (batch(definition={"commands": "python -c pass"}), "commands", False),
    (batch(definition={"claims": [{"name": "taskId", "value": "someone-elses"}]}), "claims", None),
    (batch(retryStrategy={"maxRetries": 11}), "maxRetries", False),
    (batch(regions=["MARS_NORTH_1"]), "regions", False),
    ([{"jobName": "no definition"}], "htcJobDefinition", False),
    ([{"htcJobDefinition": {"commands": ["true"]}}], "imageName", False),
    ({"htcJobDefinition": GOOD_DEFINITION}, "body", False),
    (batch() + batch(batchSize=5000), "batchSize", False),
]


@pytest.mark.parametrize("body,field,spec_verdict", BAD_BATCHES)
def test_bad_batches_are_refused_and_create_nothing(api, place, body, field, spec_verdict):
    project_id, task_id = place
    before = api.job_count(project_id, task_id)
    response = api.post(f"/htc/projects/{project_id}/tasks/{task_id}/jobs/batch", json=body, request_valid=spec_verdict)
    assert_bad_request(response, field)
    assert api.job_count(project_id, task_id) == before


def test_malformed_json_is_a_400_and_creates_nothing(api, place):
    project_id, task_id = place
    before = (
        len(api.ok("GET", "/htc/projects", params={"pageSize": 10000})["items"]),
        api.job_count(project_id, task_id),
    )
    for path in ("/htc/projects", f"/htc/projects/{project_id}/tasks/{task_id}/jobs/batch"):
        response = api.post(
            path, data=b'[{"htcJobDefinition": ', headers={"Content-Type": "application/json"}, request_valid=None
        )
        assert_bad_request(response, "body")
        assert "JSON" in response.json()["errorDescription"]
    after = (
        len(api.ok("GET", "/htc/projects", params={"pageSize": 10000})["items"]),
        api.job_count(project_id, task_id),
    )
    assert after == before


@pytest.mark.parametrize(
    "body,field",
    [
        ({"projectName": "x"}, "projectDescription"),
        ({"projectName": 5, "projectDescription": "x"}, "projectName"),
        ({"projectName": "x", "projectDescription": "y", "regions": ["NOWHERE"]}, "regions"),
        (
            {"projectName": "x", "projectDescription": "y", "regionSettings": [{"computeSettings": {}}]},
            "storageSettings",
        ),
    ],
)
def test_bad_projects_are_refused(api, body, field):
    before = len(api.ok("GET", "/htc/projects", params={"pageSize": 10000})["items"])
    assert_bad_request(api.post("/htc/projects", json=body, request_valid=False), field)
    assert len(api.ok("GET", "/htc/projects", params={"pageSize": 10000})["items"]) == before


def test_bad_tasks_and_task_updates_are_refused(api, place):
    project_id, task_id = place
    assert_bad_request(
        api.post(f"/htc/projects/{project_id}/tasks", json={"taskDescription": "d"}, request_valid=False), "taskName"
    )
    assert len(api.ok("GET", f"/htc/projects/{project_id}/tasks")["items"]) == 1
    assert_bad_request(
        api.patch(f"/htc/projects/{project_id}/tasks/{task_id}", json={"lifecycleStatus": "GONE"}, request_valid=False),
        "lifecycleStatus",
    )
    assert_bad_request(
        api.patch(f"/htc/projects/{project_id}/tasks/{task_id}", json={"lifecycleStatus": "DELETED"}), "lifecycleStatus"
    )
    assert api.ok("GET", f"/htc/projects/{project_id}/tasks/{task_id}")["lifecycleStatus"] == "ACTIVE"


@pytest.mark.parametrize(
    "params,field,spec_verdict",
    [
        ({"status": "FINISHED"}, "status", False),
        ({"viewType": "EVERYTHING"}, "viewType", False),
        ({"pageSize": "many"}, "pageSize", False),
        ({"pageSize": 0}, "pageSize", True),  # the spec sets no minimum
        ({"pageIndex": "not-a-page"}, "pageIndex", True),  # opaque to the spec; this server never issued it
    ],
)
def test_bad_list_parameters_are_refused(api, place, params, field, spec_verdict):
    project_id, task_id = place
    response = api.get(f"/htc/projects/{project_id}/tasks/{task_id}/jobs", params=params, request_valid=spec_verdict)
    assert_bad_request(response, field)


@pytest.mark.parametrize("file_path", ["../escape.txt", "/etc/passwd", "a/../../b", "a/./b", "a\\b"])
def test_presigned_urls_refuse_paths_outside_their_prefix(api, place, file_path):
    project_id, task_id = place
    for path in (
        f"/htc/projects/{project_id}/storage/presigned-url",
        f"/htc/projects/{project_id}/tasks/{task_id}/storage/presigned-url",
    ):
        assert_bad_request(api.get(path, params={"filePath": file_path}), "filePath")
    assert_bad_request(api.get(f"/htc/projects/{project_id}/storage/presigned-url", request_valid=False), "filePath")


def test_bad_path_values_are_refused(api, place):
    project_id, task_id = place
    assert_bad_request(api.get(f"/htc/projects/{project_id}/storage/token/MARS_1", request_valid=False), "region")
    assert_bad_request(
        api.post(f"/htc/projects/{project_id}/container-registry/repo/Bad_Name", request_valid=None), "repoName"
    )
    assert api.ok("GET", f"/htc/projects/{project_id}")["repositories"] == []


def test_unknown_ids_are_404(api, place):
    project_id, task_id = place
    missing = "00000000-0000-0000-0000-000000000000"
    oauth_style = [
        api.get(f"/htc/projects/{missing}"),
        api.get(f"/htc/projects/{project_id}/tasks/{missing}"),
        api.delete(f"/htc/projects/{project_id}/tasks/{missing}"),
        api.get(f"/htc/projects/{missing}/storage/token"),
        api.get(f"/htc/projects/{project_id}/tasks/{missing}/storage/token"),
        api.post(f"/htc/projects/{missing}/container-registry/repo/x"),
        api.post(f"/htc/projects/{project_id}/tasks/{missing}/jobs/batch", json=batch()),
    ]
    for response in oauth_style:
        assert response.status_code == 404 and response.json()["error"] == "NOT_FOUND", response.text
    request_error_style = [
        api.get(f"/htc/projects/{project_id}/tasks/{task_id}/jobs/{missing}:0"),
        api.get(f"/htc/projects/{project_id}/tasks/{task_id}/jobs/{missing}:0/events"),
        api.get(f"/htc/projects/{project_id}/tasks/{task_id}/jobs/{missing}:0/logs"),
        api.get(f"/htc/projects/{project_id}/tasks/{missing}/jobs"),
    ]
    for response in request_error_style:
        assert response.status_code == 404 and response.json()["errorType"] == "NOT_FOUND", response.text
    cancel = api.post(f"/htc/projects/{project_id}/tasks/{missing}/jobs/cancel")
    assert cancel.status_code == 404 and cancel.content == b""  # the spec documents no body here


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
_fields = st.fixed_dictionaries(
    {},
    optional={
        "batchSize": _json | st.integers(-5, 12) | st.sampled_from([1000, 1001]),
        "jobName": _json,
        "retryStrategy": _json | st.fixed_dictionaries({"maxRetries": st.integers(-2, 12)}),
        "htcJobDefinition": _json
        | st.fixed_dictionaries(
            {"imageName": st.text(max_size=20)},
            optional={
                "execTimeoutSeconds": st.integers(0, 2_000_000),
                "envs": _json,
                "commands": _json,
                "maxVCpus": _json,
            },
        ),
    },
)


@settings(max_examples=60, deadline=None)
@given(body=st.one_of(_json, st.lists(_fields, min_size=1, max_size=2)))
def test_arbitrary_batch_bodies_never_crash_or_half_apply(api, place, body):
    project_id, task_id = place
    before = api.job_count(project_id, task_id)
    response = api.post(
        f"/htc/projects/{project_id}/tasks/{task_id}/jobs/batch",
        data=json.dumps(body),
        headers={"Content-Type": "application/json"},
        request_valid=None,
    )
    assert response.status_code in (200, 400), response.text
    created = api.job_count(project_id, task_id) - before
    if response.status_code == 400:
        assert created == 0
    else:
        assert created == sum(item.get("batchSize", 1) for item in body)
        api.post(f"/htc/projects/{project_id}/tasks/{task_id}/jobs/cancel")
