"""Runs jobs as local processes (or containers), a few at a time.

One intake thread moves submitted jobs to the provider queue
(SUBMITTED_TO_PROVIDER, then RUNNABLE); ``concurrency`` worker threads take
RUNNABLE jobs in submission order and run one attempt each: STARTING, then
RUNNING once the process exists, then SUCCEEDED or FAILED (or back to
RUNNABLE when ``retryStrategy.maxRetries`` allows another attempt).
Processes are started, contained and stopped by :mod:`htc_emulator.launcher`.

Each worker thread stands for one of the platform's instances: under the
platform profile a job waits (RUNNABLE) while a cold instance starts, and
(STARTING) while its image is pulled onto an instance that has not run it
(:mod:`htc_emulator.platform_profile`). A job's timeout and its stop grace
period bound real work, so they have a scale of their own (``timeout_scale``).
"""

from __future__ import annotations

import itertools
import os
import queue
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from .auth import TokenAuthority
from .docker_engine import ContainerProcess, DockerEngine
from .job_logs import LogSplitter
from .job_users import JobUsers
from .launcher import JobProcess, ProcessLauncher
from .local_images import DockerfileError, LocalImage, normalize_image_name
from .models import Backend, Job
from .platform_profile import IDEAL, PlatformProfile
from .presigned_tokens import PresignedTokens
from .project_images import ProjectImages

INTAKE_RECHECK_SECONDS = 0.1
# How long past a job's timeout its token stays valid (for a final upload).
JOB_TOKEN_GRACE_SECONDS = 600
# Between SIGTERM and SIGKILL when a job is stopped (timeout, cancel): docker stop's default.
STOP_GRACE_SECONDS = 10
MIB = 1 << 20
LOG_CHUNK_BYTES = 1 << 16


@dataclass
class Instance:
    """One job slot seen as the platform's instance: cold until started, warm while it keeps busy."""

    idle_since: float | None = None  # time.monotonic() when its last attempt ended; None: never started
    images: set[str] = field(default_factory=set)  # pulled onto it


class Scheduler:
    """Executes the backend's jobs; the backend calls :meth:`enqueue` and :meth:`kill`.

    Whoever assembles the emulator makes it the backend's executor (``backend.executor``).
    """

    def __init__(
        self,
        backend: Backend,
        images: ProjectImages,
        tokens: TokenAuthority,
        *,
        api_url: str,
        s3_endpoint: str,
        concurrency: int | None = None,
        timeout_scale: float = 1.0,
        docker: DockerEngine | None = None,
        profile: PlatformProfile = IDEAL,
    ) -> None:
        if timeout_scale <= 0:
            raise ValueError("timeout_scale must be positive")
        self.backend = backend
        self.images = images
        self.tokens = tokens
        self.api_url = api_url
        self.s3_endpoint = s3_endpoint
        self.concurrency = concurrency or os.cpu_count() or 1
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.timeout_scale = timeout_scale
        self.profile = profile
        self.docker = docker
        # Jobs run pushed images (as containers) only where a Docker engine runs them.
        self.container_registry = images.container_registry if docker is not None else None
        self._scratch = Path(tempfile.mkdtemp(prefix="htc-emulator-jobs-"))
        self._attempts = itertools.count()
        # Registered images run as processes in either mode; pushed ones as containers.
        self.launcher = ProcessLauncher(self._base_environment(self._scratch))
        # Process-mode jobs as users of their own where this process is root (job_users says why not elsewhere).
        self.job_users = JobUsers(self._scratch, self.launcher)
        self._intake: queue.Queue = queue.Queue()
        self._runnable: queue.Queue = queue.Queue()
        # Attempts' folders to remove: by a thread of their own, off the job slot's path, because an rmdir on
        # ext4 mounted with discard (this machine's root) waits 0.5 to 1.5 ms for the disk.
        self._finished_folders: queue.Queue = queue.Queue()
        self._running: dict[str, JobProcess | ContainerProcess] = {}
        # Job id -> the registry reference its last container attempt ran: what a run's report reads.
        self.container_jobs: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        # A job's token, signed while it waits in the queue (a few jobs ahead of the job slots).
        self.presigned = PresignedTokens(self._job_token, lookahead=self.concurrency)
        self._threads = [threading.Thread(target=self._intake_loop, name="htc-intake", daemon=True)]
        self._janitor = threading.Thread(target=self._janitor_loop, name="htc-janitor", daemon=True)
        self._threads.append(self._janitor)
        self._threads += [
            threading.Thread(target=self._worker_loop, args=(Instance(),), name=f"htc-worker-{i}", daemon=True)
            for i in range(self.concurrency)
        ]
        for thread in self._threads:
            thread.start()

    # --- the backend's interface ----------------------------------------------

    def enqueue(self, jobs: list[Job]) -> None:
        self._intake.put(jobs)

    def kill(self, job: Job) -> None:
        """Stop a cancelled job as ``docker stop`` does: SIGTERM, then SIGKILL after the grace period."""
        with self._lock:
            process = self._running.get(job.job_id)
        if process is not None:
            process.stop(self.stop_grace)

    @property
    def stop_grace(self) -> float:
        return STOP_GRACE_SECONDS * self.timeout_scale

    def stop(self) -> None:
        """Kill running jobs and stop the threads (queued jobs stay queued)."""
        self._stopping.set()
        with self._lock:
            running = list(self._running.values())
        for process in running:
            process.stop(0)
        self._intake.put(None)
        for _ in range(self.concurrency):
            self._runnable.put(None)
        for thread in self._threads:
            if thread is not self._janitor:
                thread.join(timeout=10)
        self._finished_folders.put(None)  # after the attempts' threads, whose folders it still removes
        self._janitor.join(timeout=10)
        self.presigned.close()
        self.launcher.close()
        if self.docker is not None:
            self.docker.remove_all()
        shutil.rmtree(self._scratch, ignore_errors=True)

    # --- threads ------------------------------------------------------------

    def _intake_loop(self) -> None:
        # Jobs the vCPU limits hold in SUBMITTED_TO_RESCALE are looked at again
        # every INTAKE_RECHECK_SECONDS: capacity frees and limits change meanwhile.
        waiting: list[Job] = []
        while True:
            try:
                jobs = self._intake.get(timeout=INTAKE_RECHECK_SECONDS if waiting else None)
            except queue.Empty:
                jobs = []
            if jobs is None:
                return
            admitted, waiting = self.backend.admit(waiting + jobs)
            for job in admitted:
                if self.backend.advance(job, "RUNNABLE", "Waiting for capacity"):
                    self.presigned.expect(job)
                    self._runnable.put(job)

    def _janitor_loop(self) -> None:
        while (folder := self._finished_folders.get()) is not None:
            remove_tree(folder)

    def _worker_loop(self, instance: Instance) -> None:
        while (job := self._runnable.get()) is not None:
            if self._stopping.is_set() or not self._start_instance(instance):
                continue
            if not self.backend.claim_for_start(job) or not self._pull_image(instance, job):
                instance.idle_since = time.monotonic()
                continue
            rerun = self._run_attempt(job)
            instance.idle_since = time.monotonic()
            if rerun and not self._stopping.is_set():
                self._runnable.put(job)

    def _start_instance(self, instance: Instance) -> bool:
        """Wait while a cold instance starts (the job stays RUNNABLE); False if the emulator stops meanwhile."""
        idle = None if instance.idle_since is None else time.monotonic() - instance.idle_since
        if not self.profile.instance_start_seconds or (idle is not None and idle <= self.profile.instance_idle_seconds):
            return True
        instance.images.clear()  # a new instance has pulled nothing
        return not self._stopping.wait(self.profile.instance_start_seconds)

    def _pull_image(self, instance: Instance, job: Job) -> bool:
        """Wait while the job's image is pulled onto an instance that has not run it (the job is STARTING)."""
        image = normalize_image_name(job.definition["imageName"])
        if not self.profile.image_pull_seconds or image in instance.images:
            return True
        instance.images.add(image)
        return not self._stopping.wait(self.profile.image_pull_seconds)

    # --- one attempt ----------------------------------------------------------

    def _run_attempt(self, job: Job) -> bool:
        """Run one attempt to its end; True if the job should run again."""
        image_name = job.definition["imageName"]
        try:
            reference = self._pushed_reference(job, image_name)
        except requests.RequestException as exc:
            return self.backend.finish_attempt(
                job, "FAILED", f"CannotPullContainerError: registry: {exc}", failure_code="ErrorStartingContainer"
            )
        if reference is not None:
            return self._execute(job, None, None, reference)
        image = self.images.local_image(job.project_id, image_name)
        if image is None:
            return self.backend.finish_attempt(
                job,
                "FAILED",
                f"CannotPullContainerError: {image_name} is not in the project's container registry",
                failure_code="ErrorStartingContainer",
            )
        # Named by a counter in a folder of its own, made as mkdtemp makes it (0700): mkdtemp's random names and
        # their checks cost a no-op job's attempt a twentieth of a millisecond.
        workdir = self._scratch / f"attempt-{next(self._attempts)}"
        workdir.mkdir(mode=0o700)
        user = self.job_users.next(tuple(source for _, source in image.paths))
        try:
            self.job_users.hand_over(workdir, user)
            return self._execute(job, image, workdir, user=user)
        finally:
            self._finished_folders.put(workdir)

    def _pushed_reference(self, job: Job, image_name: str) -> str | None:
        """The registry reference of the job's image if it was pushed to the project's registry."""
        if self.container_registry is None:
            return None
        return self.images.pushed_reference(job.project_id, image_name)

    def _execute(
        self,
        job: Job,
        image: LocalImage | None,
        workdir: Path | None,
        reference: str | None = None,
        user: dict | None = None,
    ) -> bool:
        """One attempt: a process for a registered image (as ``user``), a container for a pushed one (``reference``)."""
        env = self._job_environment(job, image, workdir)
        commands = list(job.definition.get("commands") or [])
        try:
            if reference is not None:
                problem = self.docker.ensure_image(
                    reference,
                    self.container_registry.digest(job.project_id, normalize_image_name(job.definition["imageName"])),
                    lambda: self.container_registry.pull_credentials(job.project_id),
                )
                if problem:
                    return self.backend.finish_attempt(
                        job, "FAILED", f"CannotPullContainerError: {problem}", failure_code="ErrorStartingContainer"
                    )
                # Returns once the container runs: its create and start are not the attempt's time (below).
                process = self.docker.start(
                    self.docker.create_parameters(
                        reference,
                        commands,
                        env,
                        self._container_name(job),
                        vcpus=job.definition.get("maxVCpus"),
                        memory_mib=job.definition.get("maxMemory"),
                    )
                )
                self.container_jobs[job.job_id] = reference
            else:
                memory = job.definition.get("maxMemory")
                process = self.launcher.start(
                    image.local_command(commands),
                    env,
                    workdir,
                    memory_limit=memory * MIB if memory else None,
                    user=user,
                )
        except (OSError, DockerfileError) as exc:
            return self.backend.finish_attempt(
                job,
                "FAILED",
                f"CannotStartContainerError: {getattr(exc, 'strerror', None) or exc}",
                failure_code="ErrorStartingContainer",
            )
        with self._lock:
            self._running[job.job_id] = process
        # A cancel that came after claim_for_start found no process to kill, so it is killed
        # here, and a job that never ran gets no RUNNING event: advance() refuses a cancelled
        # job under the backend's lock. A cancel after that finds the process in _running.
        if self._stopping.is_set() or not self.backend.advance(job, "RUNNING", f"Running attempt {job.attempt}"):
            process.stop(0)
        # The attempt's time counts from here, once its process or container runs, as the platform counts a
        # timeout from the attempt's startedAt (htc_emulator.platform_profile): not the image's pull, nor
        # the container's create and start.
        deadline = time.monotonic() + job.timeout_seconds * self.timeout_scale
        timed_out = not self._pump_logs(job, process, deadline)
        if not timed_out:
            try:  # the log closed; the job may still run (it closed its streams) until the deadline
                returncode = process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
        if timed_out:
            process.stop(self.stop_grace)
            self._pump_logs(job, process, None)
            returncode = process.wait()
        with self._lock:
            self._running.pop(job.job_id, None)
        # Like a container runtime: death by signal N is exit code 128 + N.
        exit_code = returncode if returncode >= 0 else 128 - returncode
        if process.out_of_memory:
            return self.backend.finish_attempt(
                job,
                "FAILED",
                "OutOfMemoryError: Container killed due to memory usage",
                failure_code="ErrorNotEnoughMemory",
                exit_code=exit_code,
            )
        if timed_out:
            return self.backend.finish_attempt(
                job,
                "FAILED",
                "Job attempt duration exceeded timeout",
                failure_code="ErrorTimeout",
                exit_code=exit_code,
            )
        if exit_code == 0:
            return self.backend.finish_attempt(job, "SUCCEEDED", "Completed", exit_code=0)
        return self.backend.finish_attempt(
            job,
            "FAILED",
            "Essential container in task exited",
            failure_code="ErrorNonZeroContainerExitCode",
            exit_code=exit_code,
        )

    @staticmethod
    def _base_environment(workdir: Path) -> dict[str, str]:
        """What every process-mode job starts from (and the launcher's template too)."""
        env = {
            "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", os.defpath)]),
            "HOME": str(workdir),
            "TMPDIR": str(workdir),
            "LANG": "C.UTF-8",
            # Keeps the project tree free of __pycache__ from job imports.
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        if sys.prefix != sys.base_prefix:
            env["VIRTUAL_ENV"] = sys.prefix
        return env

    def _job_environment(self, job: Job, image: LocalImage | None, workdir: Path | None) -> dict[str, str]:
        """Minimal base, the image's ENV, the user's envs, then the platform's variables."""
        if image is None:
            env = {}  # the container brings its own base environment and ENV lines
        else:
            env = {**self._base_environment(workdir), **image.env}
        env.update({pair["name"]: pair["value"] for pair in job.definition.get("envs", [])})
        lifetime = self._token_lifetime(job)
        ids = {"project_id": job.project_id, "task_id": job.task_id, "job_id": job.job_id}
        token = self.presigned.take(job)
        env.update(
            {
                "AWS_BATCH_JOB_ARRAY_INDEX": str(job.index),
                "AWS_BATCH_JOB_ID": job.job_id,
                "AWS_BATCH_JOB_ATTEMPT": str(job.attempt),
                "RESCALE_HTC_PROJECT_ID": job.project_id,
                "RESCALE_HTC_TASK_ID": job.task_id,
                "RESCALE_HTC_REGION": job.region,
                "RESCALE_HTC_BEARER_TOKEN": token,
                "RESCALE_HTC_REFRESH_TOKEN": self.tokens.refresh_token(**ids, lifetime=lifetime),
                "RESCALE_HTC_API_URL": self.api_url,
                "AWS_ENDPOINT_URL_S3": self.s3_endpoint,
            }
        )
        return env

    def _token_lifetime(self, job: Job) -> int:
        return int(job.timeout_seconds * self.timeout_scale) + JOB_TOKEN_GRACE_SECONDS

    def _job_token(self, job: Job) -> str:
        ids = {"project_id": job.project_id, "task_id": job.task_id, "job_id": job.job_id}
        return self.tokens.job_token(**ids, lifetime=self._token_lifetime(job), extra_claims=job.claims)

    def _pump_logs(self, job: Job, process: JobProcess | ContainerProcess, deadline: float | None) -> bool:
        """stdout and stderr, merged like a container's log stream, as log events (:mod:`htc_emulator.job_logs`),
        until the stream closes (True) or ``deadline`` (``time.monotonic()``) passes (False).

        Read by the attempt's own thread: a reader thread per job cost more than the no-op job itself.
        """
        fd = process.stdout.fileno()
        splitter = LogSplitter()
        while True:
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                    break
            chunk = os.read(fd, LOG_CHUNK_BYTES)
            if not chunk:
                process.stdout.close()
                self.backend.append_logs(job, splitter.close())
                return True
            self.backend.append_logs(job, splitter.feed(chunk))
        self.backend.append_logs(job, splitter.close())  # a line cut at the deadline is one more line
        return False

    @staticmethod
    def _container_name(job: Job) -> str:
        return f"htc-emulator-{job.job_id.replace(':', '-')}-{job.attempt}"


def remove_tree(path: Path) -> None:
    """``shutil.rmtree``, after one ``rmdir`` that is all most attempts' folders need."""
    try:
        path.rmdir()
    except OSError:
        shutil.rmtree(path, ignore_errors=True)
