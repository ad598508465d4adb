"""Who process-mode jobs run as: where the emulator runs as root, every attempt as a user of its own.

A job whose process has the emulator's uid can read the environment of every process of that
uid (``/proc/<pid>/environ``: the notebook kernel's, JupyterLab's, another job's with its job
token), signal them, and read the files they can. Run as root, the emulator gives each attempt
a uid and gid of its own, picked at random from a range no account uses (no passwd entry, no
supplementary group, no new privileges through setuid programs: :func:`htc_emulator.jobhost.become`),
and hands it the attempt's scratch folder (its working directory, ``HOME`` and ``TMPDIR``).
Such a job reaches what any stranger to the machine would: world-readable files, and the
network, where the API and the storage gate hold it to its job token.

Where a folder on the way to the interpreter, the worker, the image's files (its ``COPY``
sources, as a container has them) or the scratch folders is closed to other users (a Python
installed under ``/root``, an image in a private temporary folder), the job runs in a mount
namespace in which that folder is an empty one holding only those (made once per set of
folders by the template: :func:`htc_emulator.jobhost.mount_namespace`); the host's folders
are not changed. The files themselves must be readable by others, as a checkout's are.

Jobs run as the emulator's own user, and :attr:`JobUsers.unconfined` says why, where the
emulator is not root or a job's uid still could not run a job (tried once at start).
"""

from __future__ import annotations

import os
import secrets
import stat
import sys
import sysconfig
from pathlib import Path

from .launcher import WORKER_FOLDER, ProcessLauncher

# 2^30 up to 2^30 + 2^29: above the ranges of system and login accounts and of the 65,536-id blocks
# /etc/subuid hands out from 100,000; random, so emulators side by side do not share one.
FIRST_JOB_UID = 1 << 30
JOB_UID_COUNT = 1 << 29
# Said at start-up where jobs run as the emulator's own user.
UNCONFINED_WARNING = (
    "process-mode jobs run as this user: {reason}. A job can then read what this user can (its files, the "
    "apiconfig file that holds the API key, the memory and environment of its processes) and signal its "
    "processes; job tokens and the storage gate hold only a job that keeps to its token. Jobs run as "
    "containers (--docker) are isolated: see htc_emulator/README.md, 'What a process-mode job can reach'."
)
# Prints the paths of (access mode, path) pairs the process cannot use so.
_CHECK = "import os, sys; a = sys.argv[1:]; print(*(p for m, p in zip(a[::2], a[1::2]) if not os.access(p, int(m))))"


class JobUsers:
    """The user each attempt runs as, and its scratch folder made its own."""

    def __init__(self, scratch: Path, launcher: ProcessLauncher) -> None:
        self.scratch = scratch
        self.unconfined: str | None = None
        if os.geteuid() != 0:
            self.unconfined = "the emulator does not run as root, so jobs cannot run as a user of their own"
            return
        # Jobs may pass through to their own folders, not list or read the others'.
        scratch.chmod(0o711)
        self.needed = [os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, WORKER_FOLDER, scratch)]
        self._ways: dict[tuple[str, ...], tuple[list[str], list[str]]] = {}
        self.unconfined = self._unreachable(launcher)
        if self.unconfined:
            scratch.chmod(0o700)

    def next(self, image_files: tuple[Path, ...] = ()) -> dict | None:
        """A fresh user for an attempt whose image holds ``image_files`` (its COPY sources), as
        :meth:`ProcessLauncher.start` takes it; None: the emulator's own."""
        if self.unconfined:
            return None
        uid = FIRST_JOB_UID + secrets.randbelow(JOB_UID_COUNT)
        cover, bind = self._ways_for(tuple(os.path.realpath(path) for path in image_files))
        return {"uid": uid, "gid": uid, "cover": cover, "bind": bind}

    def _ways_for(self, image_files: tuple[str, ...]) -> tuple[list[str], list[str]]:
        if image_files not in self._ways:
            self._ways[image_files] = ways_through(sorted({*self.needed, *image_files}))
        return self._ways[image_files]

    @staticmethod
    def hand_over(folder: Path, user: dict | None) -> None:
        """Make the attempt's scratch folder the job's own (mode 0700 stays: nobody else enters)."""
        if user is not None:
            os.chown(folder, user["uid"], user["gid"])

    def _unreachable(self, launcher: ProcessLauncher) -> str | None:
        """Why a job's uid could not run jobs (None: it can), found by running one as such a uid."""
        packages = {sysconfig.get_paths()[name] for name in ("stdlib", "purelib", "platlib")}
        wanted = [(os.R_OK | os.X_OK, path) for path in sorted(packages) + [str(WORKER_FOLDER)]]
        wanted.append((os.X_OK, str(self.scratch)))
        probe = FIRST_JOB_UID + JOB_UID_COUNT  # one past the jobs' range: nothing of a job's is touched
        cover, bind = self._ways_for(())
        user = {"uid": probe, "gid": probe, "cover": cover, "bind": bind}
        argv = [sys.executable, "-I", "-S", "-c", _CHECK, *(str(a) for pair in wanted for a in pair)]
        try:
            process = launcher.start(argv, {}, "/", user=user)
            with process.stdout:
                output = process.stdout.read().decode(errors="replace").strip()
            returncode = process.wait()
        except OSError as exc:
            return f"a job's uid cannot run {sys.executable} ({exc})"
        if returncode != 0 or output:
            return f"a job's uid cannot reach {output[-300:]} (closed to other users)"
        return None


def ways_through(needed: list[str]) -> tuple[list[str], list[str]]:
    """The folders closed to other users on the way to ``needed`` (the outermost of each way), and
    the needed files and folders beyond them: what :func:`htc_emulator.jobhost.open_the_way` covers and binds."""
    cover, bind = set(), []
    for path in needed:
        closed = [a for a in reversed(Path(path).parents) if not os.stat(a).st_mode & stat.S_IXOTH]
        if closed and not any(Path(path).is_relative_to(b) for b in bind):
            cover.add(str(closed[0]))
            bind = [b for b in bind if not Path(b).is_relative_to(path)] + [path]
    return sorted(cover), sorted(bind)
