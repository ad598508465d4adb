"""Project and task storage: scoped credentials per region, and presigned upload URLs.

What the credentials reach is the model's rule (:mod:`htc_emulator.storage_rights`):
it depends on who asks, so these routes take the caller (:data:`PrincipalDep`).
"""

from __future__ import annotations

from fastapi import APIRouter, Query

from .. import views
from ..schemas import SupportedRescaleRegion
from .dependencies import BackendDep, PrincipalDep, StorageDep

router = APIRouter()

PROJECT = "/htc/projects/{projectId}/storage"
TASK = "/htc/projects/{projectId}/tasks/{taskId}/storage"


@router.get(f"{PROJECT}/token")
def project_storage_token(backend: BackendDep, storage: StorageDep, principal: PrincipalDep, projectId: str) -> dict:
    return views.storage_token_view(
        backend.storage_grant(projectId, None, principal),
        projectId,
        storage.bucket,
        backend.profile.storage_path_in_tokens,
    )


@router.get(f"{PROJECT}/token/{{region}}")
def project_storage_token_in(
    backend: BackendDep, storage: StorageDep, principal: PrincipalDep, projectId: str, region: SupportedRescaleRegion
) -> dict:
    grant = backend.storage_grant(projectId, None, principal, region)
    return views.storage_token_view(grant, projectId, storage.bucket, backend.profile.storage_path_in_tokens)


@router.get(f"{PROJECT}/tokens")
def project_storage_tokens(backend: BackendDep, storage: StorageDep, principal: PrincipalDep, projectId: str) -> dict:
    default_region, grants = backend.storage_grants(projectId, None, principal)
    return views.storage_tokens_view(
        default_region, grants, projectId, storage.bucket, backend.profile.storage_path_in_tokens
    )


@router.get(f"{PROJECT}/presigned-url")
def project_presigned_url(backend: BackendDep, projectId: str, filePath: str = Query(min_length=1)) -> dict:
    return views.presigned_url_view(backend.presigned_upload(projectId, None, filePath))


@router.get(f"{TASK}/token")
def task_storage_token(
    backend: BackendDep, storage: StorageDep, principal: PrincipalDep, projectId: str, taskId: str
) -> dict:
    return views.storage_token_view(
        backend.storage_grant(projectId, taskId, principal),
        projectId,
        storage.bucket,
        backend.profile.storage_path_in_tokens,
    )


@router.get(f"{TASK}/token/{{region}}")
def task_storage_token_in(
    backend: BackendDep,
    storage: StorageDep,
    principal: PrincipalDep,
    projectId: str,
    taskId: str,
    region: SupportedRescaleRegion,
) -> dict:
    grant = backend.storage_grant(projectId, taskId, principal, region)
    return views.storage_token_view(grant, projectId, storage.bucket, backend.profile.storage_path_in_tokens)


@router.get(f"{TASK}/tokens")
def task_storage_tokens(
    backend: BackendDep, storage: StorageDep, principal: PrincipalDep, projectId: str, taskId: str
) -> dict:
    default_region, grants = backend.storage_grants(projectId, taskId, principal)
    return views.storage_tokens_view(
        default_region, grants, projectId, storage.bucket, backend.profile.storage_path_in_tokens
    )


@router.get(f"{TASK}/regional-storage")
def task_regional_storage(backend: BackendDep, principal: PrincipalDep, projectId: str, taskId: str) -> dict:
    default_region, grants = backend.storage_grants(projectId, taskId, principal)
    return views.regional_storage_view(default_region, grants)


@router.get(f"{TASK}/presigned-url")
def task_presigned_url(backend: BackendDep, projectId: str, taskId: str, filePath: str = Query(min_length=1)) -> dict:
    return views.presigned_url_view(backend.presigned_upload(projectId, taskId, filePath))
