"""Tasks: a project's units of work, each with its jobs and its storage folder."""

from __future__ import annotations

from fastapi import APIRouter, Request

from .. import views
from ..schemas import TaskCreate, TaskUpdate
from .dependencies import BackendDep
from .paging import page

router = APIRouter()

TASK = "/htc/projects/{projectId}/tasks/{taskId}"


@router.post("/htc/projects/{projectId}/tasks")
def create_task(backend: BackendDep, projectId: str, body: TaskCreate) -> dict:
    return views.task_view(backend.create_task(projectId, body.taskName, body.taskDescription))


@router.get("/htc/projects/{projectId}/tasks")
def list_tasks(
    request: Request, backend: BackendDep, projectId: str, pageIndex: str | None = None, pageSize: str = "100"
) -> dict:
    return page(request, backend.list_tasks(projectId), pageIndex, pageSize, views.task_view)


@router.get(TASK)
def get_task(backend: BackendDep, projectId: str, taskId: str) -> dict:
    return views.task_view(backend.task(projectId, taskId))


@router.patch(TASK)
def update_task(backend: BackendDep, projectId: str, taskId: str, body: TaskUpdate) -> dict:
    return views.task_view(backend.update_task(projectId, taskId, body.lifecycleStatus))


@router.delete(TASK)
def delete_task(backend: BackendDep, projectId: str, taskId: str) -> dict:
    return views.task_view(backend.delete_task(projectId, taskId))
