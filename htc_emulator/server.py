"""Starting and stopping the emulator: moto, the scheduler and uvicorn.

Everything runs in this process: moto's S3/STS server and the API server
in background threads, jobs as child processes. Both servers listen on
127.0.0.1 only.
"""

from __future__ import annotations

import configparser
import contextlib
import os
import secrets
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import uvicorn

from .auth import TokenAuthority
from .faults import FaultInjector
from .images import DockerEngine, ImageRegistry, LocalImage
from .models import MAX_JOBS_PER_TASK, Backend
from .recorder import ExchangeRecorder
from .registry import ContainerRegistry
from .responses import API_PREFIX, Services, auth_middleware, create_app
from .retention import RetentionSweeper
from .scheduler import Scheduler
from .storage import ADMIN_ACCESS_KEY, Storage

ImageSource = str | os.PathLike | tuple[str | os.PathLike, str | os.PathLike]


class Emulator:
    """A running emulator: where it is and how to reach it."""

    def __init__(
        self,
        *,
        root_url: str,
        api_key: str,
        storage: Storage,
        backend: Backend,
        images: ImageRegistry,
        faults: FaultInjector,
        scheduler: Scheduler,
        recorder: ExchangeRecorder | None = None,
    ) -> None:
        self.root_url = root_url
        self.api_url = root_url + API_PREFIX
        self.api_key = api_key
        self.s3_endpoint = storage.endpoint
        self.bucket = storage.bucket
        self.storage = storage
        self.backend = backend
        self.images = images
        self.faults = faults
        self.scheduler = scheduler
        self.recorder = recorder

    def env(self) -> dict[str, str]:
        """The variables a client needs: API URL, API key, S3 endpoint."""
        return {
            "RESCALE_HTC_API_URL": self.api_url,
            "RESCALE_API_KEY": self.api_key,
            "AWS_ENDPOINT_URL_S3": self.s3_endpoint,
        }

    def write_apiconfig(self, path: str | os.PathLike, profile: str = "default") -> Path:
        """Write (or update) an ``apiconfig`` profile for ``config.py``; mode 0600.

        Other profiles already in the file are kept.
        """
        path = Path(path)
        parser = configparser.ConfigParser()
        if path.exists():
            parser.read(path, encoding="utf-8")
        parser[profile] = {"apibaseurl": self.root_url, "apikey": self.api_key, "htcapibaseurl": self.api_url}
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            parser.write(handle)
        return path

    def register_image(
        self, name: str, dockerfile: str | os.PathLike, context: str | os.PathLike | None = None
    ) -> LocalImage:
        """Register another ``name:tag`` while running (paths relative to the project root)."""
        return self.images.register(name, dockerfile, context)


def _has_repository(backend: Backend, project_id: str, repository: str) -> bool:
    """Whether the project created this repository (what its registry password may touch)."""
    with backend.lock:
        project = backend.projects.get(project_id)
        return project is not None and repository in project.repositories


def _register_images(registry: ImageRegistry, images: Mapping[str, ImageSource] | None) -> None:
    for name, source in (images or {}).items():
        dockerfile, context = source if isinstance(source, tuple) else (source, None)
        registry.register(name, dockerfile, context)


@contextlib.contextmanager
def running(
    api_key: str | None = None,
    token_lifetime: int = 21600,
    concurrency: int | None = None,
    images: Mapping[str, ImageSource] | None = None,
    time_scale: float = 1.0,
    refresh_delay: float = 0.0,
    faults: FaultInjector | Mapping | None = None,
    port: int = 0,
    docker: bool = False,
    recorder: ExchangeRecorder | None = None,
    max_jobs_per_task: int = MAX_JOBS_PER_TASK,
) -> Iterator[Emulator]:
    """Start an emulator for the ``with`` block and stop it afterwards.

    ``images`` maps ``name:tag`` to a Dockerfile path, or to a
    ``(dockerfile, build context)`` pair; relative paths are taken from the
    project root (the parent of ``htc_emulator/``), which is also the
    default build context. ``time_scale`` multiplies every job's
    ``execTimeoutSeconds`` and the hours of task-retention policies;
    ``refresh_delay`` (seconds) makes job statuses
    change only at refresh ticks. ``faults`` is a :class:`FaultInjector` or
    the settings for :meth:`FaultInjector.from_config`. ``docker=True`` needs
    a Docker engine and Debian's ``docker-registry``: a real registry then
    runs on loopback behind the container-registry endpoints, and jobs whose
    image was pushed there run as containers (registered images still run
    as processes). A
    ``recorder`` keeps every HTTP exchange, injected faults included.
    ``max_jobs_per_task`` bounds what one task (and so one request) can hold.
    """
    if refresh_delay < 0:
        raise ValueError("refresh_delay must not be negative")
    api_key = api_key or secrets.token_hex(20)
    tokens = TokenAuthority(api_key, token_lifetime)
    injector = faults if isinstance(faults, FaultInjector) else FaultInjector.from_config(faults or {})
    registry = ImageRegistry()
    _register_images(registry, images)
    engine = None
    if docker:
        engine = DockerEngine()
        if not engine.available():
            raise RuntimeError("docker=True, but no Docker engine answers `docker info`")
        if not ContainerRegistry.available():
            raise RuntimeError("docker=True needs a registry: install Debian's docker-registry")

    storage = scheduler = server = thread = sweeper = container_registry = None
    try:
        storage = Storage(wrap=lambda app: injector.wsgi(app, ADMIN_ACCESS_KEY))
        backend = Backend(storage, refresh_delay=refresh_delay, max_jobs_per_task=max_jobs_per_task)
        if engine is not None:
            container_registry = ContainerRegistry(
                lambda project_id, repository: _has_repository(backend, project_id, repository)
            )
            container_registry.start()
        app = create_app(
            Services(backend=backend, tokens=tokens, storage=storage, images=registry, registry=container_registry)
        )
        served = injector.asgi(auth_middleware(app, tokens))
        config = uvicorn.Config(
            recorder.asgi(served) if recorder is not None else served,
            host="127.0.0.1",
            port=port,
            lifespan="off",
            log_level="warning",
            access_log=False,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name="htc-api", daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the API server did not start on 127.0.0.1:{port}")
            time.sleep(0.01)
        root_url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        # Jobs need the API URL, known only now; nobody can know the port to submit a job before this.
        scheduler = Scheduler(
            backend,
            registry,
            tokens,
            api_url=root_url + API_PREFIX,
            s3_endpoint=storage.endpoint,
            concurrency=concurrency,
            time_scale=time_scale,
            docker=engine,
            registry=container_registry,
        )
        sweeper = RetentionSweeper(backend, time_scale)
        yield Emulator(
            root_url=root_url,
            api_key=api_key,
            storage=storage,
            backend=backend,
            images=registry,
            faults=injector,
            scheduler=scheduler,
            recorder=recorder,
        )
    finally:
        if server is not None:
            server.should_exit = True
            thread.join(timeout=10)
        if scheduler is not None:
            scheduler.stop()
        if sweeper is not None:
            sweeper.stop()
        if storage is not None:
            storage.stop()
        if container_registry is not None:
            container_registry.stop()
            # Names under the stopped registry (pulled by jobs, tagged for a push) now lead nowhere.
            engine.untag_registry(container_registry.host)
