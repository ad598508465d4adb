"""Tasks: create, read, list (paged), archive and reactivate, delete; bad task input refused."""

from __future__ import annotations

from tests.support.refusals import assert_bad_request


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


def test_issued_page_indexes_still_work(api, runnable_place):
    project_id, _ = runnable_place
    for name in ("a", "b", "c"):
        api.ok("POST", f"/htc/projects/{project_id}/tasks", json={"taskName": name, "taskDescription": "d"})
    first = api.ok("GET", f"/htc/projects/{project_id}/tasks", params={"pageSize": "2"})
    second = api.ok("GET", first["next"])
    assert len(first["items"]) == 2 and second["items"]
