"""Statistics of a task's jobs: status counts for the task and per group, and the task's groups."""

from __future__ import annotations

from tests.support.contract import NOOP


def test_group_and_task_statistics_count_a_finished_batch(api, noop_image):
    project_id = api.new_project(repositories=["noop"])
    task_id = api.new_task(project_id)
    api.submit(project_id, task_id, NOOP, batch_size=3, group="g1")
    api.wait_terminal(project_id, task_id, 3)
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
