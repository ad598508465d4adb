"""The Docker engine, driven through its API (the ``docker`` package): job attempts as real containers.

:class:`DockerEngine` pulls (once per image digest), creates, starts, stops, inspects and removes
the containers of one emulator instance over the engine's socket, as ``docker run`` does but
without a client process per step; :class:`ContainerProcess` is one attempt's running container,
with the same ``stdout``/``wait``/``stop`` as a process-mode job
(:class:`htc_emulator.launcher.JobProcess`), so the scheduler runs either alike.
"""

from __future__ import annotations

import math
import os
import secrets
import subprocess
import threading
from collections.abc import Callable

import docker
import requests
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.utils import parse_repository_tag
from docker.utils.socket import frames_iter

from . import leftovers

# Connections to the engine kept open: each running job holds one while it waits, and one for its output.
MAX_CONNECTIONS = 32
# A create, start or pull on a busy engine can take minutes (the CLI waited as long).
API_TIMEOUT_SECONDS = 600
CPU_SHARES_PER_VCPU = 1024  # AWS Batch's, and docker's default weight for a container
MAX_CPU_SHARES = 262_144  # the kernel's largest cpu.shares


class DockerEngine:
    """Runs job attempts as real containers on a Docker engine.

    Every container carries the label ``htc-emulator.<instance>``, so the
    emulator can remove whatever one of its jobs left when it stops, and
    ``htc-emulator.owner.<owner>`` (:mod:`htc_emulator.leftovers`), so that the
    next emulator to start removes those of one that was killed. Secrets reach
    the engine in the body of the create request over its socket, and registry
    credentials in the pull request's ``X-Registry-Auth`` header: never on a
    command line, never in a file.
    """

    LABEL = "htc-emulator"
    # Labels without a value: the marker, and the marker and the owner as one key.
    OWNER_LABEL = "htc-emulator.owner"

    def __init__(self, instance: str | None = None, api: docker.APIClient | None = None) -> None:
        self.instance = instance or secrets.token_hex(6)
        self.owner = leftovers.current_owner()
        self._api = api
        self._lock = threading.Lock()
        self._pulls: dict[str, threading.Lock] = {}

    @property
    def api(self) -> docker.APIClient:
        """The engine's API client (``DOCKER_HOST`` and friends, as the CLI reads them), made on first use."""
        with self._lock:
            if self._api is None:
                self._api = docker.from_env(timeout=API_TIMEOUT_SECONDS, max_pool_size=MAX_CONNECTIONS).api
            return self._api

    @staticmethod
    def available() -> bool:
        """Whether a Docker engine answers where ``DOCKER_HOST`` (or the default socket) says, as ``docker info``."""
        try:
            client = docker.from_env(timeout=10)
        except (DockerException, requests.RequestException):
            return False
        try:
            return bool(client.ping())
        except (DockerException, requests.RequestException):
            return False
        finally:
            client.close()

    def close(self) -> None:
        """Close the connections to the engine (a later call opens new ones)."""
        with self._lock:
            if self._api is not None:
                self._api.close()
                self._api = None

    def ensure_image(
        self, reference: str, digest: str | None, credentials: Callable[[], tuple[str, str]]
    ) -> str | None:
        """Pull ``reference`` unless the engine holds it at ``digest`` already; the error text if the pull fails.

        ``digest`` is what the registry holds under the tag now (None if unknown: then it is pulled);
        ``credentials()`` gives (username, password) for the registry, asked for only when pulling.
        """
        repository, tag = parse_repository_tag(reference)
        with self._lock:
            pulling = self._pulls.setdefault(reference, threading.Lock())
        # Jobs that start together wait for one pull instead of each making their own.
        with pulling:
            try:
                if digest is not None and f"{repository}@{digest}" in self._repo_digests(reference):
                    return None
                username, password = credentials()
                auth = {"username": username, "password": password}
                for progress in self.api.pull(repository, tag, stream=True, decode=True, auth_config=auth):
                    if "error" in progress:
                        return str(progress["error"]).strip()
            except APIError as exc:
                return str(exc.explanation or exc).strip()
        return None

    def _repo_digests(self, reference: str) -> list[str]:
        try:
            return self.api.inspect_image(reference).get("RepoDigests") or []
        except ImageNotFound:
            return []

    def create_parameters(
        self,
        reference: str,
        commands: list[str],
        env: dict[str, str],
        container_name: str,
        *,
        vcpus: float | None = None,
        memory_mib: int | None = None,
    ) -> dict:
        """The create request for one job attempt, as ``docker run`` makes it; host networking reaches the
        emulator on loopback.

        ``memory_mib`` is a hard limit without swap, so a job that exceeds it is killed (OOM), as
        on the platform. ``vcpus`` is a relative weight, not a cap: AWS Batch on EC2 maps a job's
        vCPUs to ``CpuShares``, 1,024 a vCPU (Batch API reference, ContainerProperties ``vcpus``),
        so a job may use a core no other job wants; the kernel's largest weight bounds it.
        """
        limits = {}
        if vcpus:
            limits["cpu_shares"] = min(int(float(vcpus) * CPU_SHARES_PER_VCPU), MAX_CPU_SHARES)
        if memory_mib:
            limits["mem_limit"] = limits["memswap_limit"] = int(memory_mib) * (1 << 20)
        return {
            "image": reference,
            "command": list(commands) or None,  # none: the image's CMD
            "environment": dict(env),
            "name": container_name,
            "labels": dict.fromkeys(
                (f"{self.LABEL}.{self.instance}", self.OWNER_LABEL, f"{self.OWNER_LABEL}.{self.owner}"), ""
            ),
            "host_config": self.api.create_host_config(network_mode="host", **limits),
        }

    def start(self, parameters: dict) -> ContainerProcess:
        """Create the container, attach to its output, start it (``docker run``); ``OSError`` if it cannot start.

        It returns once the engine says the container runs: that is when the attempt starts.
        """
        try:
            container = self.api.create_container(**parameters)["Id"]
        except APIError as exc:
            raise OSError(str(exc.explanation or exc)) from exc
        try:
            # Attached before it starts, so not a byte of its output is missed.
            attached = self.api.attach_socket(container, params={"stdout": 1, "stderr": 1, "stream": 1})
            self.api.start(container)
        except APIError as exc:
            self.remove(container)
            raise OSError(str(exc.explanation or exc)) from exc
        return ContainerProcess(self, container, attached)

    def stop(self, container: str, grace_seconds: int) -> None:
        """SIGTERM, then SIGKILL after ``grace_seconds`` (``docker stop -t``)."""
        try:
            self.api.stop(container, timeout=grace_seconds)
        except (APIError, requests.RequestException):
            pass  # ended (and removed) meanwhile

    def finish(self, container: str, timeout: float | None) -> tuple[int, bool]:
        """Wait for the container to end; (exit code, whether the engine killed it for memory).

        ``subprocess.TimeoutExpired`` if it still runs after ``timeout`` seconds.
        """
        try:
            # A timeout of 0 would make the socket non-blocking; a millisecond asks "has it ended?".
            status = self.api.wait(container, timeout=None if timeout is None else max(timeout, 0.001))["StatusCode"]
        except requests.Timeout as exc:
            raise subprocess.TimeoutExpired(container, timeout) from exc
        try:
            return status, bool(self.api.inspect_container(container)["State"]["OOMKilled"])
        except NotFound:
            return status, False

    def remove(self, container: str) -> None:
        try:
            self.api.remove_container(container, force=True)
        except NotFound:
            pass

    def untag_registry(self, registry_host: str) -> list[str]:
        """Remove the local image names under ``registry_host`` (``host:port``); returns them.

        An image stays while another name holds it (the user's own build does).
        """
        names = [
            name
            for image in self.api.images()
            for name in image.get("RepoTags") or []
            if name.startswith(f"{registry_host}/")
        ]
        for name in names:
            try:
                self.api.remove_image(name)
            except NotFound:
                pass
        return names

    def remove_leftovers(self) -> list[str]:
        """Remove the containers of emulators that are provably gone (killed); returns their ids."""
        ids = []
        for container in self.api.containers(all=True, filters={"label": self.OWNER_LABEL}):
            owners = [
                key.removeprefix(f"{self.OWNER_LABEL}.")
                for key in container.get("Labels") or {}
                if key.startswith(f"{self.OWNER_LABEL}.")
            ]
            if owners and leftovers.is_gone(owners[0]):
                ids.append(container["Id"])
        for container in ids:
            self.remove(container)
        return ids

    def remove_all(self) -> list[str]:
        """Remove every container of this emulator instance; returns their ids."""
        ids = [c["Id"] for c in self.api.containers(all=True, filters={"label": f"{self.LABEL}.{self.instance}"})]
        for container in ids:
            self.remove(container)
        return ids


class ContainerProcess:
    """One attempt's running container, with the same stdout/wait/stop as a process-mode job.

    ``stdout`` is a pipe carrying the container's stdout and stderr as the engine interleaves them
    (the attach stream's frames, unwrapped by a thread of its own), closed when the container ends.
    """

    def __init__(self, engine: DockerEngine, container: str, attached) -> None:
        self.engine, self.container = engine, container
        self.returncode: int | None = None
        self.out_of_memory = False
        read_end, write_end = os.pipe()
        self.stdout = os.fdopen(read_end, "rb")
        self._copier = threading.Thread(target=self._copy_output, args=(attached, write_end), daemon=True)
        self._copier.start()

    @staticmethod
    def _copy_output(attached, write_end: int) -> None:
        try:
            for _, data in frames_iter(attached, tty=False):
                view = memoryview(data)
                while view:
                    view = view[os.write(write_end, view) :]
        except OSError:
            pass  # the reader went away, or the engine dropped the stream: the log ends here
        finally:
            os.close(write_end)
            # The HTTP response the socket came from owns the connection (attach_socket keeps it there).
            getattr(attached, "_response", attached).close()

    def wait(self, timeout: float | None = None) -> int:
        """The container's exit code; then whether the engine killed it for memory, and it is removed.

        ``subprocess.TimeoutExpired`` if it still runs after ``timeout`` seconds.
        """
        if self.returncode is None:
            self.returncode, self.out_of_memory = self.engine.finish(self.container, timeout)
            self.engine.remove(self.container)
        return self.returncode

    def stop(self, grace: float) -> None:
        """``docker stop`` (SIGTERM, SIGKILL after ``grace``) in the background: a cancel must not wait."""
        if grace <= 0:
            self.engine.stop(self.container, 0)
            return
        threading.Thread(target=self.engine.stop, args=(self.container, math.ceil(grace)), daemon=True).start()
