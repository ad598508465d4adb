"""The HTTP layer of the workspace and project policies, metrics and GCP clusters.

Limits, dimensions and task-retention policies (state in
:mod:`htc_emulator.policies`, obeyed by :meth:`Backend.admit`,
:meth:`Backend.submit` and :mod:`htc_emulator.retention`), the workspace's
metrics and its GCP clusters, computed from the emulator's state.

The one emulated user is a workspace administrator (``isWorkspaceAdmin`` in
``/auth/whoami``), so it may set both the ``PROJECT_ADMIN`` and the
``WORKSPACE_ADMIN`` limit of a project; job tokens may set neither
(:mod:`htc_emulator.job_rights`).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response

from . import auth, views
from .models import InvalidRequest, NotFound, now
from .policies import RetentionPolicy, workspace_dimensions
from .schemas import ComputeEnvironment, LimitCreate, LimitUpdate, RetentionPolicyBody, SupportedRescaleRegion

policy_routes = APIRouter()
# The regions the emulated workspace offers (the same list GET /htc/regions answers).
WORKSPACE_REGIONS = list(SupportedRescaleRegion.__args__)


def _backend(request: Request):
    return request.app.state.services.backend


def _workspace(workspace_id: str) -> None:
    if workspace_id != auth.WORKSPACE_ID:
        raise NotFound(f"workspace {workspace_id} not found")


def _limit(backend, project_id: str, limit_id: int):
    backend.project(project_id)
    limit = backend.policies.limits.get(limit_id)
    if limit is None or limit.project_id != project_id:
        raise NotFound(f"limit {limit_id} not found in project {project_id}")
    return limit


# --- limits ---------------------------------------------------------------------


@policy_routes.get("/htc/projects/{projectId}/limits")
def list_limits(request: Request, projectId: str) -> list:
    backend = _backend(request)
    with backend.lock:
        backend.project(projectId)
        return [views.limit_view(limit) for limit in backend.policies.project_limits(projectId)]


@policy_routes.post("/htc/projects/{projectId}/limits", status_code=201)
def create_limit(request: Request, projectId: str, body: LimitCreate) -> dict:
    backend = _backend(request)
    with backend.lock:
        backend.project(projectId)
        return views.limit_view(backend.policies.set_limit(projectId, body.modifierRole, body.vCPUs, now()))


@policy_routes.delete("/htc/projects/{projectId}/limits", status_code=204)
def delete_limits(request: Request, projectId: str) -> Response:
    backend = _backend(request)
    with backend.lock:
        backend.project(projectId)
        for limit in backend.policies.project_limits(projectId):
            del backend.policies.limits[limit.limit_id]
    return Response(status_code=204)


@policy_routes.get("/htc/projects/{projectId}/limits/{id}")
def get_limit(request: Request, projectId: str, id: int) -> dict:
    backend = _backend(request)
    with backend.lock:
        return views.limit_view(_limit(backend, projectId, id))


@policy_routes.patch("/htc/projects/{projectId}/limits/{id}")
def update_limit(request: Request, projectId: str, id: int, body: LimitUpdate) -> dict:
    backend = _backend(request)
    with backend.lock:
        limit = _limit(backend, projectId, id)
        limit.vcpus, limit.updated_at = body.vCPUs, now()
        return views.limit_view(limit)


@policy_routes.delete("/htc/projects/{projectId}/limits/{id}", status_code=204)
def delete_limit(request: Request, projectId: str, id: int) -> Response:
    backend = _backend(request)
    with backend.lock:
        del backend.policies.limits[_limit(backend, projectId, id).limit_id]
    return Response(status_code=204)


@policy_routes.get("/htc/workspaces/{workspaceId}/limits")
def workspace_limit(request: Request, workspaceId: str) -> dict:
    _workspace(workspaceId)
    limit = _backend(request).policies.workspace_limit
    if limit is None:
        raise NotFound(f"workspace {workspaceId} has no resource limit")
    return views.workspace_limit_view(limit)


# --- dimensions -------------------------------------------------------------------


@policy_routes.get("/htc/projects/{projectId}/dimensions")
def project_dimensions(request: Request, projectId: str) -> list:
    backend = _backend(request)
    with backend.lock:
        backend.project(projectId)
        return backend.policies.dimensions.get(projectId, [])


@policy_routes.put("/htc/projects/{projectId}/dimensions", status_code=201)
def set_project_dimensions(request: Request, projectId: str, body: list[ComputeEnvironment]) -> list:
    """Each combination must be one the workspace offers; an empty list lifts every restriction."""
    offered = workspace_dimensions(WORKSPACE_REGIONS)
    chosen = []
    for number, wanted in enumerate(body):
        given = wanted.model_dump(exclude_unset=True)
        match = next((c for c in offered if all(c[key] == value for key, value in given.items())), None)
        if match is None:
            raise InvalidRequest(f"[{number}]", f"the workspace offers no dimension combination {given}")
        chosen.append(match)
    backend = _backend(request)
    with backend.lock:
        backend.project(projectId)
        backend.policies.dimensions[projectId] = chosen
    return chosen


@policy_routes.get("/htc/workspaces/{workspaceId}/dimensions")
def workspace_dimensions_route(workspaceId: str) -> list:
    _workspace(workspaceId)
    return workspace_dimensions(WORKSPACE_REGIONS)


# --- task retention ------------------------------------------------------------------


@policy_routes.get("/htc/projects/{projectId}/task-retention-policy")
def project_retention(request: Request, projectId: str) -> dict:
    backend = _backend(request)
    with backend.lock:
        backend.project(projectId)
        policy = backend.policies.project_retention.get(projectId)
    if policy is None:
        raise NotFound(f"project {projectId} has no task retention policy (the workspace's applies)")
    return views.retention_view(policy, {"projectId": projectId})


@policy_routes.put("/htc/projects/{projectId}/task-retention-policy", status_code=201)
def set_project_retention(request: Request, projectId: str, body: RetentionPolicyBody) -> dict:
    backend = _backend(request)
    policy = RetentionPolicy(body.archiveAfter, body.deleteAfter, now())
    with backend.lock:
        backend.project(projectId)
        backend.policies.project_retention[projectId] = policy
    return views.retention_view(policy, {"projectId": projectId})


@policy_routes.delete("/htc/projects/{projectId}/task-retention-policy", status_code=204)
def delete_project_retention(request: Request, projectId: str) -> Response:
    backend = _backend(request)
    with backend.lock:
        backend.project(projectId)
        backend.policies.project_retention.pop(projectId, None)
    return Response(status_code=204)


@policy_routes.get("/htc/workspaces/{workspaceId}/task-retention-policy")
def workspace_retention(request: Request, workspaceId: str) -> dict:
    _workspace(workspaceId)
    policy = _backend(request).policies.workspace_retention
    if policy is None:
        raise NotFound(f"workspace {workspaceId} has no task retention policy")
    return views.retention_view(policy, {"workspaceId": workspaceId})


@policy_routes.put("/htc/workspaces/{workspaceId}/task-retention-policy", status_code=201)
def set_workspace_retention(request: Request, workspaceId: str, body: RetentionPolicyBody) -> dict:
    _workspace(workspaceId)
    backend = _backend(request)
    policy = RetentionPolicy(body.archiveAfter, body.deleteAfter, now())
    with backend.lock:
        backend.policies.workspace_retention = policy
    return views.retention_view(policy, {"workspaceId": workspaceId})


# --- metrics and clusters ----------------------------------------------------------------


@policy_routes.get("/htc/metrics")
def metrics(request: Request) -> PlainTextResponse:
    return PlainTextResponse(views.metrics_text(_backend(request)))


@policy_routes.get("/htc/gcp/clusters/{workspaceId}")
def gcp_clusters(request: Request, workspaceId: str) -> dict:
    _workspace(workspaceId)
    executor = _backend(request).executor
    return views.gcp_clusters_view(WORKSPACE_REGIONS, getattr(executor, "concurrency", 1))
