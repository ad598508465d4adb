"""The Docker engine, driven through its CLI: job attempts as real containers.

:class:`DockerEngine` pulls, runs, stops, inspects and removes the containers of
one emulator instance; :class:`ContainerProcess` is one attempt's ``docker run``,
with the same ``wait``/``stop`` as a process-mode job
(:class:`htc_emulator.launcher.JobProcess`), so the scheduler runs either alike.
"""

from __future__ import annotations

import base64
import json
import math
import os
import secrets
import signal
import subprocess
import threading
from pathlib import Path

from . import leftovers
from .child_env import without_api_key


class DockerEngine:
    """Runs job attempts as real containers on a Docker engine.

    Every container carries the label ``htc-emulator.<instance>``, so the
    emulator can remove whatever one of its jobs left when it stops, and
    ``htc-emulator.owner.<owner>`` (:mod:`htc_emulator.leftovers`), so that the
    next emulator to start removes those of one that was killed. Secrets
    reach the container as ``-e NAME`` (the value is taken from the docker
    client's environment), never as values on the command line, and registry
    credentials go through a private client configuration file.
    """

    LABEL = "htc-emulator"
    # Labels without a value (no "=" in the arguments): the marker, and the marker and the owner as one key.
    OWNER_LABEL = "htc-emulator.owner"

    def __init__(self, executable: str = "docker", instance: str | None = None) -> None:
        self.executable = executable
        self.instance = instance or secrets.token_hex(6)
        self.owner = leftovers.current_owner()

    def _docker(self, *args: str, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(
            [self.executable, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=without_api_key(),
            **kwargs,
        )

    def available(self) -> bool:
        try:
            return self._docker("info", "--format", "{{.ServerVersion}}", timeout=10).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    def pull(self, reference: str, username: str, password: str, config_dir: Path) -> str | None:
        """Pull ``reference`` with these registry credentials; the error text if it fails."""
        registry_host = reference.split("/", 1)[0]
        auth = base64.b64encode(f"{username}:{password}".encode()).decode()
        config_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        config = config_dir / "config.json"
        config.touch(mode=0o600)
        config.write_text(json.dumps({"auths": {registry_host: {"auth": auth}}}))
        try:
            result = self._docker("--config", str(config_dir), "pull", "--quiet", reference)
        finally:
            config.unlink()
        return None if result.returncode == 0 else (result.stderr or result.stdout).strip()

    def run_argv(
        self,
        reference: str,
        commands: list[str],
        env_names: list[str],
        container_name: str,
        *,
        vcpus: float | None = None,
        memory_mib: int | None = None,
    ) -> list[str]:
        """``docker run`` for one job attempt; ``--network host`` reaches the emulator on loopback.

        ``memory_mib`` is a hard limit without swap, so a job that exceeds it is killed
        (OOM), as on the platform; ``vcpus`` is capped at this machine's CPUs.
        """
        argv = [
            self.executable,
            "run",
            "--network",
            "host",
            "--name",
            container_name,
            "--label",
            f"{self.LABEL}.{self.instance}",
            "--label",
            self.OWNER_LABEL,
            "--label",
            f"{self.OWNER_LABEL}.{self.owner}",
        ]
        if vcpus:
            argv += ["--cpus", f"{min(float(vcpus), float(os.cpu_count() or 1)):g}"]
        if memory_mib:
            argv += ["--memory", f"{int(memory_mib)}m", "--memory-swap", f"{int(memory_mib)}m"]
        for env_name in env_names:
            argv += ["-e", env_name]
        return argv + [reference] + list(commands)

    def stop(self, container_name: str, grace_seconds: int) -> None:
        """SIGTERM, then SIGKILL after ``grace_seconds`` (``docker stop -t``)."""
        self._docker("stop", "-t", str(grace_seconds), container_name, timeout=grace_seconds + 60)

    def oom_killed(self, container_name: str) -> bool:
        result = self._docker("inspect", "--format", "{{.State.OOMKilled}}", container_name)
        return result.stdout.strip() == "true"

    def remove(self, container_name: str) -> None:
        self._docker("rm", "--force", container_name)

    def untag_registry(self, registry_host: str) -> list[str]:
        """Remove the local image names under ``registry_host`` (``host:port``); returns them.

        An image stays while another name holds it (the user's own build does).
        """
        listed = self._docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}")
        names = [name for name in listed.stdout.split() if name.startswith(f"{registry_host}/")]
        if names:
            self._docker("image", "rm", *names)
        return names

    def remove_leftovers(self) -> list[str]:
        """Remove the containers of emulators that are provably gone (killed); returns their ids."""
        listed = self._docker("ps", "--all", "--filter", f"label={self.OWNER_LABEL}", "--format", "{{.ID}} {{.Labels}}")
        ids = []
        for container, _, labels in (line.partition(" ") for line in listed.stdout.splitlines()):
            keys = (label.partition("=")[0] for label in labels.split(","))
            owners = [
                key.removeprefix(f"{self.OWNER_LABEL}.") for key in keys if key.startswith(f"{self.OWNER_LABEL}.")
            ]
            if owners and leftovers.is_gone(owners[0]):
                ids.append(container)
        if ids:
            self._docker("rm", "--force", *ids)
        return ids

    def remove_all(self) -> list[str]:
        """Remove every container of this emulator instance; returns their ids."""
        listed = self._docker("ps", "--all", "--quiet", "--filter", f"label={self.LABEL}.{self.instance}")
        ids = listed.stdout.split()
        if ids:
            self._docker("rm", "--force", *ids)
        return ids


class ContainerProcess:
    """A job's ``docker run``, with the same wait/stop as a process-mode job."""

    def __init__(self, docker: DockerEngine, container_name: str, client: subprocess.Popen) -> None:
        self.docker, self.container_name, self.client = docker, container_name, client
        self.stdout = client.stdout
        self.out_of_memory = False

    def wait(self, timeout: float | None = None) -> int:
        """The container's exit code; then whether the engine killed it for memory, and it is removed."""
        returncode = self.client.wait(timeout=timeout)
        self._kill_client_group()
        self.out_of_memory = self.docker.oom_killed(self.container_name)
        self.docker.remove(self.container_name)
        return returncode

    def stop(self, grace: float) -> None:
        """``docker stop`` (SIGTERM, SIGKILL after ``grace``) in the background: a cancel must not wait."""
        if grace <= 0:
            self.docker.stop(self.container_name, 0)
            self._kill_client_group()
            return
        threading.Thread(target=self.docker.stop, args=(self.container_name, math.ceil(grace)), daemon=True).start()

    def _kill_client_group(self) -> None:
        try:
            os.killpg(self.client.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
