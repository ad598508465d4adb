"""Policies: project and workspace vCPU limits (obeyed by the scheduler), dimensions, task retention."""

from __future__ import annotations

import datetime as dt
import threading
import time

import boto3
import pytest
import requests
from botocore.exceptions import ClientError

from htc_emulator import running

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


@pytest.mark.slow
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


@pytest.mark.slow
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
    api.wait_image_ready(project_id, SLEEPER["imageName"])  # else the image, not the dimension, is refused
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


@pytest.mark.slow
def test_retention_archives_then_deletes_idle_tasks_with_their_storage(client_for):
    """The retention rule, applied at chosen instants of the emulator's clock (as the sweeper thread applies it at
    each tick), so that what it finds depends on the policy and the tasks' activity, not on how fast the machine is
    (the thread itself: the next test)."""
    with running() as emu:  # an hour lasts an hour: the sweeper thread finds nothing due by itself
        api, hour = client_for(emu), dt.timedelta(hours=1)
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
        tasks = emu.backend.tasks

        def activity(task_id: str) -> None:
            """A PATCH to ACTIVE is activity: it keeps a task ACTIVE an hour longer."""
            before = tasks[task_id].last_active_at
            while tasks[task_id].last_active_at == before:  # the clock moves on: activity is later than before
                api.ok("PATCH", f"/htc/projects/{project_id}/tasks/{task_id}", json={"lifecycleStatus": "ACTIVE"})

        seen = []
        activity(kept)
        # Between the two tasks' last activity, an hour on: the idle one is due for archiving, the other is not.
        emu.backend.apply_retention(
            tasks[idle].last_active_at + hour + (tasks[kept].last_active_at - tasks[idle].last_active_at) / 2, hour
        )
        seen.append(api.ok("GET", f"/htc/projects/{project_id}/tasks/{idle}")["lifecycleStatus"])
        assert api.ok("GET", f"/htc/projects/{project_id}/tasks/{kept}")["lifecycleStatus"] == "ACTIVE"
        activity(kept)
        # An hour after it was archived the idle task is due for deletion; the other one was active since.
        emu.backend.apply_retention(tasks[idle].archived_at + hour, hour)
        seen.append(api.ok("GET", f"/htc/projects/{project_id}/tasks/{idle}")["lifecycleStatus"])
        assert seen == ["ARCHIVED", "DELETED"]
        assert emu.storage.delete_prefix(f"projects/{project_id}/tasks/{idle}/") == 0
        assert api.ok("GET", f"/htc/projects/{project_id}/tasks/{kept}")["lifecycleStatus"] == "ACTIVE"
        assert api.delete(policy_path).status_code == 204 and api.get(policy_path).status_code == 404


@pytest.mark.slow
def test_the_retention_sweeper_applies_the_policies_on_the_emulators_clock(client_for):
    with running(time_scale=0.0005) as emu:  # an hour lasts 1.8 s
        api = client_for(emu)
        project_id = api.new_project()
        task_id = api.new_task(project_id)
        api.request(
            "PUT", f"/htc/projects/{project_id}/task-retention-policy", json={"archiveAfter": 1, "deleteAfter": 1}
        )
        deadline = time.monotonic() + 60
        while (task := api.ok("GET", f"/htc/projects/{project_id}/tasks/{task_id}"))["lifecycleStatus"] != "DELETED":
            assert time.monotonic() < deadline, task
            time.sleep(0.1)
        assert task["archivedAt"] <= task["deletedAt"]


def test_the_retention_sweep_and_a_reactivation_are_decided_once(client_for, monkeypatch):
    """Issue 19: reactivating an archived task while the sweep deleted its files was accepted (200), and so were an
    upload and a new job; then the task was deleted anyway. Now, once the sweep has decided, every change is refused
    and nothing it accepted is lost; a reactivation that comes first keeps the task."""
    with running() as emu:  # an hour lasts an hour: the sweeper thread finds nothing due by itself
        api = client_for(emu)
        project_id = api.new_project(repositories=["opencv-htc-tutorial"])
        doomed, kept = api.new_task(project_id), api.new_task(project_id)
        task_path = f"/htc/projects/{project_id}/tasks/{{}}"
        credentials = api.ok("GET", task_path.format(doomed) + "/storage/token")["credentials"]
        s3 = s3_client(emu, credentials)
        for task_id in (doomed, kept):
            api.ok("PATCH", task_path.format(task_id), json={"lifecycleStatus": "ARCHIVED"})
        # Archived tasks are deleted after an hour; nothing is archived by the policy (0: never).
        api.request(
            "PUT", f"/htc/projects/{project_id}/task-retention-policy", json={"archiveAfter": 0, "deleteAfter": 1}
        )
        # The task reactivated before the sweep looks at it is kept.
        api.ok("PATCH", task_path.format(kept), json={"lifecycleStatus": "ACTIVE"})

        deleting, release = threading.Event(), threading.Event()
        delete_prefix = emu.storage.delete_prefix

        def slow_delete_prefix(prefix: str) -> int:
            deleting.set()
            assert release.wait(60)
            return delete_prefix(prefix)

        monkeypatch.setattr(emu.storage, "delete_prefix", slow_delete_prefix)
        three_hours_on = dt.datetime.now(dt.UTC) + dt.timedelta(hours=3)
        sweep = threading.Thread(target=emu.backend.apply_retention, args=(three_hours_on, dt.timedelta(hours=1)))
        sweep.start()
        try:
            assert deleting.wait(60)
            reactivated = api.request("PATCH", task_path.format(doomed), json={"lifecycleStatus": "ACTIVE"})
            assert reactivated.status_code == 400 and "deleted" in reactivated.json()["message"], reactivated.text
            with pytest.raises(ClientError) as upload:
                s3.put_object(Bucket=emu.bucket, Key=f"projects/{project_id}/tasks/{doomed}/late.txt", Body=b"x")
            assert upload.value.response["Error"]["Code"] == "ExpiredToken"
            assert api.get(task_path.format(doomed) + "/storage/token").status_code == 404
            body = [{"jobName": "late", "htcJobDefinition": SLEEPER}]
            assert api.post(task_path.format(doomed) + "/jobs/batch", json=body).status_code in (400, 404)
            assert api.ok("GET", task_path.format(doomed))["lifecycleStatus"] == "ARCHIVED"  # until it is gone
        finally:
            release.set()
            sweep.join(60)
        assert api.ok("GET", task_path.format(doomed))["lifecycleStatus"] == "DELETED"
        assert api.job_count(project_id, doomed) == 0
        assert delete_prefix(f"projects/{project_id}/tasks/{doomed}/") == 0
        assert api.ok("GET", task_path.format(kept))["lifecycleStatus"] == "ACTIVE"


def s3_client(emu, credentials: dict):
    return boto3.session.Session(
        aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=credentials["AWS_SESSION_TOKEN"],
    ).client("s3", endpoint_url=emu.s3_endpoint, region_name="us-east-1")


def test_workspace_retention_policy(api):
    path = "/htc/workspaces/emulator-workspace/task-retention-policy"
    assert api.get("/htc/workspaces/other/task-retention-policy").status_code == 404
    refused = api.request("PUT", path, json={"archiveAfter": -1, "deleteAfter": 0}, request_valid=False)
    assert refused.status_code == 400 and "archiveAfter" in refused.json()["message"]
