"""Projects and their container registry: repositories, the registry password, images."""

from __future__ import annotations

import re
import secrets

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from .. import views
from ..errors import InvalidRequest
from ..schemas import ProjectCreate, ProjectUpdate
from .dependencies import BackendDep, ImagesDep
from .paging import page

REPOSITORY_NAME_RE = re.compile(r"(?:[a-z0-9]+(?:[._-][a-z0-9]+)*/)*[a-z0-9]+(?:[._-][a-z0-9]+)*")

router = APIRouter()
# Served at the root as well as under the API prefix: the original tutorial calls it there.
registry_token_router = APIRouter()


@router.post("/htc/projects")
def create_project(backend: BackendDep, images: ImagesDep, body: ProjectCreate) -> dict:
    project = backend.create_project(
        body.projectName,
        body.projectDescription,
        list(body.regions),
        [s.model_dump(exclude_unset=True) for s in body.regionSettings],
    )
    return views.project_view(project, images.registry_host)


@router.get("/htc/projects")
def list_projects(
    request: Request,
    backend: BackendDep,
    images: ImagesDep,
    onlyMyProjects: bool | None = None,
    pageIndex: str | None = None,
    pageSize: str = "100",
) -> dict:
    # Every project here belongs to the one emulated user, so onlyMyProjects changes nothing.
    return page(
        request, backend.list_projects(), pageIndex, pageSize, lambda p: views.project_view(p, images.registry_host)
    )


@router.get("/htc/projects/{projectId}")
def get_project(backend: BackendDep, images: ImagesDep, projectId: str) -> dict:
    return views.project_view(backend.project(projectId), images.registry_host)


@router.patch("/htc/projects/{projectId}")
def update_project(backend: BackendDep, images: ImagesDep, projectId: str, body: ProjectUpdate) -> dict:
    return views.project_view(backend.add_project_regions(projectId, list(body.regions)), images.registry_host)


@router.post("/htc/projects/{projectId}/container-registry/repo/{repoName:path}")
def create_repository(backend: BackendDep, images: ImagesDep, projectId: str, repoName: str) -> dict:
    if not REPOSITORY_NAME_RE.fullmatch(repoName):
        raise InvalidRequest("repoName", "must be lower-case words separated by '.', '_', '-' or '/'")
    project, created = backend.create_repository(projectId, repoName)
    return views.repository_view(project, repoName, created, images.registry_host)


@registry_token_router.get("/htc/projects/{projectId}/container-registry/token")
def get_registry_token(backend: BackendDep, images: ImagesDep, projectId: str) -> PlainTextResponse:
    backend.project(projectId)
    # Without a real registry the password has no use (images are registered
    # locally), but the route answers as the platform does.
    if images.container_registry is None:
        return PlainTextResponse(secrets.token_urlsafe(32))
    return PlainTextResponse(images.container_registry.issue_password(projectId))


router.include_router(registry_token_router)


@router.get("/htc/projects/{projectId}/container-registry/images")
def list_images(images: ImagesDep, projectId: str) -> dict:
    return views.image_list_view(projectId, images.registry_host, images.names(projectId))


@router.get("/htc/projects/{projectId}/container-registry/images/{imageName:path}")
def get_image_status(images: ImagesDep, projectId: str, imageName: str) -> Response:
    status = images.status(projectId, imageName)
    if status is None:
        return JSONResponse(
            {
                "errorType": "IMAGE_UNAVAILABLE",
                "errorDescription": f"Image {imageName} is unavailable. Please check the image name. "
                "If the image was pushed recently, try again at a later time",
            },
            404,
        )
    return JSONResponse({"status": status})
