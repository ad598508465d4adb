"""Download archives through the registries' own clients (apt-get, pip, npm).

They are the only network access this machine has.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

# Generous: a cold `apt-get update` on a slow mirror can take minutes, but a hung client must not block forever.
TIMEOUT_S = 900


class FetchError(Exception):
    """A client, registry or package is unavailable; the caller skips that source and carries on."""


def run(cmd: list[str], cwd: Path | None = None, label: str | None = None) -> str:
    """Run a client quietly and return its stdout; its chatter only matters when it fails."""
    label = label or " ".join(cmd)
    if shutil.which(cmd[0]) is None:
        raise FetchError(f"{cmd[0]} not found")
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FetchError(f"`{label}` failed: {exc}") from exc
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        errors = [line for line in lines if line.startswith(("E:", "ERROR", "npm error"))]
        reason = (errors or lines or [f"exit code {proc.returncode}"])[-1]
        raise FetchError(f"`{label}` failed: {reason}")
    return proc.stdout


def _single(directory: Path, pattern: str) -> Path:
    found = sorted(directory.glob(pattern))
    if len(found) != 1:
        raise FetchError(f"expected one {pattern} in the download, found {len(found)}")
    return found[0]


class Apt:
    """apt-get access that runs `apt-get update` at most once, and only when the local package lists fall short."""

    def __init__(self) -> None:
        self._updated = False

    def _retry_after_update(self, action):
        try:
            return action()
        except FetchError:
            if self._updated:
                raise
            self._updated = True
            run(["apt-get", "update", "-qq"])
            return action()

    def dlib_runtime_package(self) -> str:
        """The libdlib runtime package's name.

        It changes per Debian release (libdlib19.1 on bookworm, 19.2 on trixie).
        """

        def lookup() -> str:
            found = re.search(r"Depends:\s*<?(libdlib\d[\w.+-]*)", run(["apt-cache", "depends", "libdlib-dev"]))
            if not found:
                raise FetchError("`apt-cache depends libdlib-dev` names no libdlib runtime package")
            return found.group(1)

        return self._retry_after_update(lookup)

    def download(self, package: str, dest: Path) -> Path:
        """`apt-get download` one binary package into `dest`; returns the .deb."""
        dest.mkdir(parents=True, exist_ok=True)
        self._retry_after_update(lambda: run(["apt-get", "download", "-qq", package], cwd=dest))
        return _single(dest, f"{package}_*.deb")

    @staticmethod
    def extract(deb: Path, dest: Path) -> str:
        """Unpack a .deb with `dpkg-deb -x` (no install, no root); returns the package version."""
        run(["dpkg-deb", "-x", str(deb), str(dest)])
        return run(["dpkg-deb", "-f", str(deb), "Version"]).strip()


def pip_download(spec: str, dest: Path) -> Path:
    """Download one pinned wheel, without dependencies, with the running interpreter's pip; returns the .whl."""
    dest.mkdir(parents=True, exist_ok=True)
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--only-binary",
            ":all:",
            "--dest",
            str(dest),
            spec,
        ],
        label=f"pip download {spec}",
    )
    return _single(dest, "*.whl")


def npm_pack(spec: str, dest: Path) -> Path:
    """Download one pinned npm tarball with `npm pack` (nothing is installed); returns the .tgz."""
    dest.mkdir(parents=True, exist_ok=True)
    run(["npm", "pack", "--silent", spec], cwd=dest)
    return _single(dest, "*.tgz")
