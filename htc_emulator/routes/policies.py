"""Workspace and project policies: resource limits, dimensions and task retention.

The policies are state of the model (:mod:`htc_emulator.policies`), obeyed when
it submits and admits jobs and when it applies retention. The one emulated user
is a workspace administrator (``isWorkspaceAdmin`` in ``/auth/whoami``), so it may
set both the ``PROJECT_ADMIN`` and the ``WORKSPACE_ADMIN`` limit of a project;
job tokens may set neither (:mod:`htc_emulator.job_rights`).
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from .. import views
from ..schemas import ComputeEnvironment, LimitCreate, LimitUpdate, RetentionPolicyBody
from .dependencies import BackendDep

router = APIRouter()

LIMITS = "/htc/projects/{projectId}/limits"
PROJECT_RETENTION = "/htc/projects/{projectId}/task-retention-policy"
WORKSPACE_RETENTION = "/htc/workspaces/{workspaceId}/task-retention-policy"


# --- limits ---------------------------------------------------------------------


@router.get(LIMITS)
def list_limits(backend: BackendDep, projectId: str) -> list:
    return [views.limit_view(limit) for limit in backend.project_limits(projectId)]


@router.post(LIMITS, status_code=201)
def create_limit(backend: BackendDep, projectId: str, body: LimitCreate) -> dict:
    return views.limit_view(backend.set_limit(projectId, body.modifierRole, body.vCPUs))


@router.delete(LIMITS, status_code=204)
def delete_limits(backend: BackendDep, projectId: str) -> Response:
    backend.delete_limits(projectId)
    return Response(status_code=204)


@router.get(f"{LIMITS}/{{id}}")
def get_limit(backend: BackendDep, projectId: str, id: int) -> dict:
    return views.limit_view(backend.limit(projectId, id))


@router.patch(f"{LIMITS}/{{id}}")
def update_limit(backend: BackendDep, projectId: str, id: int, body: LimitUpdate) -> dict:
    return views.limit_view(backend.update_limit(projectId, id, body.vCPUs))


@router.delete(f"{LIMITS}/{{id}}", status_code=204)
def delete_limit(backend: BackendDep, projectId: str, id: int) -> Response:
    backend.delete_limit(projectId, id)
    return Response(status_code=204)


@router.get("/htc/workspaces/{workspaceId}/limits")
def workspace_limit(backend: BackendDep, workspaceId: str) -> dict:
    return views.workspace_limit_view(backend.workspace_limit(workspaceId))


# --- dimensions -------------------------------------------------------------------


@router.get("/htc/projects/{projectId}/dimensions")
def project_dimensions(backend: BackendDep, projectId: str) -> list:
    return backend.dimensions(projectId)


@router.put("/htc/projects/{projectId}/dimensions", status_code=201)
def set_project_dimensions(backend: BackendDep, projectId: str, body: list[ComputeEnvironment]) -> list:
    """Each combination must be one the workspace offers; an empty list lifts every restriction."""
    return backend.set_dimensions(projectId, [wanted.model_dump(exclude_unset=True) for wanted in body])


@router.get("/htc/workspaces/{workspaceId}/dimensions")
def workspace_dimensions(backend: BackendDep, workspaceId: str) -> list:
    return backend.workspace_dimensions(workspaceId)


# --- task retention ------------------------------------------------------------------


@router.get(PROJECT_RETENTION)
def project_retention(backend: BackendDep, projectId: str) -> dict:
    return views.retention_view(backend.project_retention(projectId), {"projectId": projectId})


@router.put(PROJECT_RETENTION, status_code=201)
def set_project_retention(backend: BackendDep, projectId: str, body: RetentionPolicyBody) -> dict:
    policy = backend.set_project_retention(projectId, body.archiveAfter, body.deleteAfter)
    return views.retention_view(policy, {"projectId": projectId})


@router.delete(PROJECT_RETENTION, status_code=204)
def delete_project_retention(backend: BackendDep, projectId: str) -> Response:
    backend.delete_project_retention(projectId)
    return Response(status_code=204)


@router.get(WORKSPACE_RETENTION)
def workspace_retention(backend: BackendDep, workspaceId: str) -> dict:
    return views.retention_view(backend.workspace_retention(workspaceId), {"workspaceId": workspaceId})


@router.put(WORKSPACE_RETENTION, status_code=201)
def set_workspace_retention(backend: BackendDep, workspaceId: str, body: RetentionPolicyBody) -> dict:
    policy = backend.set_workspace_retention(workspaceId, body.archiveAfter, body.deleteAfter)
    return views.retention_view(policy, {"workspaceId": workspaceId})
