"""Jobs through the API: batches submitted, echoed, listed, filtered, paged, read, cancelled; bad batches refused.

How jobs then run (statuses, environment, exit codes, timeouts, retries, logs) is
``test_job_lifecycle.py``; how their processes are contained, ``test_job_processes.py``.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from htc_emulator import running
from tests.support.contract import NOOP
from tests.support.refusals import DEFINITION, assert_bad_request, assert_refused, batch, counts, job_batch


def test_job_submit_list_get_events_logs_cancel(api, noop_image):
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
    api.wait_image_ready(project_id, NOOP["imageName"])
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
    cancel = api.post(f"/htc/projects/{project_id}/tasks/{task_id}/jobs/cancel", params={"group": "g1"})
    assert cancel.status_code == 200 and cancel.content == b""


@pytest.mark.slow
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


def test_a_batch_without_group_reads_back_with_group_null(api, runnable_place):
    """A third-party client reads a batch's and a job's `group` unconditionally."""
    project_id, task_id = runnable_place
    api.wait_image_ready(project_id, "opencv-htc-tutorial:v1")
    body = [{"htcJobDefinition": {"imageName": "opencv-htc-tutorial:v1", "commands": ["true"]}}]
    [echo] = api.ok("POST", f"/htc/projects/{project_id}/tasks/{task_id}/jobs/batch", json=body)
    assert echo["group"] is None and echo["jobName"] is None and echo["batchSize"] == 1
    job = api.ok("GET", f"/htc/projects/{project_id}/tasks/{task_id}/jobs/{echo['parentJobId']}:0")
    assert "group" in job and job["group"] is None
    assert {"failureCode", "providerJobId", "jobExecutionEnvironment", "startedAt"} <= set(job)


# --- bad batches ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["AWS_REGION", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"])
def test_environment_names_beginning_with_aws_are_reserved(api, name):
    project_id = api.new_project()
    task_id = api.new_task(project_id)
    body = [{"htcJobDefinition": {"imageName": "noop:v1", "envs": [{"name": name, "value": "x"}]}}]
    response = api.post(f"/htc/projects/{project_id}/tasks/{task_id}/jobs/batch", json=body, request_valid=None)
    assert response.status_code == 400, response.text
    assert name in response.json()["message"]
    assert api.job_count(project_id, task_id) == 0


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
    ({"htcJobDefinition": DEFINITION}, "body", False),
    (batch() + batch(batchSize=5000), "batchSize", False),
]


@pytest.mark.parametrize("body,field,spec_verdict", BAD_BATCHES)
def test_bad_batches_are_refused_and_create_nothing(api, place, body, field, spec_verdict):
    project_id, task_id = place
    before = api.job_count(project_id, task_id)
    response = api.post(f"/htc/projects/{project_id}/tasks/{task_id}/jobs/batch", json=body, request_valid=spec_verdict)
    assert_bad_request(response, field)
    assert api.job_count(project_id, task_id) == before


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


def test_an_empty_group_is_refused_everywhere_and_cancels_nothing(api, runnable_place):
    project_id, task_id = runnable_place
    base = f"/htc/projects/{project_id}/tasks/{task_id}"
    sleeper = {**DEFINITION, "commands": ["python", "-c", "import time; time.sleep(120)"], "execTimeoutSeconds": 600}
    parent = api.submit(project_id, task_id, sleeper, group="keep")
    before = counts(api, project_id, task_id)
    try:
        assert_refused(
            api.post(f"{base}/jobs/batch", params={"group": ""}, json=[job_batch()], request_valid=None), "group"
        )
        assert_refused(api.get(f"{base}/jobs", params={"group": ""}, request_valid=None), "group")
        assert_refused(
            api.get(f"{base}/group-summary-statistics", params={"group": ["keep", ""]}, request_valid=None), "group"
        )
        assert_refused(api.post(f"{base}/jobs/cancel", params={"group": ""}, request_valid=None), "group")
        assert counts(api, project_id, task_id) == before
        assert not api.emu.backend.jobs[f"{parent}:0"].cancel_requested
    finally:
        api.post(f"{base}/jobs/cancel", params={"group": "keep"})


# --- bounded requests ----------------------------------------------------------------------


def test_more_than_100_batch_definitions_are_refused(api, runnable_place):
    project_id, task_id = runnable_place
    before = counts(api, project_id, task_id)
    response = api.post(
        f"/htc/projects/{project_id}/tasks/{task_id}/jobs/batch",
        json=[job_batch() for _ in range(101)],
        request_valid=None,
    )
    assert_refused(response, "body", "100")
    assert counts(api, project_id, task_id) == before


def test_a_task_holds_a_bounded_number_of_jobs(client_for):
    with running(max_jobs_per_task=5, concurrency=1, profile="ideal") as emu:  # about the bound, not the platform
        api = client_for(emu)
        project_id = api.new_project()
        task_id = api.new_task(project_id)
        path = f"/htc/projects/{project_id}/tasks/{task_id}/jobs/batch"
        api.ok("POST", path, json=[job_batch(batchSize=3)])
        response = api.post(path, json=[job_batch(batchSize=1), job_batch(batchSize=2)])
        assert_refused(response, "batchSize", "at most 5 jobs")
        assert len(emu.backend.task_jobs(project_id, task_id)) == 3
        api.ok("POST", path, json=[job_batch(batchSize=2)])  # up to the ceiling is fine


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


@pytest.mark.slow
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
