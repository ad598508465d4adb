"""Local container images: run a Dockerfile's files without building it.

``--image NAME:TAG=docker/Dockerfile`` registers an image. Its ``COPY`` and
``ADD`` lines say which project file appears at which container path, so a
job command such as ``python /opt/face_tagger.py`` can run directly on the
host as ``<this interpreter> <project>/face_tagger/face_tagger.py``. Only
the final build stage counts, as in ``docker build``.

These are the emulator's own images, not the container registry's: with a
Docker engine (``--docker``), images pushed to the emulator's real registry
(:mod:`htc_emulator.container_registry`) run as containers instead
(:mod:`htc_emulator.docker_engine`).
"""

from __future__ import annotations

import glob
import json
import os
import posixpath
import re
import shlex
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


class LocalImages:
    """The images registered from Dockerfiles, which jobs run as processes, by ``name:tag``."""

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
