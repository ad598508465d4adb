"""The HTTP layer: routes that validate, call the model and shape responses.

Paths, parameters, field names and status codes follow
``htc-openapi.json`` (served under ``/api/v1``). Two routes are also served
at the root because the original tutorial calls them there:
``/auth/token`` and ``/htc/projects/{projectId}/container-registry/token``.

Deliberate departures from the spec are listed, each with its reason, in
:mod:`htc_emulator.deviations`, and marked where they happen.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import time
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import parse_qs

from fastapi import APIRouter, Body, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import auth, job_rights, views
from .auth import AuthenticationError, PermissionDenied, TokenAuthority
from .images import ImageRegistry, normalize_image_name
from .models import SUMMARY_STATUSES, Backend, InvalidRequest, NotFound, Project, Task
from .policy_routes import policy_routes
from .registry import ContainerRegistry
from .schemas import (
    CloudProvider,
    JobStatus,
    JobSubmitRequest,
    ProjectCreate,
    ProjectUpdate,
    SupportedRescaleRegion,
    TaskCreate,
    TaskUpdate,
    ViewType,
)
from .storage import CREDENTIAL_LIFETIME, InvalidObjectKey, Storage, project_shared_prefix, safe_relative_key
from .validation import MAX_BATCHES_PER_REQUEST, group_name, group_names, page_offset, query_integer

API_PREFIX = "/api/v1"
MAX_PAGE_SIZE = 10000
REPOSITORY_NAME_RE = re.compile(r"(?:[a-z0-9]+(?:[._-][a-z0-9]+)*/)*[a-z0-9]+(?:[._-][a-z0-9]+)*")
# Regions with storage: the emulator's storage is S3, so AWS regions only.
STORAGE_REGIONS = tuple(r for r in SupportedRescaleRegion.__args__ if r.startswith("AWS_"))


@dataclass
class Services:
    """What the routes work with."""

    backend: Backend
    tokens: TokenAuthority
    storage: Storage
    images: ImageRegistry
    # The real registry images are pushed to, where one runs (``docker=True``).
    registry: ContainerRegistry | None = None

    @property
    def registry_host(self) -> str:
        return self.registry.host if self.registry is not None else views.REGISTRY_HOST

    def project_view(self, project: Project) -> dict:
        return views.project_view(project, self.registry_host)


# --- errors -------------------------------------------------------------------


def _request_error(status: int, error_type: str, description: str, message: str | None = None) -> JSONResponse:
    """An ``HTCRequestError`` body."""
    return JSONResponse({"errorType": error_type, "errorDescription": description, "message": message}, status)


def _oauth2_error(status: int, error: str, description: str, headers: dict | None = None) -> JSONResponse:
    """An ``OAuth2ErrorResponse`` body."""
    return JSONResponse({"error": error, "errorDescription": description}, status, headers=headers)


def _uses_request_error_404(request: Request) -> bool:
    # The spec's 404 for reading jobs (list, get, events, logs) is an
    # HTCRequestError; elsewhere it is an OAuth2ErrorResponse.
    return request.method == "GET" and "/jobs" in request.url.path


def _field_path(loc: tuple) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0]
        if first["type"] == "json_invalid":
            return _request_error(400, "INVALID_REQUEST", "Malformed JSON body", f"body: {first['msg']}")
        names = [str(p) for p in first["loc"] if isinstance(p, str) and p not in ("body", "query", "path")]
        field = names[-1] if names else "body"
        details = "; ".join(f"{_field_path(e['loc'])}: {e['msg']}" for e in errors)
        return _request_error(400, "INVALID_REQUEST", f"Invalid value for {field}", details)

    @app.exception_handler(InvalidRequest)
    async def _refused(request: Request, exc: InvalidRequest) -> JSONResponse:
        return _request_error(400, "INVALID_REQUEST", f"Invalid value for {exc.field}", str(exc))

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound) -> JSONResponse:
        if _uses_request_error_404(request):
            return _request_error(404, "NOT_FOUND", str(exc))
        return _oauth2_error(404, "NOT_FOUND", str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _oauth2_error(exc.status_code, "NOT_FOUND" if exc.status_code == 404 else "HTTP_ERROR", str(exc.detail))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        return _request_error(500, "INTERNAL_ERROR", "Internal server error", type(exc).__name__)


def auth_middleware(app, tokens: TokenAuthority):
    """Bearer check for every ``/htc/**`` call, before routing and body parsing.

    401 when the token is missing, malformed or expired (a job token also
    once its task is deleted or its job is over); 403 when a job token
    asks for what its job does not need (:mod:`htc_emulator.job_rights`).
    """

    async def middleware(scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path.startswith("/htc/") or path.startswith(f"{API_PREFIX}/htc/")):
            return await app(scope, receive, send)
        headers = dict(scope["headers"])
        authorization = headers.get(b"authorization", b"").decode("latin-1")
        try:
            principal = tokens.principal(authorization)
            # For the routes (request.state.principal): storage credentials depend on who asks.
            scope.setdefault("state", {})["principal"] = principal
            if principal.is_job:
                job_rights.require_live_job(principal, app.state.services.backend)
                job_rights.authorize(principal, scope["method"], path.removeprefix(API_PREFIX))
        except AuthenticationError as exc:
            response = _oauth2_error(401, "invalid_token", str(exc), {"WWW-Authenticate": "Bearer"})
            return await response(scope, receive, send)
        except PermissionDenied as exc:
            return await _oauth2_error(403, "forbidden", str(exc))(scope, receive, send)
        return await app(scope, receive, send)

    return middleware


# --- helpers ------------------------------------------------------------------


def _services(request: Request) -> Services:
    return request.app.state.services


def _page(request: Request, items: list, page_index: str | None, page_size: str, render=None) -> dict:
    """One page ``{items, next}``; ``next`` (absolute, same host) only when more remain."""
    page_size = query_integer("pageSize", page_size, 1, MAX_PAGE_SIZE)
    offset = page_offset(page_index)
    chunk = items[offset : offset + page_size]
    body = {"items": [render(item) for item in chunk] if render else chunk}
    if offset + page_size < len(items):
        body["next"] = str(request.url.include_query_params(pageIndex=str(offset + page_size)))
    return body


def _storage_credentials(svc: Services, project: Project, task: Task | None, principal: auth.Principal):
    """Credentials scoped as the platform's: a task's folder read-write and the shared files read-only;
    a project's whole folder for its user, only the shared files (read-only) for a job.

    A job's credentials end no later than its token.
    """
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
    return svc.storage.temporary_credentials(read=read, write=write, lifetime=lifetime)


def _storage_token(svc: Services, request: Request, project: Project, region: str | None, task: Task | None) -> dict:
    """A StorageAccessToken (plus ``storagePath``: see htc_emulator.deviations)."""
    region = region or project.default_region
    if region not in project.regions:
        raise NotFound(f"project {project.project_id} has no storage in region {region}")
    if region not in STORAGE_REGIONS:
        raise NotFound(f"the emulator offers storage in AWS regions only, not {region}")
    credentials, expiration = _storage_credentials(svc, project, task, request.state.principal)
    shared = svc.storage.uri(project_shared_prefix(project.project_id))
    return {
        "projectSharedStoragePath": shared,
        "storagePath": svc.storage.uri(task.folder_path) if task else shared,
        "projectId": project.project_id,
        "storageName": svc.storage.bucket,
        "region": region,
        "user": f"{auth.WORKSPACE_ID}:{auth.USER_ID}",
        "expiration": views.isotime(expiration),
        "credentials": credentials,
        "provider": "AWS",
    }


def _storage_tokens(svc: Services, request: Request, project: Project, task: Task | None) -> dict:
    regions = [r for r in project.regions if r in STORAGE_REGIONS]
    return {
        "defaultRegion": project.default_region,
        "regionStores": [_storage_token(svc, request, project, r, task) for r in regions],
    }


def _presigned_url(svc: Services, project: Project, prefix: str, file_path: str) -> dict:
    try:
        key = prefix + safe_relative_key(file_path)
    except InvalidObjectKey as exc:
        raise InvalidRequest("filePath", str(exc)) from None
    url, expiration = svc.storage.presigned_put_url(key)
    # The spec types `url` as an object (a serialized java.net.URL); the
    # value is sent as the URL string, which is what a client can use.
    return {
        "url": url,
        "storageName": svc.storage.bucket,
        "region": project.default_region,
        "expiration": views.isotime(expiration),
    }


def _registry_token(svc: Services, project_id: str) -> PlainTextResponse:
    # Without a real registry the password has no use (images are registered
    # locally), but the route answers as the platform does.
    if svc.registry is None:
        return PlainTextResponse(secrets.token_urlsafe(32))
    return PlainTextResponse(svc.registry.issue_password(project_id))


# --- routes: authentication -----------------------------------------------------

auth_routes = APIRouter()


@auth_routes.get("/auth/token")
def get_token(request: Request) -> dict:
    svc = _services(request)
    try:
        svc.tokens.check_api_key(request.headers.get("authorization"))
    except AuthenticationError as exc:
        return _oauth2_error(401, "invalid_client", str(exc))
    token, expires_in = svc.tokens.user_token()
    return {"tokenValue": token, "expiresIn": expires_in}


@auth_routes.get("/auth/whoami")
def who_am_i(request: Request) -> dict:
    try:
        _services(request).tokens.check_api_key(request.headers.get("authorization"))
    except AuthenticationError as exc:
        return _oauth2_error(401, "invalid_client", str(exc))
    return views.whoami_view()


@auth_routes.get("/auth/token/whoami")
def token_payload(request: Request) -> dict:
    """The bearer token's verified payload (a user's or a job's)."""
    try:
        return _services(request).tokens.payload(request.headers.get("authorization"))
    except AuthenticationError as exc:
        return _oauth2_error(401, "invalid_token", str(exc), {"WWW-Authenticate": "Bearer"})


@auth_routes.get("/.well-known/jwks.json")
def json_web_key_set(request: Request) -> dict:
    return _services(request).tokens.jwks()


@auth_routes.post("/oauth2/token")
async def oauth2_token(request: Request) -> dict:
    """OAuth 2.0 client-credentials grant (RFC 6749 4.4): the API key is the client secret.

    The client authenticates with HTTP Basic (any client id, the API key as
    password), ``Authorization: Token <key>``, or a ``client_secret`` form field.
    """
    form = {k: v[-1] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()}
    grant = form.get("grant_type")
    if grant is None:
        return _oauth2_error(400, "invalid_request", "grant_type is required (client_credentials)")
    if grant != "client_credentials":
        return _oauth2_error(400, "unsupported_grant_type", f"grant_type {grant} is not supported")
    tokens = _services(request).tokens
    try:
        tokens.check_api_key(_client_secret(request.headers.get("authorization"), form))
    except AuthenticationError as exc:
        return _oauth2_error(400, "invalid_client", str(exc))
    token, expires_in = tokens.user_token()
    return {"access_token": token, "token_type": "Bearer", "expires_in": expires_in}


def _client_secret(authorization: str | None, form: dict) -> str | None:
    """The client's secret as an ``Authorization: Token`` value, from whichever place the client used."""
    scheme, _, value = (authorization or "").partition(" ")
    if scheme.lower() == "basic":
        try:
            return "Token " + base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return None
    if "client_secret" in form:
        return "Token " + form["client_secret"]
    return authorization


registry_token_route = APIRouter()


@registry_token_route.get("/htc/projects/{projectId}/container-registry/token")
def get_registry_token(request: Request, projectId: str) -> PlainTextResponse:
    svc = _services(request)
    svc.backend.project(projectId)
    return _registry_token(svc, projectId)


# --- routes: regions and storage options -------------------------------------------

htc = APIRouter()


@htc.get("/htc/regions")
def list_regions(cloudProvider: CloudProvider | None = None, enabled: bool | None = None) -> list:
    # Spec defect: documented as one HTCInfraResource object. Clients (the
    # tutorial) read a list of region settings, which is what this returns.
    regions = [views.region_view(r) for r in SupportedRescaleRegion.__args__]
    return [
        r
        for r in regions
        if (cloudProvider is None or r["cloudProvider"] == cloudProvider)
        and (enabled is None or r["enabled"] == enabled)
    ]


@htc.get("/htc/regions/{region}")
def get_region(region: SupportedRescaleRegion) -> dict:
    return views.region_view(region)


@htc.get("/htc/storage")
def list_storage(request: Request) -> list:
    bucket = _services(request).storage.bucket
    return [{"storageName": bucket, "region": r, "provider": "AWS"} for r in STORAGE_REGIONS]


@htc.get("/htc/storage/region/{region}")
def get_storage(request: Request, region: SupportedRescaleRegion) -> dict:
    if region not in STORAGE_REGIONS:
        raise NotFound(f"no storage in region {region}")
    return {"storageName": _services(request).storage.bucket, "region": region, "provider": "AWS"}


# --- routes: projects and container registry -----------------------------------------


@htc.post("/htc/projects")
def create_project(request: Request, body: ProjectCreate) -> dict:
    project = _services(request).backend.create_project(
        body.projectName,
        body.projectDescription,
        list(body.regions),
        [s.model_dump(exclude_unset=True) for s in body.regionSettings],
    )
    return _services(request).project_view(project)


@htc.get("/htc/projects")
def list_projects(
    request: Request, onlyMyProjects: bool | None = None, pageIndex: str | None = None, pageSize: str = "100"
) -> dict:
    # Every project here belongs to the one emulated user, so onlyMyProjects changes nothing.
    projects = _services(request).backend.list_projects()
    return _page(request, projects, pageIndex, pageSize, _services(request).project_view)


@htc.get("/htc/projects/{projectId}")
def get_project(request: Request, projectId: str) -> dict:
    svc = _services(request)
    return svc.project_view(svc.backend.project(projectId))


@htc.patch("/htc/projects/{projectId}")
def update_project(request: Request, projectId: str, body: ProjectUpdate) -> dict:
    backend = _services(request).backend
    with backend.lock:
        project = backend.project(projectId)
        project.regions = list(dict.fromkeys(project.regions + list(body.regions)))
    return _services(request).project_view(project)


@htc.post("/htc/projects/{projectId}/container-registry/repo/{repoName:path}")
def create_repository(request: Request, projectId: str, repoName: str) -> dict:
    if not REPOSITORY_NAME_RE.fullmatch(repoName):
        raise InvalidRequest("repoName", "must be lower-case words separated by '.', '_', '-' or '/'")
    backend = _services(request).backend
    created = backend.create_repository(projectId, repoName)
    return views.repository_view(backend.project(projectId), repoName, created, _services(request).registry_host)


htc.include_router(registry_token_route)


def _project_images(svc: Services, project: Project) -> list[str]:
    """Registered images whose repository exists in the project's registry, and what was pushed there."""
    registered = [name for name in svc.images.names() if svc.images.get(name).repository in project.repositories]
    if svc.registry is None:
        return registered
    return sorted(set(registered) | set(svc.registry.images(project.project_id, sorted(project.repositories))))


@htc.get("/htc/projects/{projectId}/container-registry/images")
def list_images(request: Request, projectId: str) -> dict:
    svc = _services(request)
    project = svc.backend.project(projectId)
    return {
        "containerRegistry": views.registry_uri(project, svc.registry_host),
        "images": _project_images(svc, project),
    }


@htc.get("/htc/projects/{projectId}/container-registry/images/{imageName:path}")
def get_image_status(request: Request, projectId: str, imageName: str) -> Response:
    svc = _services(request)
    project = svc.backend.project(projectId)
    if normalize_image_name(imageName) not in _project_images(svc, project):
        return JSONResponse(
            {
                "errorType": "IMAGE_UNAVAILABLE",
                "errorDescription": f"Image {imageName} is unavailable. Please check the image name.",
            },
            404,
        )
    return JSONResponse({"status": "READY"})


# --- routes: project storage ----------------------------------------------------------


@htc.get("/htc/projects/{projectId}/storage/token")
def project_storage_token(request: Request, projectId: str) -> dict:
    svc = _services(request)
    return _storage_token(svc, request, svc.backend.project(projectId), None, None)


@htc.get("/htc/projects/{projectId}/storage/token/{region}")
def project_storage_token_in(request: Request, projectId: str, region: SupportedRescaleRegion) -> dict:
    svc = _services(request)
    return _storage_token(svc, request, svc.backend.project(projectId), region, None)


@htc.get("/htc/projects/{projectId}/storage/tokens")
def project_storage_tokens(request: Request, projectId: str) -> dict:
    svc = _services(request)
    return _storage_tokens(svc, request, svc.backend.project(projectId), None)


@htc.get("/htc/projects/{projectId}/storage/presigned-url")
def project_presigned_url(request: Request, projectId: str, filePath: str = Query(min_length=1)) -> dict:
    svc = _services(request)
    project = svc.backend.project(projectId)
    return _presigned_url(svc, project, project_shared_prefix(projectId), filePath)


# --- routes: tasks --------------------------------------------------------------------


@htc.post("/htc/projects/{projectId}/tasks")
def create_task(request: Request, projectId: str, body: TaskCreate) -> dict:
    return views.task_view(_services(request).backend.create_task(projectId, body.taskName, body.taskDescription))


@htc.get("/htc/projects/{projectId}/tasks")
def list_tasks(request: Request, projectId: str, pageIndex: str | None = None, pageSize: str = "100") -> dict:
    return _page(request, _services(request).backend.list_tasks(projectId), pageIndex, pageSize, views.task_view)


@htc.get("/htc/projects/{projectId}/tasks/{taskId}")
def get_task(request: Request, projectId: str, taskId: str) -> dict:
    return views.task_view(_services(request).backend.task(projectId, taskId))


@htc.patch("/htc/projects/{projectId}/tasks/{taskId}")
def update_task(request: Request, projectId: str, taskId: str, body: TaskUpdate) -> dict:
    return views.task_view(_services(request).backend.update_task(projectId, taskId, body.lifecycleStatus))


@htc.delete("/htc/projects/{projectId}/tasks/{taskId}")
def delete_task(request: Request, projectId: str, taskId: str) -> dict:
    return views.task_view(_services(request).backend.delete_task(projectId, taskId))


# --- routes: jobs ---------------------------------------------------------------------


@htc.post("/htc/projects/{projectId}/tasks/{taskId}/jobs/batch")
def submit_jobs(
    request: Request,
    projectId: str,
    taskId: str,
    body: Annotated[list[JobSubmitRequest], Body(max_length=MAX_BATCHES_PER_REQUEST)],
    group: str | None = None,
) -> list:
    group = group_name(group)
    batches = [b.model_dump(exclude_unset=True) for b in body]
    backend = _services(request).backend
    submitted = backend.submit(projectId, taskId, group, batches)
    return [
        views.submit_view(
            batch, project_id=projectId, task_id=taskId, parent_job_id=parent, group=group, received=received
        )
        for batch, (parent, received) in zip(batches, submitted, strict=True)
    ]


@htc.get("/htc/projects/{projectId}/tasks/{taskId}/jobs")
def list_jobs(
    request: Request,
    projectId: str,
    taskId: str,
    group: str | None = None,
    jobId: list[str] | None = Query(None),
    status: JobStatus | None = None,
    viewType: ViewType = "FULL",
    pageIndex: str | None = None,
    pageSize: str = "100",
) -> dict:
    group = group_name(group)
    backend = _services(request).backend
    as_of = backend.visible_time()
    jobs = backend.task_jobs(projectId, taskId)
    if group is not None:
        jobs = [j for j in jobs if j.group == group]
    if jobId:
        wanted = set(jobId)
        # A parentJobId selects every job of its batch.
        jobs = [j for j in jobs if j.job_id in wanted or j.parent_job_id in wanted]
    if status is not None:
        jobs = [j for j in jobs if j.visible_events(as_of)[-1].status == status]
    return _page(request, jobs, pageIndex, pageSize, lambda j: views.job_view(j, as_of, viewType))


@htc.get("/htc/projects/{projectId}/tasks/{taskId}/jobs/{jobId}")
def get_job(request: Request, projectId: str, taskId: str, jobId: str) -> dict:
    backend = _services(request).backend
    return views.job_view(backend.job(projectId, taskId, jobId), backend.visible_time())


@htc.get("/htc/projects/{projectId}/tasks/{taskId}/jobs/{jobId}/events")
def get_job_events(
    request: Request, projectId: str, taskId: str, jobId: str, pageIndex: str | None = None, pageSize: str = "100"
) -> dict:
    backend = _services(request).backend
    job = backend.job(projectId, taskId, jobId)
    events = job.visible_events(backend.visible_time())
    return _page(request, events, pageIndex, pageSize, lambda e: views.event_view(job, e))


@htc.get("/htc/projects/{projectId}/tasks/{taskId}/jobs/{jobId}/logs")
def get_job_logs(
    request: Request,
    projectId: str,
    taskId: str,
    jobId: str,
    pageIndex: str | None = None,
    pageSize: str = "100",
    sort: str = Query("desc", pattern="^(asc|desc)$"),
) -> dict:
    job = _services(request).backend.job(projectId, taskId, jobId)
    lines = job.logs[:]
    if sort == "desc":
        lines.reverse()
    return _page(
        request, lines, pageIndex, pageSize, lambda line: {"timestamp": views.isotime(line.at), "message": line.message}
    )


@htc.post("/htc/projects/{projectId}/tasks/{taskId}/jobs/cancel")
def cancel_jobs(request: Request, projectId: str, taskId: str, group: str | None = None) -> Response:
    group = group_name(group)
    try:
        _services(request).backend.cancel(projectId, taskId, group)
    except NotFound:
        return Response(status_code=404)  # the spec gives this 404 an empty content map: no body
    return Response(status_code=200)


# --- routes: statistics -------------------------------------------------------------------


@htc.get("/htc/projects/{projectId}/tasks/{taskId}/group-summary-statistics")
def group_statistics(
    request: Request,
    projectId: str,
    taskId: str,
    group: list[str] | None = Query(None),
    pageIndex: str | None = None,
    pageSize: str = "100",
) -> dict:
    group = group_names(group)
    backend = _services(request).backend
    as_of = backend.visible_time()
    jobs = backend.task_jobs(projectId, taskId)
    names = list(dict.fromkeys(j.group for j in jobs))
    if group:
        names = [name for name in names if name in set(group)]
    summaries = [
        {"group": name, "jobStatuses": dict(backend.status_counts((j for j in jobs if j.group == name), as_of))}
        for name in names
    ]
    return _page(request, summaries, pageIndex, pageSize)


@htc.get("/htc/projects/{projectId}/tasks/{taskId}/summary-statistics")
def task_statistics(request: Request, projectId: str, taskId: str) -> dict:
    backend = _services(request).backend
    counts = backend.status_counts(backend.task_jobs(projectId, taskId), backend.visible_time())
    return {"group": None, "jobStatuses": {s: counts[s] for s in SUMMARY_STATUSES}}


@htc.get("/htc/projects/{projectId}/tasks/{taskId}/groups")
def list_groups(
    request: Request, projectId: str, taskId: str, pageIndex: str | None = None, pageSize: str = "100"
) -> list:
    # The spec documents a bare list of names (no `next`), paged by the query.
    return _page(request, _services(request).backend.groups(projectId, taskId), pageIndex, pageSize)["items"]


# --- routes: task storage -------------------------------------------------------------------


@htc.get("/htc/projects/{projectId}/tasks/{taskId}/storage/token")
def task_storage_token(request: Request, projectId: str, taskId: str) -> dict:
    svc = _services(request)
    task = svc.backend.live_task(projectId, taskId)
    return _storage_token(svc, request, svc.backend.project(projectId), None, task)


@htc.get("/htc/projects/{projectId}/tasks/{taskId}/storage/token/{region}")
def task_storage_token_in(request: Request, projectId: str, taskId: str, region: SupportedRescaleRegion) -> dict:
    svc = _services(request)
    task = svc.backend.live_task(projectId, taskId)
    return _storage_token(svc, request, svc.backend.project(projectId), region, task)


@htc.get("/htc/projects/{projectId}/tasks/{taskId}/storage/tokens")
def task_storage_tokens(request: Request, projectId: str, taskId: str) -> dict:
    svc = _services(request)
    task = svc.backend.live_task(projectId, taskId)
    return _storage_tokens(svc, request, svc.backend.project(projectId), task)


@htc.get("/htc/projects/{projectId}/tasks/{taskId}/storage/regional-storage")
def task_regional_storage(request: Request, projectId: str, taskId: str) -> dict:
    svc = _services(request)
    task = svc.backend.live_task(projectId, taskId)
    project = svc.backend.project(projectId)
    stores = []
    for region in (r for r in project.regions if r in STORAGE_REGIONS):
        token = _storage_token(svc, request, project, region, task)
        stores.append(
            {
                "region": region,
                "projectPath": token["projectSharedStoragePath"],
                "taskPath": token["storagePath"],
                "credentials": token["credentials"],
                "provider": "AWS",
            }
        )
    return {"rescaleRegion": project.default_region, "regionalStores": stores}


@htc.get("/htc/projects/{projectId}/tasks/{taskId}/storage/presigned-url")
def task_presigned_url(request: Request, projectId: str, taskId: str, filePath: str = Query(min_length=1)) -> dict:
    svc = _services(request)
    task = svc.backend.live_task(projectId, taskId)
    return _presigned_url(svc, svc.backend.project(projectId), task.folder_path, filePath)


def create_app(services: Services) -> FastAPI:
    """The FastAPI application (without the fault and auth wrappers)."""
    app = FastAPI(title="Rescale HTC API emulator", openapi_url=None, docs_url=None, redoc_url=None)
    app.state.services = services
    install_error_handlers(app)
    app.include_router(auth_routes)  # the tutorial's root URL
    app.include_router(registry_token_route)  # the tutorial's root URL
    app.include_router(auth_routes, prefix=API_PREFIX)
    app.include_router(htc, prefix=API_PREFIX)
    app.include_router(policy_routes, prefix=API_PREFIX)
    return app
