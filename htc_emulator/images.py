"""Local container images: run a Dockerfile's files without building it.

``--image NAME:TAG=docker/Dockerfile`` registers an image. Its ``COPY`` and
``ADD`` lines say which project file appears at which container path, so a
job command such as ``python /opt/face_tagger.py`` can run directly on the
host as ``<this interpreter> <project>/face_tagger/face_tagger.py``. Only
the final build stage counts, as in ``docker build``.

With a Docker engine (``--docker``), images pushed to the emulator's real
registry run as containers instead (see :class:`DockerEngine`).
"""

from __future__ import annotations

import base64
import glob
import json
import os
import posixpath
import re
import secrets
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# The spec's imageName pattern; the platform matches it against the whole name.
IMAGE_NAME_RE = re.compile(
    r"(?:[a-z0-9]+(?:[._-][a-z0-9]+)*/)*[a-z0-9]+(?:[._-][a-z0-9]+)*"
    r"(:[\_a-zA-Z0-9]([\-\.\_a-zA-Z0-9])*)?"
)
_PYTHON_RE = re.compile(r"(?:/usr(?:/local)?/bin/)?python(?:3(?:\.\d+)?)?")
_COPY_FLAG_RE = re.compile(r"--[a-z-]+(=\S*)?")


class DockerfileError(ValueError):
    """The Dockerfile can't be mapped onto project files."""


def normalize_image_name(name: str) -> str:
    """``repo`` means ``repo:latest``, as for ``docker pull``."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


@dataclass(frozen=True)
class LocalImage:
    """A registered image: container paths mapped to host paths."""

    name: str
    dockerfile: Path
    context: Path
    # (container path, host path), longest container path first.
    paths: tuple[tuple[str, Path], ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    default_command: tuple[str, ...] = ()

    @property
    def repository(self) -> str:
        return self.name.rsplit(":", 1)[0]

    def host_path(self, container_path: str) -> str | None:
        """Where a container path lives on the host, if a COPY put it there."""
        for target, source in self.paths:
            if container_path == target:
                return str(source)
            if container_path.startswith(target.rstrip("/") + "/") and source.is_dir():
                return str(source / container_path[len(target.rstrip("/")) + 1 :])
        return None

    def local_command(self, commands: list[str]) -> list[str]:
        """The host argv for a job's ``commands``.

        ``python`` becomes this interpreter (which has the project's pinned
        packages) and copied container paths become project files. Words
        inside shell strings (``sh -c "..."``) are left alone.
        """
        argv = list(commands) or list(self.default_command)
        if not argv:
            raise DockerfileError(f"image {self.name} has no CMD and the job gave no commands")
        if _PYTHON_RE.fullmatch(argv[0]):
            argv[0] = sys.executable
        return [argv[0]] + [self.host_path(arg) or arg for arg in argv[1:]]


def _logical_lines(text: str) -> list[str]:
    """Instruction lines with comments dropped and ``\\`` continuations joined."""
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        lines.append(current)
        current = ""
    if current.strip():
        lines.append(current)
    return lines


def _words(arguments: str) -> list[str]:
    """Exec form (JSON array) or shell-like words."""
    if arguments.startswith("["):
        try:
            words = json.loads(arguments)
        except json.JSONDecodeError as exc:
            raise DockerfileError(f"bad JSON array: {arguments}") from exc
        if not all(isinstance(w, str) for w in words):
            raise DockerfileError(f"bad JSON array: {arguments}")
        return words
    return shlex.split(arguments)


def _env_pairs(arguments: str) -> dict[str, str]:
    words = shlex.split(arguments)
    if words and "=" not in words[0]:
        # Legacy form: ENV NAME value with spaces
        return {words[0]: arguments.split(None, 1)[1].strip() if len(words) > 1 else ""}
    return dict(word.split("=", 1) for word in words if "=" in word)


def _copy_sources(pattern: str, context: Path) -> list[Path]:
    if posixpath.isabs(pattern) or ".." in Path(pattern).parts:
        raise DockerfileError(f"COPY source outside the build context: {pattern}")
    matches = sorted(glob.glob(str(context / pattern)))
    if not matches:
        raise DockerfileError(f"COPY source not found in {context}: {pattern}")
    return [Path(m).resolve() for m in matches]


def parse_dockerfile(name: str, dockerfile: Path, context: Path) -> LocalImage:
    """Read the final stage's COPY/ADD, ENV, WORKDIR, ENTRYPOINT and CMD."""
    text = dockerfile.read_text(encoding="utf-8")
    paths: dict[str, Path] = {}
    env: dict[str, str] = {}
    workdir = "/"
    entrypoint: list[str] = []
    cmd: list[str] = []
    for line in _logical_lines(text):
        instruction, _, arguments = line.partition(" ")
        instruction, arguments = instruction.upper(), arguments.strip()
        if instruction == "FROM":
            paths, env, workdir, entrypoint, cmd = {}, {}, "/", [], []
        elif instruction == "WORKDIR":
            workdir = posixpath.normpath(posixpath.join(workdir, arguments))
        elif instruction == "ENV":
            env.update(_env_pairs(arguments))
        elif instruction == "ENTRYPOINT":
            entrypoint = _words(arguments) if arguments.startswith("[") else ["/bin/sh", "-c", arguments]
        elif instruction == "CMD":
            cmd = _words(arguments) if arguments.startswith("[") else ["/bin/sh", "-c", arguments]
        elif instruction in ("COPY", "ADD"):
            words = _words(arguments)
            flags = [w for w in words if _COPY_FLAG_RE.fullmatch(w)]
            if any(f.startswith("--from") for f in flags):
                continue  # copied from another stage or image: nothing on the host to map
            words = [w for w in words if w not in flags]
            if len(words) < 2:
                raise DockerfileError(f"{instruction} needs a source and a destination: {line}")
            *patterns, dest = words
            dest = posixpath.normpath(posixpath.join(workdir, dest)) + ("/" if dest.endswith("/") else "")
            sources = [s for p in patterns for s in _copy_sources(p, context)]
            into_dir = dest.endswith("/") or len(sources) > 1
            for source in sources:
                if source.is_dir():
                    paths[dest.rstrip("/") or "/"] = source
                elif into_dir:
                    paths[posixpath.join(dest, source.name)] = source
                else:
                    paths[dest] = source
    ordered = tuple(sorted(paths.items(), key=lambda item: len(item[0]), reverse=True))
    return LocalImage(
        name=name,
        dockerfile=dockerfile,
        context=context,
        paths=ordered,
        env={k: v for k, v in env.items() if k not in ("PATH", "HOME")},
        default_command=tuple(entrypoint + cmd),
    )


class ImageRegistry:
    """The images the emulator can run, by ``name:tag``."""

    def __init__(self, project_root: Path = PROJECT_ROOT) -> None:
        self.project_root = project_root
        self._images: dict[str, LocalImage] = {}

    def register(
        self, name: str, dockerfile: str | os.PathLike, context: str | os.PathLike | None = None
    ) -> LocalImage:
        """Register ``name`` (``repo:tag``) built from ``dockerfile``.

        Relative paths are taken from the project root, which is also the
        default build context (the tutorial builds with ``docker build -f
        docker/Dockerfile .`` from there).
        """
        name = normalize_image_name(name)
        if not IMAGE_NAME_RE.fullmatch(name):
            raise DockerfileError(f"invalid image name: {name!r}")
        dockerfile_path = (self.project_root / dockerfile).resolve()
        context_path = (self.project_root / (context or ".")).resolve()
        if not dockerfile_path.is_file():
            raise DockerfileError(f"Dockerfile not found: {dockerfile_path}")
        image = parse_dockerfile(name, dockerfile_path, context_path)
        self._images[name] = image
        return image

    def get(self, name: str) -> LocalImage | None:
        return self._images.get(normalize_image_name(name))

    def names(self) -> list[str]:
        return sorted(self._images)


class DockerEngine:
    """Runs job attempts as real containers on a Docker engine.

    Every container carries the label ``htc-emulator.<instance>``, so the
    emulator can remove whatever one of its jobs left when it stops. Secrets
    reach the container as ``-e NAME`` (the value is taken from the docker
    client's environment), never as values on the command line, and registry
    credentials go through a private client configuration file.
    """

    LABEL = "htc-emulator"

    def __init__(self, executable: str = "docker", instance: str | None = None) -> None:
        self.executable = executable
        self.instance = instance or secrets.token_hex(6)

    def _docker(self, *args: str, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(
            [self.executable, *args], capture_output=True, text=True, timeout=timeout, check=False, **kwargs
        )

    def available(self) -> bool:
        try:
            return self._docker("info", "--format", "{{.ServerVersion}}", timeout=10).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    def pull(self, reference: str, username: str, password: str, config_dir: Path) -> str | None:
        """Pull ``reference`` with these registry credentials; the error text if it fails."""
        registry = reference.split("/", 1)[0]
        auth = base64.b64encode(f"{username}:{password}".encode()).decode()
        config_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        config = config_dir / "config.json"
        config.touch(mode=0o600)
        config.write_text(json.dumps({"auths": {registry: {"auth": auth}}}))
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

    def untag_registry(self, registry: str) -> list[str]:
        """Remove the local image names under ``registry`` (``host:port``); returns them.

        An image stays while another name holds it (the user's own build does).
        """
        listed = self._docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}")
        names = [name for name in listed.stdout.split() if name.startswith(f"{registry}/")]
        if names:
            self._docker("image", "rm", *names)
        return names

    def remove_all(self) -> list[str]:
        """Remove every container of this emulator instance; returns their ids."""
        listed = self._docker("ps", "--all", "--quiet", "--filter", f"label={self.LABEL}.{self.instance}")
        ids = listed.stdout.split()
        if ids:
            self._docker("rm", "--force", *ids)
        return ids
