"""Statistics of a task's jobs: counts by status, for the task and per group, and its groups."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request

from .. import views
from ..validation import group_names
from .dependencies import BackendDep
from .paging import page

router = APIRouter()

TASK = "/htc/projects/{projectId}/tasks/{taskId}"


@router.get(f"{TASK}/group-summary-statistics")
def group_statistics(
    request: Request,
    backend: BackendDep,
    projectId: str,
    taskId: str,
    group: list[str] | None = Query(None),
    pageIndex: str | None = None,
    pageSize: str = "100",
) -> dict:
    summaries = [
        views.group_statistics_view(name, counts)
        for name, counts in backend.group_statistics(projectId, taskId, group_names(group))
    ]
    return page(request, summaries, pageIndex, pageSize)


@router.get(f"{TASK}/summary-statistics")
def task_statistics(backend: BackendDep, projectId: str, taskId: str) -> dict:
    return views.task_statistics_view(backend.task_statistics(projectId, taskId))


@router.get(f"{TASK}/groups")
def list_groups(
    request: Request,
    backend: BackendDep,
    projectId: str,
    taskId: str,
    pageIndex: str | None = None,
    pageSize: str = "100",
) -> list:
    # The spec documents a bare list of names (no `next`), paged by the query.
    return page(request, backend.groups(projectId, taskId), pageIndex, pageSize)["items"]
