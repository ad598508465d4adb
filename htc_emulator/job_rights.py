"""What a job token may do: what a running job needs, and nothing more, while its job lives.

A job reads its own task and jobs (statuses, events, logs, statistics)
and gets storage credentials: read-write for its task's folder, read-only
for the project's shared files (see :mod:`htc_emulator.storage_rights`). Every
other route answers 403 to a job token: it cannot create tasks, change
its project, create repositories, fetch the registry password, presign
uploads or submit jobs. The token stops working (401) once its task is
deleted, or :data:`JOB_TOKEN_AFTERLIFE_SECONDS` after its job ended, and so
do the storage credentials it got (:func:`job_is_live`, asked by the S3 gate).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import TYPE_CHECKING

# The module, not its names: the model imports this module too, to bind a job's storage credentials to its token.
from . import models
from .auth import AuthenticationError, PermissionDenied, Principal

if TYPE_CHECKING:
    from .models import Backend

# Long enough for a job's last request to land, short enough that a
# leaked token is of little use.
JOB_TOKEN_AFTERLIFE_SECONDS = 60

# (method, path as the spec writes it); {projectId} and {taskId} must be the token's own.
JOB_TOKEN_RIGHTS = (
    ("GET", "/htc/projects/{projectId}/tasks/{taskId}"),
    ("GET", "/htc/projects/{projectId}/tasks/{taskId}/jobs"),
    ("GET", "/htc/projects/{projectId}/tasks/{taskId}/jobs/{jobId}"),
    ("GET", "/htc/projects/{projectId}/tasks/{taskId}/jobs/{jobId}/events"),
    ("GET", "/htc/projects/{projectId}/tasks/{taskId}/jobs/{jobId}/logs"),
    ("GET", "/htc/projects/{projectId}/tasks/{taskId}/summary-statistics"),
    ("GET", "/htc/projects/{projectId}/tasks/{taskId}/group-summary-statistics"),
    ("GET", "/htc/projects/{projectId}/tasks/{taskId}/groups"),
    ("GET", "/htc/projects/{projectId}/tasks/{taskId}/storage/token"),
    ("GET", "/htc/projects/{projectId}/tasks/{taskId}/storage/token/{region}"),
    ("GET", "/htc/projects/{projectId}/tasks/{taskId}/storage/tokens"),
    ("GET", "/htc/projects/{projectId}/tasks/{taskId}/storage/regional-storage"),
    ("GET", "/htc/projects/{projectId}/storage/token"),
    ("GET", "/htc/projects/{projectId}/storage/token/{region}"),
    ("GET", "/htc/projects/{projectId}/storage/tokens"),
)


def _pattern(template: str) -> re.Pattern:
    return re.compile(re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template)) + "/?")


_RIGHTS = tuple((method, _pattern(template)) for method, template in JOB_TOKEN_RIGHTS)


def authorize(principal: Principal, method: str, path: str) -> None:
    """Refuse (403) a job token's request unless the table grants it for the token's own project and task."""
    for allowed_method, pattern in _RIGHTS:
        match = pattern.fullmatch(path)
        if match is None or method != allowed_method:
            continue
        if match["projectId"] != principal.project_id:
            raise PermissionDenied("job tokens may only access their own project")
        if "taskId" in match.groupdict() and match["taskId"] != principal.task_id:
            raise PermissionDenied("job tokens may only access their own task")
        return
    raise PermissionDenied(f"a job token may not call {method} {path}")


def require_live_job(principal: Principal, backend: Backend, at: dt.datetime | None = None) -> None:
    """Refuse (401) a job token whose task was deleted or whose job ended a while ago."""
    task, job = backend.token_subjects(principal.task_id, principal.job_id)
    if task is None or task.project_id != principal.project_id or not task.live:
        raise AuthenticationError("job token expired: its task was deleted")
    if job is None or job.task_id != task.task_id:
        raise AuthenticationError("job token for a job this platform never ran")
    last = job.events[-1]
    if (
        last.status in models.TERMINAL
        and ((at or models.now()) - last.at).total_seconds() > JOB_TOKEN_AFTERLIFE_SECONDS
    ):
        raise AuthenticationError("job token expired: its job has ended")


def job_is_live(principal: Principal, backend: Backend) -> bool:
    """Whether the job's token is still accepted (what the storage credentials it got last as long as)."""
    try:
        require_live_job(principal, backend)
    except AuthenticationError:
        return False
    return True
