"""get_or_create_task: code that runs twice finds the task it made, and never a deleted one."""

import htc_helpers as htc
from tests.helpers.support import new_project


def test_a_second_call_finds_the_task_the_first_made(session):
    project_id = new_project(session)
    first, created = htc.get_or_create_task(session, project_id, "sweep", "one scale factor")
    again, created_again = htc.get_or_create_task(session, project_id, "sweep", "one scale factor")
    other, other_created = htc.get_or_create_task(session, project_id, "another")
    assert (created, created_again, other_created) == (True, False, True)
    assert again["taskId"] == first["taskId"] != other["taskId"]
    tasks = htc.paginate(session, f"/htc/projects/{project_id}/tasks")
    assert sorted(t["taskName"] for t in tasks) == ["another", "sweep"]
    assert first["taskDescription"] == "one scale factor"


def test_a_deleted_task_is_not_found_again(session):
    project_id = new_project(session)
    first, _ = htc.get_or_create_task(session, project_id, "sweep")
    session.delete(f"/htc/projects/{project_id}/tasks/{first['taskId']}")
    second, created = htc.get_or_create_task(session, project_id, "sweep")
    assert created and second["taskId"] != first["taskId"]
