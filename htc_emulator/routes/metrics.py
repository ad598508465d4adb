"""What the workspace reports about itself: metrics of its state, and its GCP clusters."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from .. import views
from ..policies import WORKSPACE_REGIONS
from .dependencies import BackendDep

router = APIRouter()


@router.get("/htc/metrics")
def metrics(backend: BackendDep) -> PlainTextResponse:
    return PlainTextResponse(views.metrics_text(backend.metrics()))


@router.get("/htc/gcp/clusters/{workspaceId}")
def gcp_clusters(backend: BackendDep, workspaceId: str) -> dict:
    return views.gcp_clusters_view(WORKSPACE_REGIONS, backend.job_slots(workspaceId))
