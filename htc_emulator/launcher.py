"""Starts and stops process-mode jobs: contained, stoppable like ``docker stop``, memory-limited, cheap.

:class:`ProcessLauncher` keeps a warm template process (:mod:`htc_emulator.jobhost`)
that has imported the modules the jobs use, and asks it to fork a supervisor per job slot
in use, which forks that slot's Python jobs one at a time; other commands are exec'd under a
bare supervisor that stays, one per job slot in use, running one job at a time. The scheduler
sees a :class:`JobProcess`: the job's log stream (stdout and stderr merged), :meth:`~JobProcess.wait`,
:meth:`~JobProcess.stop` (SIGTERM, then SIGKILL to every process of the job after
the grace period) and, when the job ran past its memory limit, ``out_of_memory``.
Given a ``user`` (:mod:`htc_emulator.job_users`), the job runs as that uid and gid.
"""

from __future__ import annotations

import functools
import marshal
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

JOBHOST = Path(__file__).with_name("jobhost.py")
WORKER_FOLDER = Path(__file__).resolve().parent.parent / "face_tagger"
# Imported once by the template; a job importing them again finds them loaded. The tutorial's
# worker finds its cascade parsed (haar_cascades, beside the worker, as in its image) and its worker
# layer imported: a job's user cannot write the bytecode cache, so each job compiled htc_worker.py
# (12 ms of CPU). argparse, netrc and boto3.s3.inject are what the worker's first steps import.
DEFAULT_PRELOAD = (
    "cv2",
    "numpy",
    "boto3",
    "botocore.session",
    "botocore.client",
    "boto3.s3.inject",
    "s3transfer.manager",
    "requests",
    "urllib3",
    "argparse",
    "netrc",
    f"path={WORKER_FOLDER}",
    "haar_cascades:preload",
    "htc_worker",
)
# Variables an interpreter, OpenCV or a BLAS read at start-up or import: a job whose values
# differ from the template's runs as a fresh process instead of in a fork of the template.
_STARTUP_VARIABLES = re.compile(
    r"PYTHON.*|LANG|LC_.*|LANGUAGE|OPENCV_.*|OPENBLAS_.*|OMP_.*|MKL_.*|GOTO_.*|"
    r"NUMPY_.*|LD_.*|MALLOC_.*|VIRTUAL_ENV|AWS_DATA_PATH"
)


class JobProcess:
    """One running job: its log stream, its end, and how to stop it."""

    def __init__(self, pid: int, stdout, status_fd: int, control_fd: int, ended=None, status: bytes = b"") -> None:
        self.pid = pid
        self.stdout = stdout
        self.returncode: int | None = None
        self.out_of_memory = False
        self._status_fd = status_fd
        self._status = status  # what the supervisor wrote after its "started" line, read with it
        self._control_fd = control_fd
        self._control_lock = threading.Lock()
        self._ended = ended  # called once the supervisor is done with the job: True if it can take another

    def wait(self, timeout: float | None = None) -> int:
        """The exit status (``-N`` for death by signal N); ``subprocess.TimeoutExpired`` past ``timeout``."""
        if self.returncode is None:
            if b"\n" not in self._status:
                ready, _, _ = select.select([self._status_fd], [], [], timeout)
                if not ready:
                    raise subprocess.TimeoutExpired(str(self.pid), timeout)
                self._status = read_line(self._status_fd, self._status)
            os.close(self._status_fd)
            line = self._status.decode().split()
            finished = line[:1] == ["exit"]
            if finished:
                self.returncode, self.out_of_memory = int(line[1]), line[2] == "1"
            else:  # the supervisor was killed from outside; its job process got SIGKILL with it
                self.returncode = -signal.SIGKILL
            with self._control_lock:
                os.close(self._control_fd)
                self._control_fd = -1
            if self._ended is not None:
                self._ended(finished)
        return self.returncode

    def stop(self, grace: float) -> None:
        """SIGTERM to the job's process, SIGKILL to all its processes ``grace`` seconds later (0: at once)."""
        with self._control_lock:
            if self._control_fd < 0:
                return
            try:
                os.write(self._control_fd, f"stop {max(grace, 0.0):.3f}\n".encode())
            except BrokenPipeError:
                pass


class ProcessLauncher:
    """Runs each job under a supervisor that stays, one per job slot in use (:class:`_Supervisors`).

    Python jobs fork from a supervisor that is a fork of a warm template process that has imported
    ``preload`` (started on first use, restarted if it died); every other command is exec'd by a bare
    supervisor (the interpreter and this package's stdlib imports only), because a fork copies the
    page tables of all its parent has loaded, and a job that execs has no use for them.
    """

    def __init__(self, template_env: dict[str, str], preload: tuple[str, ...] = DEFAULT_PRELOAD) -> None:
        self.template_env = dict(template_env)
        self.preload = preload
        self._template = _Template(template_env, preload)
        self._supervisors = {
            "python": _Supervisors(lambda: _ForkedSupervisor(self._template)),
            "exec": _Supervisors(lambda: _Template(template_env, slot=True)),
        }

    def start(
        self,
        argv: list[str],
        env: dict[str, str],
        cwd: str | os.PathLike,
        memory_limit: int | None = None,
        user: dict | None = None,
    ) -> JobProcess:
        """Start ``argv`` in ``cwd`` with exactly ``env``; ``OSError`` if it can't be started.

        ``memory_limit`` (bytes) caps the resident memory of all the job's processes together.
        ``user`` (:meth:`htc_emulator.job_users.JobUsers.next`; needs root) is who the job runs as:
        ``uid``, ``gid``, and the folders it needs a way through (``cover``, ``bind``); None: as the launcher.
        """
        mode = "python" if self._runs_in_template(argv, env) else "exec"
        request = {
            "argv": list(argv),
            "env": dict(env),
            "cwd": str(cwd),
            "memory_limit": memory_limit,
            "mode": mode,
            "user": user,
        }
        # The template and the supervisor read the header alone; the request (the job's token among its
        # variables) goes in a memory file that only the job process reads, so nothing that later jobs are
        # forked from finds it in its memory.
        header = {
            "mode": mode,
            "script": argv[1] if mode == "python" and argv[1] != "-c" else None,
            "way": [user["cover"], user["bind"]] if user and user["cover"] else None,
            "memory_limit": memory_limit,
            "exec": {"command": argv[0], "path": env.get("PATH")} if mode == "exec" else None,
        }
        supervisors = self._supervisors[mode]
        supervisor = supervisors.take()
        body = os.memfd_create("htc-job-request")
        try:
            data = memoryview(marshal.dumps(request))
            while data:
                data = data[os.write(body, data) :]
            log_read, log_write = os.pipe()
            status_read, status_write = os.pipe()
            control_read, control_write = os.pipe()
            try:
                supervisor.send(marshal.dumps(header), [log_write, status_write, control_read, body])
            except BaseException:
                for fd in (log_read, status_read, control_write):
                    os.close(fd)
                supervisors.give_back(supervisor, False)
                raise
            finally:
                for fd in (log_write, status_write, control_read):
                    os.close(fd)
        finally:
            os.close(body)
        first, _, later = read_line(status_read).partition(b"\n")
        word, _, rest = first.decode().strip().partition(" ")
        ended = functools.partial(supervisors.give_back, supervisor)
        if word != "started":
            for fd in (log_read, status_read, control_write):
                os.close(fd)
            ended(word == "error")  # the job could not start; its supervisor is still there
            errno, _, message = rest.partition(" ")
            raise OSError(int(errno) if errno.isdigit() else 0, message or "the job's supervisor died")
        return JobProcess(int(rest), os.fdopen(log_read, "rb"), status_read, control_write, ended, later)

    def close(self) -> None:
        """End the template and the supervisors (running jobs are the scheduler's to stop first)."""
        for supervisors in self._supervisors.values():
            supervisors.close()
        self._template.close()

    def _runs_in_template(self, argv: list[str], env: dict[str, str]) -> bool:
        """Python programs the template can run as a fresh interpreter would; anything else is exec'd."""
        if len(argv) < 2 or argv[0] != sys.executable:
            return False
        if argv[1] == "-c":
            runnable = len(argv) >= 3
        else:
            runnable = not argv[1].startswith("-") and os.path.isfile(argv[1])
        startup = {k: v for k, v in env.items() if _STARTUP_VARIABLES.fullmatch(k)}
        expected = {k: v for k, v in self.template_env.items() if _STARTUP_VARIABLES.fullmatch(k)}
        return runnable and startup == expected


def read_line(fd: int, data: bytes = b"") -> bytes:
    """``data`` and what follows it from ``fd`` up to a whole line or the end: a few reads, where a read per
    byte let another thread take the GIL between each."""
    while b"\n" not in data:
        chunk = os.read(fd, 256)
        if not chunk:
            break
        data += chunk
    return data


class _Supervisors:
    """Supervisors that stay, one per job slot in use: each runs one job at a time, kills and reaps all that
    job started when it ends, and takes the next; one that died, or serves one job only, is replaced."""

    def __init__(self, make) -> None:
        self._make = make
        self._idle: list = []
        self._all: list = []
        self._lock = threading.Lock()

    def take(self):
        """An idle supervisor, or a new one; one that died meanwhile is started again when it is sent the job."""
        with self._lock:
            if self._idle:
                return self._idle.pop()
        supervisor = self._make()
        with self._lock:
            self._all.append(supervisor)
        return supervisor

    def give_back(self, supervisor, reusable: bool) -> None:
        if reusable and supervisor.stays:
            with self._lock:
                self._idle.append(supervisor)
            return
        with self._lock:
            if supervisor in self._all:
                self._all.remove(supervisor)
        supervisor.close()

    def close(self) -> None:
        with self._lock:
            supervisors, self._all, self._idle = self._all, [], []
        for supervisor in supervisors:
            supervisor.close()


def _send_or_renew(send: Callable[[], None], renew: Callable[[], None]) -> None:
    """Send; where the other end is gone (it died since the last request), ``renew`` it and send once more."""
    try:
        send()
    except (BrokenPipeError, ConnectionResetError):
        renew()
        send()


class _ForkedSupervisor:
    """A Python job slot's supervisor: a fork of the warm template, asked for over the template's channel,
    forked again if it died. It ``stays`` unless the template forked it before its warm-up was done."""

    def __init__(self, template: _Template) -> None:
        self._template = template
        self._channel: socket.socket | None = None
        self.stays = False
        self._fork()

    def send(self, payload: bytes, fds: list[int]) -> None:
        _send_or_renew(lambda: socket.send_fds(self._channel, [payload], fds), self._fork)

    def close(self) -> None:
        """Its end of the channel closed, the supervisor ends once its job has (it is the template's child)."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def _fork(self) -> None:
        self.close()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            self._template.send(marshal.dumps({"slot": True}), [theirs.fileno()])
        answer = ours.recv(16)
        if not answer:
            ours.close()
            raise OSError(0, "the job's supervisor died")
        self._channel, self.stays = ours, answer == b"warm"


class _Template:
    """One ``jobhost.py`` process (a template or a supervisor) and the socket that hands it requests and
    descriptors; started on first use, restarted if it died."""

    stays = True

    def __init__(self, env: dict[str, str], preload: tuple[str, ...] = (), slot: bool = False) -> None:
        self.env = dict(env)
        self.preload = preload
        self.slot = slot
        self._process: subprocess.Popen | None = None
        self._channel: socket.socket | None = None
        self._lock = threading.Lock()

    def send(self, payload: bytes, fds: list[int]) -> None:
        with self._lock:
            if self._process is None or self._process.poll() is not None:
                self._start()
            _send_or_renew(lambda: socket.send_fds(self._channel, [payload], fds), self._start)

    def close(self) -> None:
        with self._lock:
            if self._channel is not None:
                self._channel.close()
                self._channel = None
            if self._process is not None:
                try:
                    self._process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait()
                self._process = None

    def _start(self) -> None:
        if self._channel is not None:
            self._channel.close()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            self._process = subprocess.Popen(
                [sys.executable, str(JOBHOST), *(["--slot"] if self.slot else []), str(theirs.fileno()), *self.preload],
                env=self.env,
                cwd="/",
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                pass_fds=[theirs.fileno()],
            )
        self._channel = ours
