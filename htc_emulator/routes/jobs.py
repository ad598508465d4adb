"""Jobs: submitted in batches to a task, listed and read with their events and logs, cancelled."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import Response

from .. import views
from ..errors import NotFound
from ..schemas import JobStatus, JobSubmitRequest, ViewType
from ..validation import MAX_BATCHES_PER_REQUEST, group_name, query_integer
from .dependencies import BackendDep, ImagesDep
from .paging import MAX_PAGE_SIZE, body, page

router = APIRouter()

JOBS = "/htc/projects/{projectId}/tasks/{taskId}/jobs"


@router.post(f"{JOBS}/batch")
def submit_jobs(
    backend: BackendDep,
    images: ImagesDep,
    projectId: str,
    taskId: str,
    body: Annotated[list[JobSubmitRequest], Body(max_length=MAX_BATCHES_PER_REQUEST)],
    group: str | None = None,
) -> list:
    group = group_name(group)
    batches = [b.model_dump(exclude_unset=True) for b in body]
    backend.live_task(projectId, taskId)  # an unknown or deleted task is a 404 before any image is looked at
    images.require_ready(projectId, batches)
    submitted = backend.submit(projectId, taskId, group, batches)
    return [
        views.submit_view(
            batch, project_id=projectId, task_id=taskId, parent_job_id=parent, group=group, received=received
        )
        for batch, (parent, received) in zip(batches, submitted, strict=True)
    ]


@router.get(JOBS)
def list_jobs(
    request: Request,
    backend: BackendDep,
    projectId: str,
    taskId: str,
    group: str | None = None,
    jobId: list[str] | None = Query(None),
    status: JobStatus | None = None,
    viewType: ViewType = "FULL",
    pageIndex: str | None = None,
    pageSize: str = "100",
) -> dict:
    jobs, as_of = backend.find_jobs(projectId, taskId, group=group_name(group), job_ids=jobId, status=status)
    return page(request, jobs, pageIndex, pageSize, lambda j: views.job_view(j, as_of, viewType))


@router.get(f"{JOBS}/{{jobId}}")
def get_job(backend: BackendDep, projectId: str, taskId: str, jobId: str) -> dict:
    return views.job_view(*backend.seen_job(projectId, taskId, jobId))


@router.get(f"{JOBS}/{{jobId}}/events")
def get_job_events(
    request: Request,
    backend: BackendDep,
    projectId: str,
    taskId: str,
    jobId: str,
    pageIndex: str | None = None,
    pageSize: str = "100",
) -> dict:
    job, events = backend.job_events(projectId, taskId, jobId)
    return page(request, events, pageIndex, pageSize, lambda e: views.event_view(job, e))


@router.get(f"{JOBS}/{{jobId}}/logs")
def get_job_logs(
    request: Request,
    backend: BackendDep,
    projectId: str,
    taskId: str,
    jobId: str,
    pageIndex: str | None = None,
    pageSize: str = "100",
    sort: str = Query("desc", pattern="^(asc|desc)$"),
) -> dict:
    if not backend.profile.cloudwatch_log_pages:
        lines = backend.job_logs(projectId, taskId, jobId, newest_first=sort == "desc")
        return page(request, lines, pageIndex, pageSize, views.log_view)
    size = query_integer("pageSize", pageSize, 1, MAX_PAGE_SIZE)
    lines, following = backend.job_log_page(projectId, taskId, jobId, pageIndex, size, newest_first=sort == "desc")
    return body(request, [views.log_view(line) for line in lines], following)


@router.post(f"{JOBS}/cancel")
def cancel_jobs(backend: BackendDep, projectId: str, taskId: str, group: str | None = None) -> Response:
    group = group_name(group)
    try:
        backend.cancel(projectId, taskId, group)
    except NotFound:
        return Response(status_code=404)  # the spec gives this 404 an empty content map: no body
    return Response(status_code=200)
