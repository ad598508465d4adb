"""The warm template behind process-mode jobs (run as a script, stdlib only).

:class:`htc_emulator.launcher.ProcessLauncher` starts it once as
``python jobhost.py CHANNEL_FD ENTRY...``: it imports the heavy modules the
jobs use (OpenCV, NumPy, boto3) and prepares what they need that does not depend on
the job (the worker's parsed cascade) once, one step at a time while no request waits, and
forks a supervisor per job slot, which forks each job, so a job pays for a fork instead of an
interpreter start and half a second of imports.

Every job runs under a *supervisor* that stays, one per job slot in use, and makes
each job in turn a container of its own: it starts a new session, becomes the child
subreaper of everything the job starts (a ``setsid``-forked grandchild still comes
back to it), forks the job process, and when the job process ends it kills and reaps
whatever is left, so the log pipe closes and nothing survives the job. A Python job's
supervisor is a fork of the warm template, asked for once per slot, so the job process
is one fork of the template; the supervisor of commands that are not Python is a bare
interpreter (``jobhost.py --slot CHANNEL_FD``), so a fork of it copies no page tables
of OpenCV's. Told to stop, it does what
``docker stop`` does: SIGTERM to the job process, SIGKILL to all after the grace
period. With a memory limit it sums the resident memory of the job's
processes, as a memory cgroup does, and kills them all when it is exceeded. If
the emulator goes away (its end of the control pipe closes), the job goes too.

The job process is either an ``exec`` of the job's command or, for
``python SCRIPT ARGS`` and ``python -c CODE ARGS`` whose start-up settings match
the template's, the same program run in the forked interpreter with its own
``argv``, environment, working directory, ``sys.path``, standard streams on the
log pipe, default signal handlers and exit status. A fork starts from the
supervisor's pristine copy of the template, so nothing one job does reaches another.

Where the emulator gives the job a user of its own (:mod:`htc_emulator.job_users`), the
job process takes that uid and gid, with no supplementary groups and no new privileges,
before it changes to its working directory and runs anything of the job's; the
supervisor stays root, so the job can neither signal it nor read its ``/proc`` files.

Messages: the template is asked for a Python slot's supervisor with the descriptor of
the slot's channel, and the supervisor answers ``warm`` or ``cold`` on it. A job's request
is a header (``mode``, the ``script`` its supervisor compiles once, the user's ``way`` and
the ``memory_limit``) with four descriptors: the log, status and control pipes, and a memory
file with the request itself (argv, environment, working directory, user), read by the job
process alone: neither the template nor a supervisor holds a job's token, so no later job
finds one in the memory it forks from. Both are in :mod:`marshal`'s format: the emulator that writes them runs this same
interpreter, and the job process decodes its request in one call of C, where json's decoder (Python
code whose pages a fresh fork copies as it runs) cost it 0.4 ms. The supervisor writes
``started PID`` or ``error ERRNO MESSAGE``, then ``exit RETURNCODE OOM`` to the status pipe;
it reads ``stop GRACE`` from the control pipe.
"""

import _signal
import atexit
import builtins
import ctypes
import gc
import importlib
import importlib.machinery
import marshal
import os
import select
import signal
import socket
import stat
import sys
import time
import types

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
CLONE_NEWNS = 0x20000
MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 4096, 16384, 1 << 18
PR_SET_CHILD_SUBREAPER = 36
MAX_HEADER_BYTES = 1 << 16
MEMORY_POLL_SECONDS = 0.05
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
LIBC = ctypes.CDLL(None, use_errno=True)
# Looked up once here: ctypes builds a function on its first lookup in Python, and a job process that looked
# one up itself paid 0.1 ms of copied pages for it.
PRCTL, SETNS = LIBC.prctl, LIBC.setns
# As plain numbers, once: signal.valid_signals() builds a set of enum members, a third of a millisecond a job.
# The C library keeps two signals for itself (32 and 33 on Linux) and refuses to change them, so Python
# cannot: reset with the system call itself, whose all-zero action is SIG_DFL on every architecture.
HIDDEN_SIGNALS = sorted(set(range(1, signal.NSIG)) - {int(n) for n in signal.valid_signals()})
SYS_RT_SIGACTION = {"x86_64": 13, "aarch64": 134}.get(os.uname().machine)
RESETTABLE_SIGNALS = [int(n) for n in signal.valid_signals() if n not in (signal.SIGKILL, signal.SIGSTOP)]
THIS_FILE = os.path.abspath(__file__)
PRELOAD_ENV: dict[str, str] = {}
# The ``path=`` folders of the warm-up (the project's worker), and the modules preloaded from them: their files.
PRELOAD_FOLDERS: list[str] = []
FOLDER_PRELOADS: dict[str, str] = {}
# The folders a fresh interpreter puts on sys.path, without this script's own.
BASE_PATH = sys.path[1:]


def serve(channel_fd: int, warm_up: list) -> dict:
    """Fork a supervisor that stays for each job slot asked for; returns only inside a job process.

    While no request waits, the template takes the next ``warm_up`` step (one import each), so
    the first jobs start at once and import what is not loaded yet themselves. A supervisor forked
    before the last step serves one job and ends: the slot's next supervisor is forked warmer.
    """
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps finished supervisors
    channel = socket.socket(fileno=channel_fd)
    while True:
        gc.freeze()  # keeps the imported modules' pages shared with every fork
        if warm_up and not select.select([channel], [], [], 0)[0]:
            warm_up.pop(0)()
            continue
        _, fds = next_request(channel)
        if os.fork() == 0:
            job = None
            try:
                os.close(channel.detach())
                job = serve_python_slot(fds[0], stays=not warm_up)
            finally:  # never back into the template's loop, whatever happened
                if job is None:
                    os._exit(0)
            return job
        for fd in fds:
            os.close(fd)


def serve_python_slot(channel_fd: int, stays: bool) -> dict:
    """Supervise one job slot's Python jobs, one at a time, each a fork of this pristine copy of the template.

    One fork a job, where a supervisor forked from the template per job and the job forked from it
    cost two forks and two exits of the template's page tables. Like :func:`serve_slot`'s supervisor,
    it reads no request and keeps nothing of a job's: every job process starts from the same image.
    Says first whether it ``stays`` (``warm``) or serves one job (``cold``); returns only inside a job process.
    """
    channel = socket.socket(fileno=channel_fd)
    wake_read = become_supervisor()
    channel.send(b"warm" if stays else b"cold")
    compiled: dict = {}
    namespaces: dict = {}
    while True:
        gc.freeze()
        header, fds = next_request(channel)
        code = script_code(header["script"], compiled) if header["script"] else None
        namespace = mount_namespace(*header["way"], namespaces) if header["way"] else None
        extras = {"code": code, "namespace": namespace, "signals": RESETTABLE_SIGNALS, "executable": None}
        job = supervise(header, extras, wake_read, *fds)
        if job is not None:
            return job
        if not stays:
            os._exit(0)


def serve_slot(channel_fd: int) -> None:
    """Supervise one job slot's commands that are not Python, one job at a time, for as long as the slot lives.

    The supervisor stays from job to job: a fork of it is a fork of a bare interpreter, and only the
    job's own processes are ever below it (every one of them is killed and reaped before the next job
    starts), so an orphan that comes back to it belongs to its current job. It reads no request
    itself: the job process does, so no later job finds an earlier one's token in the memory it forks from.
    """
    channel = socket.socket(fileno=channel_fd)
    wake_read = become_supervisor()
    # What an exec does not reset itself (ignored signals) and what could run before it (handlers): a few
    # signals, where resetting all of them in every job process cost it half a millisecond.
    handled = [number for number in RESETTABLE_SIGNALS if signal.getsignal(number) != signal.SIG_DFL]
    # The supervisor joins its job's mount namespace itself, once for as many jobs as share it, and its job
    # processes start in it: a setns in each job process (a ctypes call in a fresh fork) cost it more.
    host = os.open("/proc/self/ns/mnt", os.O_RDONLY)
    joined = host
    namespaces: dict = {}
    while True:
        gc.freeze()
        header, fds = next_request(channel)
        namespace = mount_namespace(*header["way"], namespaces, made_from=host) if header["way"] else host
        if namespace >= 0 and namespace != joined:
            try:
                check(SETNS(namespace, CLONE_NEWNS))
                joined = namespace
            except OSError as exc:
                namespace = -(exc.errno or 1)
        failed = namespace if namespace < 0 else None  # the job process reports it as a job that could not start
        extras = {"code": None, "namespace": failed, "signals": handled, "executable": executable(**header["exec"])}
        if supervise(header, extras, wake_read, *fds) is not None:
            os._exit(0)  # only a job process that runs Python returns, and a slot runs none


def next_request(channel: socket.socket) -> tuple[dict, list[int]]:
    """The next request's header and descriptors; this process ends when the emulator's end is gone."""
    try:
        message, fds, _, _ = socket.recv_fds(channel, MAX_HEADER_BYTES, 4)
    except OSError:
        os._exit(1)
    if not message:
        os._exit(0)  # the emulator closed the channel
    return marshal.loads(message), fds


def mount_namespace(cover: list[str], bind: list[str], namespaces: dict, made_from: int | None = None) -> int:
    """A descriptor of a mount namespace made by :func:`open_the_way` (``-ERRNO`` if it could not be), made
    once per way and kept alive by the descriptor: a job joins it for the cost of a ``setns``, where a
    namespace of its own cost milliseconds to make and to tear down. ``made_from``: the namespace it starts
    from (a descriptor), where this process may have joined another's."""
    key = (tuple(cover), tuple(bind))
    if key not in namespaces:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        if os.fork() == 0:  # makes it, hands it over, and is gone
            try:
                if made_from is not None:
                    check(SETNS(made_from, CLONE_NEWNS))
                open_the_way(cover, bind)
                socket.send_fds(theirs, [b"0"], [os.open("/proc/self/ns/mnt", os.O_RDONLY)])
            except OSError as exc:
                theirs.send(str(exc.errno or 1).encode())
            finally:
                os._exit(0)
        theirs.close()
        message, fds, _, _ = socket.recv_fds(ours, 32, 1)
        ours.close()
        namespaces[key] = fds[0] if fds else -int(message or b"1")
    return namespaces[key]


def read_request(fd: int) -> dict:
    """The job's request, from the memory file only the job process reads (no template or supervisor holds it)."""
    try:
        return marshal.loads(os.pread(fd, os.fstat(fd).st_size, 0))
    finally:
        os.close(fd)


def script_code(path: str, compiled: dict) -> types.CodeType | None:
    """The script compiled as the interpreter compiles ``python SCRIPT``, once per version of the file.

    None when it does not compile: the job process then compiles it and reports the error itself.
    """
    try:
        stat = os.stat(path)
        version = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if path not in compiled or compiled[path][0] != version:
            with open(path, "rb") as source:
                compiled[path] = (version, compile(source.read(), path, "exec", dont_inherit=True))
        return compiled[path][1]
    except (OSError, SyntaxError, ValueError):
        return None


def become_supervisor() -> int:
    """Make this process a container of its own for the jobs it forks: a new session, the child subreaper
    of everything they start (a ``setsid``-forked grandchild still comes back to it), woken when a child
    ends; returns the descriptor :func:`contain` waits on."""
    if os.getsid(0) != os.getpid():
        os.setsid()
    PRCTL(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    wake_read, wake_write = os.pipe2(os.O_NONBLOCK)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    return wake_read


def supervise(header: dict, extras: dict, wake_read: int, log_fd: int, status_fd: int, control_fd: int, body: int):
    """Start the job process and contain it to its end; returns the request only inside a job process that
    runs Python (None in the supervisor). Every descriptor it is given is closed when it returns."""
    exec_read, exec_write = os.pipe()
    job_pid = os.fork()
    if job_pid == 0:
        argv0 = "?"
        try:
            for fd in (exec_read, status_fd, control_fd):
                os.close(fd)
            request = {**read_request(body), **extras}
            argv0 = request["argv"][0]
            prepare_job_process(request, log_fd, exec_write)
            if request["mode"] == "python":
                os.close(exec_write)
                return request
            if request["executable"]:
                try:
                    os.execve(request["executable"], request["argv"], request["env"])
                except OSError:  # not for this user, or not in its mount namespace: as the search would find it
                    pass
            os.execvpe(argv0, request["argv"], request["env"])
        except OSError as exc:  # reported by the emulator as a job that could not start
            os.write(exec_write, f"{exc.errno} {exc.strerror}: {exc.filename or argv0}".encode())
        except BaseException as exc:  # never back into the supervisor's code, whatever happened
            os.write(exec_write, f"0 {exc!r}".encode())
        os._exit(127)
    try:
        for fd in (log_fd, exec_write, body):
            os.close(fd)
        failure = os.read(exec_read, 4096)  # empty once the job process exec'd or runs Python
        if failure:
            os.waitpid(job_pid, 0)
            os.write(status_fd, b"error " + failure + b"\n")
        else:
            os.write(status_fd, f"started {job_pid}\n".encode())
            status, out_of_memory = contain(job_pid, control_fd, header.get("memory_limit"), wake_read)
            os.write(status_fd, f"exit {os.waitstatus_to_exitcode(status)} {int(out_of_memory)}\n".encode())
    except OSError:  # the emulator is gone: nobody to tell
        pass
    finally:
        for fd in (exec_read, status_fd, control_fd):
            os.close(fd)
    return None


def executable(command: str, path: str | None) -> str | None:
    """The file ``os.execvpe(command, ...)`` would try first with this ``PATH``, found by the supervisor with
    a few ``stat`` calls where the search in the job process (an ``exec`` tried per folder, in Python, in a
    fresh fork) cost it a millisecond; None where the job process must search itself. The job's view of the
    files is the supervisor's or a part of it (:func:`open_the_way`), so the job process runs this file or
    finds it missing or not its own, and then searches as ``execvpe`` does."""
    if os.sep in command:
        return command
    for folder in (path if path is not None else os.defpath).split(os.pathsep):
        if not os.path.isabs(folder):  # relative to the job's working directory, not the supervisor's
            return None
        candidate = os.path.join(folder, command)
        if os.path.exists(candidate):
            return candidate
    return None


def prepare_job_process(request: dict, log_fd: int, exec_write: int) -> None:
    """Standard streams, descriptors, signals, working directory and environment of a new process."""
    if request["namespace"] is not None:  # before its descriptor is closed with the others
        if request["namespace"] < 0:
            raise OSError(-request["namespace"], os.strerror(-request["namespace"]))
        check(SETNS(request["namespace"], CLONE_NEWNS))
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.closerange(3, exec_write)
    os.closerange(exec_write + 1, os.sysconf("SC_OPEN_MAX"))
    # The C functions themselves: signal's wrappers convert to and from enums, whose pages a fresh fork
    # copies as it touches them (0.4 ms of a job process's 2).
    signal.set_wakeup_fd(-1)
    for number in request["signals"]:
        try:
            _signal.signal(number, _signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    _signal.pthread_sigmask(_signal.SIG_SETMASK, ())
    if request["user"]:
        become(request["user"]["uid"], request["user"]["gid"])
    # Should the supervisor itself be killed, the job process is not left running without it (set after
    # become(): a change of credentials clears it).
    PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    os.chdir(request["cwd"])
    if request["mode"] == "python":
        if request["user"]:  # dumpable again, as an exec would make it: its /proc files are its own
            PRCTL(PR_SET_DUMPABLE, 1, 0, 0, 0)
        # A temporary folder cached by a preloaded module would be the template's; the job's TMPDIR is its own.
        if "tempfile" in sys.modules:
            sys.modules["tempfile"].tempdir = None
        # What a fresh interpreter installs at start-up.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        os.environ.clear()
        os.environ.update(request["env"])
        # What the preloaded modules' imports add (OpenCV's loader sets LD_LIBRARY_PATH), as the
        # job's own imports would; jobs whose values differ for such variables are exec'd instead.
        os.environ.update(PRELOAD_ENV)


def open_the_way(cover: list[str], bind: list[str]) -> None:
    """In a new mount namespace, an empty folder over each folder of ``cover``, with only the files and
    folders of ``bind`` inside it in their place: the way to the interpreter, the worker, the image's
    files and the scratch folders, where a folder on it (``/root``, a home) is closed to other users,
    and nothing else."""
    check(LIBC.unshare(CLONE_NEWNS))
    check(LIBC.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None))  # nothing here reaches the host's mounts
    kept = [os.open(path, os.O_PATH) for path in bind]  # still reachable through these once covered
    for folder in cover:
        check(LIBC.mount(b"tmpfs", folder.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=0755,size=64k"))
    for path, fd in zip(bind, kept, strict=True):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            os.makedirs(path, exist_ok=True)
        else:  # a file is mounted on a file
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
        check(LIBC.mount(f"/proc/self/fd/{fd}".encode(), path.encode(), None, MS_BIND | MS_REC, None))
        os.close(fd)


def check(result: int) -> None:
    if result != 0:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number))


def become(uid: int, gid: int) -> None:
    """Drop root for the job's own uid and gid, for good: no supplementary groups, and no privileges
    regained through a setuid program. (Not dumpable until it execs, which makes its /proc files its own.)"""
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    PRCTL(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)


def contain(job_pid: int, control_fd: int, memory_limit: int | None, wake_read: int) -> tuple[int, bool]:
    """Wait for the job process, obey stop requests, then end every descendant; (wait status, OOM)."""
    job_status = None
    kill_at = None
    out_of_memory = False
    watched = [control_fd, wake_read]
    while True:
        job_status = reap(job_pid, job_status)
        if job_status is not None:
            break
        now = time.monotonic()
        if kill_at is not None and now >= kill_at:
            kill_descendants()
            kill_at = None
        if memory_limit and resident_bytes() > memory_limit:
            out_of_memory = True
            kill_descendants()
        waits = [kill_at - now] if kill_at is not None else []
        waits += [MEMORY_POLL_SECONDS] if memory_limit else []
        ready, _, _ = select.select(watched, [], [], max(0.0, min(waits)) if waits else None)
        if wake_read in ready:
            drain(wake_read)
        if control_fd in ready:
            command = os.read(control_fd, 256).decode()
            if not command:  # the emulator is gone
                watched.remove(control_fd)
                kill_descendants()
            for line in command.splitlines():
                grace = float(line.split()[1])
                if grace <= 0:
                    kill_descendants()
                elif kill_at is None:
                    os.kill(job_pid, signal.SIGTERM)
                    kill_at = time.monotonic() + grace
    # The job process is gone: whatever it left behind goes too, as with its container. Every process
    # below this one is a child of it or of one of its children (orphans come back to it), so with no
    # child left there is nothing to look for in /proc.
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return job_status, out_of_memory
        if pid == 0:
            kill_descendants()
            time.sleep(0.005)


def drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def reap(job_pid: int, job_status: int | None) -> int | None:
    """Collect finished children (orphans come here too); the job process's wait status once it ended."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return job_status
        if pid == 0:
            return job_status
        if pid == job_pid:
            job_status = status


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, parents before children."""
    found = []
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for thread in threads:
        try:
            with open(f"/proc/{pid}/task/{thread}/children") as children:
                for child in children.read().split():
                    found.append(int(child))
                    found += descendants(int(child))
        except OSError:
            continue
    return found


def kill_descendants() -> None:
    for pid in descendants(os.getpid()):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def resident_bytes() -> int:
    total = 0
    for pid in descendants(os.getpid()):
        try:
            with open(f"/proc/{pid}/statm") as statm:
                total += int(statm.read().split()[1]) * PAGE_SIZE
        except (OSError, IndexError, ValueError):
            continue
    return total


def run_python(request: dict) -> None:
    """Run ``python SCRIPT ARGS`` or ``python -c CODE ARGS`` as a fresh interpreter would, then exit."""
    args = request["argv"][1:]
    main = types.ModuleType("__main__")
    main.__builtins__ = builtins
    sys.modules["__main__"] = main
    if args[0] == "-c":
        sys.argv = ["-c"] + args[2:]
        sys.path[:] = [""] + BASE_PATH
        source, filename = args[1], "<string>"
    else:
        sys.argv = list(args)
        sys.path[:] = [os.path.dirname(os.path.realpath(args[0]))] + BASE_PATH
        main.__file__, main.__cached__ = args[0], None
        main.__loader__ = importlib.machinery.SourceFileLoader("__main__", args[0])
        source, filename = None, args[0]
    forget_shadowed_preloads()
    try:
        program = request.get("code")
        if program is not None and request["user"]:
            readable_as_the_job(filename)
        if program is None:  # -c, or a script the template could not compile: any error is the job's
            if source is None:
                with open(filename, "rb") as script:
                    source = script.read()
            program = compile(source, filename, "exec", dont_inherit=True)
        exec(program, main.__dict__)
        status = 0
    except SystemExit as exc:
        status = exit_code(exc)
    except BaseException as exc:  # reported as the interpreter would, without this file's frames
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename == THIS_FILE:
            tb = tb.tb_next
        sys.excepthook(type(exc), exc.with_traceback(tb), tb)
        # CPython ends an interrupted program by SIGINT itself.
        finish(1, signal.SIGINT if isinstance(exc, KeyboardInterrupt) else None)
    finish(status)


def readable_as_the_job(script: str) -> None:
    """The template compiled the script as root: the job runs it only if it may read it, as ``python SCRIPT``."""
    try:
        os.close(os.open(script, os.O_RDONLY))
    except OSError as exc:
        print(f"{sys.executable}: can't open file {script!r}: [Errno {exc.errno}] {exc.strerror}", file=sys.stderr)
        finish(2)


def exit_code(exc: SystemExit) -> int:
    """What the interpreter makes of ``sys.exit(x)``: None is 0, an int is itself, anything else is printed, 1."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF
    print(exc.code, file=sys.stderr)
    return 1


def forget_shadowed_preloads() -> None:
    """A job whose own ``sys.path`` finds another file for a module the template preloaded from its folder
    imports that file, as a fresh interpreter would: a program beside its own copy of ``htc_worker.py``
    (one a learner changed) runs with its copy, not the project's."""
    for name, file in FOLDER_PRELOADS.items():
        spec = importlib.machinery.PathFinder.find_spec(name, sys.path)
        if spec is not None and spec.origin != file:
            sys.modules.pop(name, None)


def finish(code: int, by_signal: int | None = None) -> None:
    """The interpreter's exit as a program sees it: threads joined, atexit run, streams flushed.

    The teardown of every module that follows in a normal exit is skipped (it
    costs a tenth of a second with OpenCV and boto3 loaded); Python does not
    promise ``__del__`` for objects alive at exit, and the job's own namespace
    is still released first so its open files are closed.
    """
    # Imported here, not with the others: threading runs Python code in every fork's child
    # (its at-fork hook), which cost a supervisor's exec'd job process 0.4 ms; a Python job has it loaded.
    import threading

    threading._shutdown()
    atexit._run_exitfuncs()
    sys.modules["__main__"].__dict__.clear()
    gc.collect()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # as CPython, an unflushable stdout is exit status 120
            code = 120
    if by_signal is not None:
        signal.signal(by_signal, signal.SIG_DFL)
        os.kill(os.getpid(), by_signal)
    os._exit(code)


def warm_up_steps(entries: list[str]) -> list:
    """One step per entry, then what needs more than an import: ``MODULE`` imports a module,
    ``MODULE:FUNCTION`` also calls a function of it, ``path=DIR`` lets the steps after it import
    from DIR (the jobs' own ``sys.path`` is not changed)."""
    return [lambda entry=entry: preload(entry) for entry in entries] + [warm_libraries]


def preload(entry: str) -> None:
    if entry.startswith("path="):
        PRELOAD_FOLDERS.append(entry.removeprefix("path="))
        sys.path.append(PRELOAD_FOLDERS[-1])
        return
    name, _, function = entry.partition(":")
    before = dict(os.environ)
    try:
        module = importlib.import_module(name)
        if function:
            getattr(module, function)()
    except Exception:  # a job that needs it imports it (and meets the error) itself
        return
    finally:
        PRELOAD_ENV.update({k: v for k, v in os.environ.items() if before.get(k) != v})
    origin = getattr(module, "__file__", None)
    if origin and os.path.dirname(origin) in PRELOAD_FOLDERS:
        FOLDER_PRELOADS[name] = origin


def warm_libraries() -> None:
    if "boto3" in sys.modules:
        warm_boto3()
    if "numpy" in sys.modules:
        import numpy.random

        os.register_at_fork(after_in_child=numpy.random.seed)  # a fresh seed per job, as a new process gets


def warm_boto3() -> None:
    """Create boto3's default session and have its loader parse the S3 model and its exceptions factory
    build S3's exception classes (``client.exceptions``: 3 ms), as a job's first client would; the client
    that does it lives in a throwaway session, so no configuration file or credential is read or kept."""
    import boto3
    import botocore.session

    boto3.setup_default_session()
    default = boto3.DEFAULT_SESSION._session
    throwaway = botocore.session.Session()
    throwaway.register_component("data_loader", default.get_component("data_loader"))
    throwaway._register_internal_component("exceptions_factory", default._get_internal_component("exceptions_factory"))
    client = throwaway.create_client(
        "s3", region_name="us-east-1", aws_access_key_id="warm", aws_secret_access_key="warm"
    )
    client.exceptions  # noqa: B018 -- built here once, found by every job's client


def reset_hidden_signals() -> None:
    """Set the C library's own signals to their default, once, for every job below this process.

    A signal ignored here stays ignored through ``exec``: GNU make ignores these two in the commands it
    runs, so a job of an emulator started by ``make`` began with them ignored, as no container does.
    """
    if SYS_RT_SIGACTION is None:
        return
    default = ctypes.create_string_buffer(64)  # larger than the kernel's struct sigaction anywhere
    for number in HIDDEN_SIGNALS:
        LIBC.syscall(SYS_RT_SIGACTION, number, default, None, 8)


if __name__ == "__main__":
    reset_hidden_signals()
    if sys.argv[1] == "--slot":
        serve_slot(int(sys.argv[2]))
    run_python(serve(int(sys.argv[1]), warm_up_steps(sys.argv[2:])))
