"""Build the worker image from ``docker/Dockerfile`` where no base image can be pulled.

The Dockerfile's base is a build argument (``BASE_IMAGE``, default
``python:3.12-slim``). Where the default cannot be pulled (no registry is
reachable), a stand-in base is made once from Debian packages: a
``debootstrap --variant=minbase`` root with ``python3`` and a virtual
environment on ``PATH``, without documentation or translations (as a slim
image), plus a wheelhouse of the Dockerfile's pinned packages that the host
downloads with its own pip settings, so the build
installs them offline (``/etc/pip.conf`` in the base: no index, only the
wheelhouse). It is imported with ``docker import`` and kept as a local image
whose tag is a digest of what went into it, so later builds reuse it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BASE = "python:3.12-slim"
STAND_IN_REPOSITORY = "htc-tutorial-base"
# Inside the stand-in base: the virtual environment on PATH, and the wheelhouse pip installs from.
VENV = "/opt/python"
WHEELHOUSE = "/opt/wheelhouse"
# What a slim image leaves out (Debian's slim images exclude them from dpkg): documentation but its copyright
# files, manual and info pages, translations. 52 MB here, which every push of the worker image compressed again.
TRIMMED = (
    "find usr/share/doc -mindepth 1 ! -type d ! -name copyright -delete",
    "find usr/share/doc -mindepth 1 -type d -empty -delete",
    "rm -rf usr/share/man/* usr/share/info/*",
    "find usr/share/locale -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} +",
)
_PIN_RE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9_.\-]*)==([^\s\\]+)", re.MULTILINE)


class BuildError(RuntimeError):
    """The image or its base could not be built; the message says which step failed."""


def dockerfile_pins(dockerfile: Path) -> list[str]:
    """The ``name==version`` lines of the Dockerfile's ``pip install``."""
    return [f"{name}=={version}" for name, version in _PIN_RE.findall(dockerfile.read_text(encoding="utf-8"))]


def debian_mirror(apt_dir: Path = Path("/etc/apt")) -> tuple[str, str]:
    """The host's first main-archive apt source as (URI, suite), read from its one-line or deb822 files."""
    entries: list[tuple[str, str]] = []
    for path in [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]:
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                words = [w for w in line.split("#", 1)[0].split() if not w.startswith("[")]
                if len(words) >= 3 and words[0] == "deb":
                    entries.append((words[1], words[2]))
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        for stanza in path.read_text(encoding="utf-8").split("\n\n"):
            fields = dict(
                line.split(":", 1) for line in stanza.splitlines() if ":" in line and not line.startswith(("#", " "))
            )
            fields = {k.strip().lower(): v.split() for k, v in fields.items()}
            if "deb" in fields.get("types", []) and fields.get("uris") and fields.get("suites"):
                entries.append((fields["uris"][0], fields["suites"][0]))
    for uri, suite in entries:
        if "security" not in uri and "-" not in suite:
            return uri.rstrip("/"), suite
    raise BuildError(f"no Debian or Ubuntu archive found in the apt sources under {apt_dir}")


def _as_root(argv: list[str]) -> list[str]:
    return argv if os.geteuid() == 0 else ["sudo", *argv]


def _run(argv: list[str], step: str, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)
    if result.returncode != 0:
        raise BuildError(f"{step} failed ({' '.join(argv[:3])} ...): {(result.stderr or result.stdout)[-2000:]}")
    return result


def image_exists(docker: str, name: str) -> bool:
    return subprocess.run([docker, "image", "inspect", name], capture_output=True, check=False).returncode == 0


def _python_version(root: Path) -> str:
    out = _run(
        _as_root(
            ["chroot", str(root), "python3", "-c", "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')"]
        ),
        "python3 in the base",
    )
    return out.stdout.strip()


def stand_in_base(docker: str, pins: list[str], log=print) -> str:
    """The stand-in base image's tag, built and imported first if it is not there yet."""
    uri, suite = debian_mirror()
    digest = hashlib.sha256("\n".join([suite, VENV, WHEELHOUSE, *TRIMMED, *sorted(pins)]).encode()).hexdigest()[:12]
    tag = f"{STAND_IN_REPOSITORY}:{suite}-{digest}"
    if image_exists(docker, tag):
        return tag
    log(f"building the stand-in base {tag} from {suite} (debootstrap, once)")
    with tempfile.TemporaryDirectory(prefix="htc-base-") as tmp:
        root = Path(tmp) / "root"
        try:
            _run(
                _as_root(["debootstrap", "--variant=minbase", "--include=python3,python3-venv", suite, str(root), uri]),
                "debootstrap",
            )
            version = _python_version(root)
            _run(_as_root(["chroot", str(root), "python3", "-m", "venv", VENV]), "python3 -m venv")
            wheels = Path(tmp) / "wheels"
            # The host's pip settings (index, certificates) fetch the wheels; the build then needs no network.
            _run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--quiet",
                    "--no-deps",
                    "--only-binary=:all:",
                    "--python-version",
                    version,
                    "--dest",
                    str(wheels),
                    *pins,
                ],
                "pip download of the pinned wheels",
            )
            _run(_as_root(["cp", "-r", str(wheels), str(root) + WHEELHOUSE]), "copying the wheelhouse")
            pip_conf = Path(tmp) / "pip.conf"
            pip_conf.write_text(
                f"[global]\nno-index = true\nfind-links = {WHEELHOUSE}\ndisable-pip-version-check = true\n"
            )
            _run(_as_root(["cp", str(pip_conf), str(root / "etc" / "pip.conf")]), "writing pip.conf")
            _run(
                _as_root(["sh", "-c", f"rm -rf {root}/var/cache/apt/archives/*.deb {root}/var/lib/apt/lists/*"]),
                "cleaning the apt cache",
            )
            _run(_as_root(["sh", "-ec", "; ".join(TRIMMED)]), "leaving out documentation and translations", cwd=root)
            path = f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
            tar = subprocess.Popen(_as_root(["tar", "-C", str(root), "-c", "."]), stdout=subprocess.PIPE)
            try:
                _run(
                    [
                        docker,
                        "import",
                        "--change",
                        f"ENV PATH={path}",
                        "--change",
                        "ENV LANG=C.UTF-8",
                        "--change",
                        'CMD ["python3"]',
                        "-",
                        tag,
                    ],
                    "docker import",
                    stdin=tar.stdout,
                )
            finally:
                tar.stdout.close()
                tar.wait()
        finally:
            subprocess.run(_as_root(["rm", "-rf", str(root)]), check=False)
    return tag


def pullable(docker: str, name: str) -> bool:
    """True if ``name`` is here already or a registry gives it."""
    return (
        image_exists(docker, name)
        or subprocess.run([docker, "pull", "--quiet", name], capture_output=True, check=False, timeout=300).returncode
        == 0
    )


def choose_base(docker: str, dockerfile: Path, log=print) -> str:
    """``python:3.12-slim`` where it can be had, else the stand-in base."""
    if pullable(docker, DEFAULT_BASE):
        return DEFAULT_BASE
    log(f"{DEFAULT_BASE} cannot be pulled here: using a stand-in base built from Debian packages")
    return stand_in_base(docker, dockerfile_pins(dockerfile), log=log)


def build_image(docker: str, name: str, dockerfile: Path, context: Path, base: str) -> None:
    """``docker build`` of ``dockerfile`` with ``base`` as its ``BASE_IMAGE``."""
    if shutil.which(docker) is None and not Path(docker).is_file():
        raise BuildError(f"{docker}: no Docker client")
    _run(
        [
            docker,
            "build",
            "--quiet",
            "--build-arg",
            f"BASE_IMAGE={base}",
            "-t",
            name,
            "-f",
            str(dockerfile),
            str(context),
        ],
        f"docker build of {name}",
    )


def ensure_image(
    name: str,
    dockerfile: Path = PROJECT_ROOT / "docker" / "Dockerfile",
    context: Path = PROJECT_ROOT,
    docker: str = "docker",
    log=print,
) -> str:
    """Build ``name`` from ``dockerfile`` on the base this machine can have; returns ``name``."""
    build_image(docker, name, dockerfile, context, choose_base(docker, dockerfile, log=log))
    return name
