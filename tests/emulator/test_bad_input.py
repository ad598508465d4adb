"""Bad and hostile input anywhere in the API: a 400 naming the problem (404 for unknown ids), never a 500,
nothing stored, nothing broken later.

Where the spec itself refuses the request, the test also checks that it does
(``request_valid=False``), so the emulator and the document agree. Bad input
particular to one resource is tested with it (``test_jobs.py``, ``test_projects.py``...).
"""

from __future__ import annotations

import json

import pytest

from htc_emulator.errors import InvalidRequest
from htc_emulator.validation import MAX_BODY_BYTES, MAX_JOB_BATCH_BODY_BYTES
from tests.support.partial_bodies import answer_before_the_body_ends
from tests.support.refusals import DEFINITION, assert_bad_request, assert_refused, batch, counts, job_batch


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


# --- request bodies past their operation's limit --------------------------------------------


def padded(body, size: int) -> bytes:
    """``body`` as JSON, padded with whitespace (still the same JSON) to ``size`` bytes."""
    text = json.dumps(body).encode()
    return text + b" " * (size - len(text))


def test_request_bodies_past_their_operations_limit_are_refused_and_change_nothing(api, runnable_place):
    project_id, task_id = runnable_place
    before = counts(api, project_id, task_id)
    project = {"projectName": "p", "projectDescription": "d"}
    json_body = {"Content-Type": "application/json"}
    for size in (MAX_BODY_BYTES + 1, 50 << 20):
        refused = api.post("/htc/projects", data=padded(project, size), headers=json_body, request_valid=None)
        assert refused.status_code == 413 and refused.json()["errorType"] == "PAYLOAD_TOO_LARGE", refused.text
        assert str(MAX_BODY_BYTES) in refused.json()["message"]
    # Sent without a length, a body is counted as it is read and refused once past the limit.
    bearer = {**json_body, "Authorization": f"Bearer {api.token}"}
    status, body = answer_before_the_body_ends(
        api.emu.api_url + "/htc/projects", bearer, chunk=padded(project, MAX_BODY_BYTES + 1)
    )
    assert status == 413 and str(MAX_BODY_BYTES) in body["message"]
    # A batch request may be larger: up to 100 batch definitions.
    jobs = f"/htc/projects/{project_id}/tasks/{task_id}/jobs/batch"
    accepted = api.post(jobs, data=padded(batch(), MAX_BODY_BYTES * 2), headers=json_body, request_valid=None)
    assert accepted.status_code == 200, accepted.text
    refused = api.post(jobs, data=padded(batch(), MAX_JOB_BATCH_BODY_BYTES + 1), headers=json_body, request_valid=None)
    assert refused.status_code == 413 and str(MAX_JOB_BATCH_BODY_BYTES) in refused.json()["message"]
    after = counts(api, project_id, task_id)
    assert after == (before[0], before[1], before[2] + 1)  # the one accepted batch, nothing else


# --- text that could not be served back --------------------------------------------------


LONE_SURROGATE = "\ud800"


def raw_json(api, method: str, path: str, body, **kwargs):
    # json.dumps writes a lone surrogate as the escape "\ud800", which JSON allows.
    return api.request(
        method, path, data=json.dumps(body), headers={"Content-Type": "application/json"}, request_valid=None, **kwargs
    )


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
def test_text_that_cannot_be_served_is_refused_and_stores_nothing(api, runnable_place, where, body, field):
    project_id, task_id = runnable_place
    path = {
        "tasks": f"/htc/projects/{project_id}/tasks",
        "jobs/batch": f"/htc/projects/{project_id}/tasks/{task_id}/jobs/batch",
    }.get(where, where)
    before = counts(api, project_id, task_id)
    assert_refused(raw_json(api, "POST", path, body), field, "surrogate")
    assert counts(api, project_id, task_id) == before


def test_the_model_refuses_to_store_what_it_could_not_serve(emulator, runnable_place):
    """The guard under the HTTP layer: whoever calls the model, nothing unservable is stored."""
    project_id, task_id = runnable_place
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
def test_query_integers_are_ascii_digits_of_sensible_length(api, runnable_place, name, value):
    project_id, task_id = runnable_place
    for path in (
        "/htc/projects",
        f"/htc/projects/{project_id}/tasks/{task_id}/jobs",
        f"/htc/projects/{project_id}/tasks/{task_id}/group-summary-statistics",
    ):
        assert_refused(api.get(path, params={name: value}, request_valid=None), name)


# --- unknown ids --------------------------------------------------------------------------


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
