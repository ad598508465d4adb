"""What storage a caller's credentials reach, and for how long: the platform's scoping rule.

Beside :mod:`htc_emulator.job_rights` (what a job token may call), this says
what the storage credentials handed out by the storage routes may touch
(the S3 gate, :mod:`htc_emulator.s3_gate`, enforces it on every request):

- a task's credentials: its folder read-write, the project's shared files read-only;
- a project's credentials: the project's whole folder for its user; for a job,
  only the shared files, read-only;
- a job's credentials end no later than its token: at its expiry, and as soon as the
  token is refused (its job ended a while ago, its task deleted).

Storage is offered in AWS regions only: the emulator's storage is S3.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .auth import Principal
from .errors import InvalidRequest, NotFound
from .schemas import SupportedRescaleRegion
from .storage import CREDENTIAL_LIFETIME, InvalidObjectKey, Storage, project_shared_prefix, safe_relative_key

if TYPE_CHECKING:
    from .models import Project, Task

STORAGE_REGIONS = tuple(r for r in SupportedRescaleRegion.__args__ if r.startswith("AWS_"))


@dataclass(frozen=True)
class StorageGrant:
    """Credentials for one region of a project's or a task's storage, and where that storage is."""

    region: str
    shared_path: str  # the project's shared files, as an s3:// URI
    storage_path: str  # the task's folder for a task's grant, the shared files for a project's
    credentials: dict[str, str]
    expiration: dt.datetime


@dataclass(frozen=True)
class PresignedUpload:
    """A URL that uploads one object, until ``expiration``."""

    url: str
    expiration: dt.datetime
    bucket: str
    region: str


def scope(project: Project, task: Task | None, principal: Principal) -> tuple[list[str], list[str], float]:
    """The key prefixes the caller may read and read-write, and the credentials' lifetime in seconds."""
    shared = project_shared_prefix(project.project_id)
    if task is not None:
        read, write = [shared], [task.folder_path]
    elif principal.is_job:
        read, write = [shared], []
    else:
        read, write = [], [project.folder_path]
    lifetime = CREDENTIAL_LIFETIME
    if principal.is_job and principal.expires_at is not None:
        lifetime = max(1.0, min(lifetime, principal.expires_at - time.time()))
    return read, write, lifetime


def grant(
    storage: Storage,
    project: Project,
    task: Task | None,
    principal: Principal,
    region: str,
    alive: Callable[[], bool] | None = None,
) -> StorageGrant:
    """Scoped credentials for the project's (or the task's) storage in ``region``; 404 where it has none.

    ``alive`` (for a job: whether its token is still accepted) is asked on every S3 request they sign.
    """
    if region not in project.regions:
        raise NotFound(f"project {project.project_id} has no storage in region {region}")
    if region not in STORAGE_REGIONS:
        raise NotFound(f"the emulator offers storage in AWS regions only, not {region}")
    read, write, lifetime = scope(project, task, principal)
    credentials, expiration = storage.temporary_credentials(read=read, write=write, lifetime=lifetime, alive=alive)
    shared = storage.uri(project_shared_prefix(project.project_id))
    return StorageGrant(
        region=region,
        shared_path=shared,
        storage_path=storage.uri(task.folder_path) if task is not None else shared,
        credentials=credentials,
        expiration=expiration,
    )


def presigned_upload(storage: Storage, project: Project, task: Task | None, file_path: str) -> PresignedUpload:
    """An upload URL for ``file_path`` under the task's folder, or under the project's shared files."""
    prefix = task.folder_path if task is not None else project_shared_prefix(project.project_id)
    try:
        key = prefix + safe_relative_key(file_path)
    except InvalidObjectKey as exc:
        raise InvalidRequest("filePath", str(exc)) from None
    url, expiration = storage.presigned_put_url(key)
    return PresignedUpload(url=url, expiration=expiration, bucket=storage.bucket, region=project.default_region)
