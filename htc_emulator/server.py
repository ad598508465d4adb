"""Starting and stopping the emulator: moto, the scheduler and uvicorn.

Everything runs in this process: moto's S3/STS server and the API server
in background threads, jobs as child processes. Both servers listen on
127.0.0.1 only.
"""

from __future__ import annotations

import configparser
import contextlib
import dataclasses
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import uvicorn

from .app import asgi_app
from .auth import TokenAuthority
from .container_registry import ContainerRegistry
from .docker_engine import DockerEngine
from .faults import FaultInjector
from .job_users import UNCONFINED_WARNING
from .local_images import LocalImage, LocalImages
from .models import MAX_JOBS_PER_TASK, Backend
from .platform_profile import PlatformProfile, profile_named
from .project_images import ProjectImages
from .recorder import ExchangeRecorder
from .refresh import RefreshTicker
from .retention import RetentionSweeper
from .routes import API_PREFIX
from .routes.dependencies import Services
from .scheduler import Scheduler
from .storage import ADMIN_ACCESS_KEY, Storage

ImageSource = str | os.PathLike | tuple[str | os.PathLike, str | os.PathLike]
# How long the API server keeps an idle connection open. A pooled client (requests) reuses one without
# knowing that the server is closing it, and a POST sent at that moment is lost: clients do not resend a
# POST. uvicorn's 5 s default put that moment where a client polls or waits a few seconds between calls;
# this is as long as the storage server's (waitress's channel_timeout), past anything the tutorial waits.
KEEP_ALIVE_SECONDS = 120


class Emulator:
    """A running emulator: where it is and how to reach it."""

    def __init__(
        self,
        *,
        root_url: str,
        api_key: str,
        storage: Storage,
        backend: Backend,
        images: LocalImages,
        faults: FaultInjector,
        scheduler: Scheduler,
        recorder: ExchangeRecorder | None = None,
        time_scale: float = 1.0,
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
        self.time_scale = time_scale
        # The profile on the emulator's clock: every duration in real seconds.
        self.profile = backend.profile

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


def _register_images(local_images: LocalImages, images: Mapping[str, ImageSource] | None) -> None:
    for name, source in (images or {}).items():
        dockerfile, context = source if isinstance(source, tuple) else (source, None)
        local_images.register(name, dockerfile, context)


@contextlib.contextmanager
def running(
    api_key: str | None = None,
    token_lifetime: int = 21600,
    concurrency: int | None = None,
    images: Mapping[str, ImageSource] | None = None,
    time_scale: float = 1.0,
    refresh_delay: float | None = None,
    faults: FaultInjector | Mapping | None = None,
    port: int = 0,
    docker: bool = False,
    recorder: ExchangeRecorder | None = None,
    max_jobs_per_task: int = MAX_JOBS_PER_TASK,
    profile: str | PlatformProfile = "platform",
    timeout_scale: float | None = None,
) -> Iterator[Emulator]:
    """Start an emulator for the ``with`` block and stop it afterwards.

    ``profile`` is how the platform behaves where it is awkward
    (:mod:`htc_emulator.platform_profile`): ``"platform"`` (refresh ticks, image
    replication, start latency, CloudWatch log pages, best-effort cancel...), or
    ``"ideal"`` for a kind emulator without them (what benchmarks measure against),
    or a :class:`~htc_emulator.platform_profile.PlatformProfile`.
    ``time_scale`` is the emulator's clock: every duration of the profile, and the
    hours of task-retention policies, last ``time_scale`` times as long as on the
    platform (0.01: the 30 s status refresh lasts 0.3 s); every answer says so in
    its ``HTC-Emulator-Time-Scale`` header. ``timeout_scale`` (default:
    ``time_scale``) does the same for each job's ``execTimeoutSeconds`` and the 10 s
    stop grace period, which bound real work and so may need more room.
    ``refresh_delay`` (real seconds) replaces the profile's status refresh period.
    ``images`` maps ``name:tag`` to a Dockerfile path, or to a
    ``(dockerfile, build context)`` pair; relative paths are taken from the
    project root (the parent of ``htc_emulator/``), which is also the
    default build context. ``faults`` is a :class:`FaultInjector` or
    the settings for :meth:`FaultInjector.from_config`. ``docker=True`` needs
    a Docker engine and Debian's ``docker-registry``: a real registry then
    runs on loopback behind the container-registry endpoints, and jobs whose
    image was pushed there run as containers (under the platform profile the
    registry holds pushed images only; with ``"ideal"`` registered images still
    run, as processes). A
    ``recorder`` keeps every HTTP exchange, injected faults included.
    ``max_jobs_per_task`` bounds what one task (and so one request) can hold.
    """
    if refresh_delay is not None and refresh_delay < 0:
        raise ValueError("refresh_delay must not be negative")
    timeout_scale = time_scale if timeout_scale is None else timeout_scale
    if time_scale <= 0 or timeout_scale <= 0:
        raise ValueError("time_scale and timeout_scale must be positive")
    clocked = profile_named(profile).on_clock(time_scale)
    if refresh_delay is not None:
        clocked = dataclasses.replace(clocked, status_refresh_seconds=refresh_delay)
    api_key = api_key or secrets.token_hex(20)
    tokens = TokenAuthority(api_key, token_lifetime)
    injector = faults if isinstance(faults, FaultInjector) else FaultInjector.from_config(faults or {})
    local_images = LocalImages()
    _register_images(local_images, images)
    engine = None
    if docker:
        engine = DockerEngine()
        if not engine.available():
            raise RuntimeError("docker=True, but no Docker engine answers `docker info`")
        if not ContainerRegistry.available():
            raise RuntimeError("docker=True needs a registry: install Debian's docker-registry")
        engine.remove_leftovers()  # the containers of emulators that were killed

    storage = scheduler = server = thread = sweeper = ticker = container_registry = None
    try:
        storage = Storage(wrap=lambda app: injector.wsgi(app, ADMIN_ACCESS_KEY))
        backend = Backend(storage, profile=clocked, max_jobs_per_task=max_jobs_per_task)
        if engine is not None:
            container_registry = ContainerRegistry(backend.has_repository)
            container_registry.start()
        project_images = ProjectImages(backend, local_images, container_registry, clocked)
        services = Services(backend=backend, tokens=tokens, storage=storage, images=project_images)
        config = uvicorn.Config(
            asgi_app(services, injector, recorder, time_scale),
            host="127.0.0.1",
            port=port,
            lifespan="off",
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
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
            project_images,
            tokens,
            api_url=root_url + API_PREFIX,
            s3_endpoint=storage.endpoint,
            concurrency=concurrency,
            timeout_scale=timeout_scale,
            docker=engine,
            profile=clocked,
        )
        backend.executor = scheduler
        if scheduler.job_users.unconfined:
            logging.getLogger("htc_emulator").warning(UNCONFINED_WARNING.format(reason=scheduler.job_users.unconfined))
        sweeper = RetentionSweeper(backend, time_scale)
        if RefreshTicker.needed(backend):
            ticker = RefreshTicker(backend)
        yield Emulator(
            root_url=root_url,
            api_key=api_key,
            storage=storage,
            backend=backend,
            images=local_images,
            faults=injector,
            scheduler=scheduler,
            recorder=recorder,
            time_scale=time_scale,
        )
    finally:
        if server is not None:
            server.should_exit = True
            thread.join(timeout=10)
        if scheduler is not None:
            scheduler.stop()
        if sweeper is not None:
            sweeper.stop()
        if ticker is not None:
            ticker.stop()
        if storage is not None:
            storage.stop()
        if container_registry is not None:
            container_registry.stop()
            # Names under the stopped registry (pulled by jobs, tagged for a push) now lead nowhere.
            engine.untag_registry(container_registry.host)
