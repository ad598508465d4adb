"""How process-mode jobs are launched and stopped: a fork of a warm template that is still a fresh
process to the job, every descendant contained, ``docker stop`` on timeout and cancel, maxMemory.

The first tests drive :class:`htc_emulator.launcher.ProcessLauncher` directly and compare each
job with the same program run by ``subprocess``; the rest go through an emulator with
``time_scale=0.1`` (a 60 s timeout lasts 6 s, the 10 s stop grace period 1 s), the idealised
one: these tests are about processes, not about the platform's delays.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from htc_emulator import running
from htc_emulator.job_users import FIRST_JOB_UID, JobUsers
from htc_emulator.launcher import ProcessLauncher

# Run as root (this machine, CI), the emulator runs each process-mode job as a user of its own.
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="jobs run as users of their own only where the emulator is root")

PROBE = r"""
import json, os, signal, sys
import cv2  # preloaded by the template
report = {
    "argv": sys.argv, "cwd": os.getcwd(), "env": dict(os.environ), "path0": sys.path[0],
    "path": sys.path[1:], "name": __name__, "file": __file__, "main": {k: repr(type(globals().get(k, "unset")))
        for k in ("__loader__", "__spec__", "__package__", "__cached__", "__builtins__", "__doc__")},
    "handlers": {s: str(signal.getsignal(getattr(signal, s)))
                 for s in ("SIGTERM", "SIGINT", "SIGPIPE", "SIGCHLD", "SIGHUP")},
    "blocked": sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])),
    "stdin": sys.stdin.read(), "leak": getattr(json, "LEAKED", None), "flags": str(sys.flags),
    "fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
}
json.LEAKED = "from an earlier job"
os.environ["LEAKED"] = "from an earlier job"
print(json.dumps(report))
print("to stderr", file=sys.stderr)
mode = sys.argv[1]
if mode == "exit":
    sys.exit(int(sys.argv[2]))
if mode == "message":
    sys.exit("a message")
if mode == "raise":
    raise ValueError("boom")
if mode == "signal":
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGTERM)
"""


@pytest.fixture(scope="module")
def launcher(tmp_path_factory):
    env = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
    launcher = ProcessLauncher(env)
    yield launcher, env
    launcher.close()


@pytest.fixture
def drop_box():
    """A folder a job of any uid can write to and the test can read (pytest's own are root's alone)."""
    folder = Path(tempfile.mkdtemp(prefix="htc-test-drop-box-"))
    folder.chmod(0o1777)
    yield folder
    shutil.rmtree(folder)


@pytest.fixture
def job_user(launcher):
    """``job_user()``: a fresh user of its own for a launcher job, and a scratch folder it owns."""
    scratch_root = Path(tempfile.mkdtemp(prefix="htc-test-scratch-"))
    users = JobUsers(scratch_root, launcher[0])
    assert users.unconfined is None, users.unconfined

    def make(image_files=()) -> tuple[dict, Path]:
        user = users.next(image_files)
        scratch = Path(tempfile.mkdtemp(dir=scratch_root))
        users.hand_over(scratch, user)
        return user, scratch

    yield make
    shutil.rmtree(scratch_root)


def launched(launcher, argv, env, cwd) -> tuple[int, str]:
    process = launcher.start(argv, env, cwd)
    with process.stdout:
        output = process.stdout.read().decode()
    return process.wait(), output


def default_signals() -> None:
    """Every signal at its default, as a job starts (and a container's first process), whatever pytest inherited.

    A test run started in the background of a script, or under nohup, inherits SIGINT, SIGQUIT or
    SIGHUP as ignored; a reference process must not carry that into the comparison.
    """
    for number in signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP}:
        try:
            signal.signal(number, signal.SIG_DFL)
        except (OSError, ValueError):
            pass


def direct(argv, env, cwd) -> tuple[int, str]:
    result = subprocess.run(
        argv,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
        preexec_fn=default_signals,
    )
    return result.returncode, result.stdout


def report_of(output: str) -> dict:
    return json.loads(next(line for line in output.splitlines() if line.startswith("{")))


def comparable(output: str) -> tuple:
    report = report_of(output)
    report.pop("fds")  # compared on their own below
    return report, [line for line in output.splitlines() if not line.startswith("{")]


@pytest.mark.parametrize(
    "args, returncode",
    [
        (["ok"], 0),
        (["exit", "7"], 7),
        (["message"], 1),
        (["raise"], 1),
        (["signal"], -signal.SIGTERM),
    ],
)
def test_a_python_job_in_the_template_is_the_same_as_a_fresh_process(launcher, tmp_path, args, returncode):
    launcher, base = launcher
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    env = {**base, "HOME": str(tmp_path), "JOB_SETTING": "a value with spaces"}
    argv = [sys.executable, str(script), *args]
    assert launcher._runs_in_template(argv, env)  # the fork path, not an exec
    forked = launched(launcher, argv, env, tmp_path)
    fresh = direct(argv, env, tmp_path)
    assert forked[0] == fresh[0] == returncode
    assert comparable(forked[1]) == comparable(fresh[1])
    report = report_of(forked[1])
    assert report["fds"] == [0, 1, 2, 3]  # 3 is listdir's own
    assert report["leak"] is None and "LEAKED" not in report["env"]


def test_no_job_finds_an_earlier_jobs_environment_in_the_template(launcher, tmp_path):
    """Every job is a fork of the template: what the template once held (a job's token), every later job holds."""
    launcher, base = launcher
    secret = "a-job-token-" + secrets.token_hex(16)
    for argv in ([sys.executable, "-c", "pass"], ["true"]):
        assert launched(launcher, argv, {**base, "RESCALE_HTC_BEARER_TOKEN": secret}, tmp_path) == (0, "")
    assert not writable_memory_holds(launcher._template._process.pid, secret.encode())


def test_python_jobs_run_one_at_a_time_under_a_fork_of_the_template_that_stays(launcher, tmp_path):
    """One fork a job, from a supervisor that is a warm copy of the template, where a supervisor forked per job
    and the job forked from it cost two forks of the template's page tables. The supervisor never reads a job's
    request, so no later job forked from it finds an earlier job's token in its memory."""
    launcher, env = launcher
    probe = "import os, sys; print(os.getppid(), 'cv2' in sys.modules)"
    wait_for(lambda: "True" in launched(launcher, [sys.executable, "-c", probe], env, tmp_path)[1])  # warm
    secret = "a-job-token-" + secrets.token_hex(16)
    first = launched(launcher, [sys.executable, "-c", probe], {**env, "RESCALE_HTC_BEARER_TOKEN": secret}, tmp_path)
    second = launched(launcher, [sys.executable, "-c", probe], env, tmp_path)
    assert first[0] == second[0] == 0 and first[1] == second[1]
    supervisor = int(first[1].split()[0])
    assert supervisor != launcher._template._process.pid
    assert pid_alive(supervisor) and not writable_memory_holds(supervisor, secret.encode())


def writable_memory_holds(pid: int, needle: bytes) -> bool:
    """Whether the process's heap, stacks or other writable memory (freed blocks included) contains ``needle``."""
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", buffering=0) as memory:
        for line in maps:
            span, permissions = line.split()[:2]
            start, end = (int(address, 16) for address in span.split("-"))
            if permissions.startswith("rw"):
                try:
                    memory.seek(start)
                    if needle in memory.read(end - start):
                        return True
                except OSError:  # [vvar] and the like
                    continue
    return False


def test_a_script_that_does_not_compile_fails_as_in_a_fresh_process(launcher, tmp_path):
    launcher, env = launcher
    script = tmp_path / "broken.py"
    script.write_text("print('never')\ndef (\n")
    argv = [sys.executable, str(script)]
    forked, fresh = launched(launcher, argv, env, tmp_path), direct(argv, env, tmp_path)
    assert forked == fresh and forked[0] == 1 and "SyntaxError" in forked[1]


def test_python_c_and_other_commands_keep_argv_env_and_cwd(launcher, tmp_path):
    launcher, base = launcher
    env = {**base, "X": "1"}
    code = "import os, sys; print(sys.argv, sys.path[0] == '', os.getcwd(), os.environ['X'])"
    argv = [sys.executable, "-c", code, "a", "b c"]
    assert launched(launcher, argv, env, tmp_path) == direct(argv, env, tmp_path)
    shell = ["sh", "-c", 'echo "$0 $1 $X $PWD"; trap - TERM; exit 5', "zero", "one"]
    assert launched(launcher, shell, env, tmp_path) == direct(shell, env, tmp_path)
    different_startup = {**env, "PYTHONHASHSEED": "1"}  # read by a fresh interpreter only: exec'd
    assert not launcher._runs_in_template(argv, different_startup)
    assert launched(launcher, argv, different_startup, tmp_path) == direct(argv, different_startup, tmp_path)
    with pytest.raises(FileNotFoundError):
        launcher.start(["no-such-program-here"], env, tmp_path)


def test_a_command_that_is_not_python_is_supervised_from_the_bare_template(launcher, tmp_path):
    """A fork copies the page tables of everything its template loaded: an exec'd job needs none of it."""
    launcher, env = launcher
    python = [sys.executable, "-c", "import os; print(open(f'/proc/{os.getppid()}/maps').read())"]
    wait_for(lambda: "cv2" in launched(launcher, python, env, tmp_path)[1])  # once the template has loaded it
    returncode, supervisor_maps = launched(launcher, ["sh", "-c", "cat /proc/$PPID/maps"], env, tmp_path)
    assert returncode == 0 and "python" in supervisor_maps and "cv2" not in supervisor_maps


def test_commands_that_are_not_python_run_one_at_a_time_under_a_supervisor_that_stays(launcher, tmp_path):
    """A supervisor per job slot, not a fork per job: it never reads a job's request (the job process
    does), so no later job forked from it finds an earlier job's token in its memory."""
    launcher, env = launcher
    secret = "a-job-token-" + secrets.token_hex(16)
    first = launched(launcher, ["sh", "-c", "echo $PPID"], {**env, "RESCALE_HTC_BEARER_TOKEN": secret}, tmp_path)
    second = launched(launcher, ["sh", "-c", "echo $PPID"], env, tmp_path)
    assert first[0] == second[0] == 0 and first[1] == second[1]
    supervisor = int(first[1])
    assert pid_alive(supervisor) and not writable_memory_holds(supervisor, secret.encode())


def test_what_a_job_left_behind_ends_with_it_under_a_supervisor_that_stays(launcher, tmp_path):
    """Orphans come back to the supervisor, which kills and reaps them before it reports the job's end:
    the next job it runs finds nothing of the earlier one below it."""
    launcher, env = launcher
    escape = "setsid sleep 600 & echo $!; (sleep 600 & echo $!); echo $PPID"
    returncode, output = launched(launcher, ["sh", "-c", escape], env, tmp_path)
    *escapees, supervisor = map(int, output.split())
    assert returncode == 0 and len(escapees) == 2
    assert not [pid for pid in escapees if pid_alive(pid)]
    returncode, output = launched(
        launcher, ["sh", "-c", "echo $$ $PPID; cat /proc/$PPID/task/*/children"], env, tmp_path
    )
    job, its_supervisor, *below = map(int, output.split())
    assert returncode == 0 and its_supervisor == supervisor and below == [job]


def test_a_command_is_found_on_the_jobs_path_as_execvpe_finds_it(launcher, tmp_path):
    """The first folder that holds the command wins; one whose file the job may not run is passed over, a
    relative folder is the job's working directory, and a command on no folder is not found."""
    launcher, env = launcher
    folders = {name: tmp_path / name for name in ("first", "second", "work")}
    for name, folder in folders.items():
        folder.mkdir()
        (folder / "which-one").write_text(f"#!/bin/sh\necho {name}\n")
        (folder / "which-one").chmod(0o755)
    (folders["first"] / "which-one").chmod(0o644)  # not executable: the search goes on
    path = os.pathsep.join([str(folders["first"]), str(folders["second"]), env["PATH"]])
    assert launched(launcher, ["which-one"], {**env, "PATH": path}, tmp_path) == (0, "second\n")
    relative = os.pathsep.join([str(folders["first"]), ".", str(folders["second"])])
    assert launched(launcher, ["which-one"], {**env, "PATH": relative}, folders["work"]) == (0, "work\n")
    with pytest.raises(FileNotFoundError):
        launcher.start(["which-one"], env, tmp_path)


def test_a_command_that_is_not_python_starts_with_no_signal_ignored_or_blocked(launcher, tmp_path):
    launcher, env = launcher
    returncode, output = launched(launcher, ["grep", "-E", "^Sig(Ign|Blk)", "/proc/self/status"], env, tmp_path)
    assert returncode == 0 and output.split() == ["SigBlk:", "0" * 16, "SigIgn:", "0" * 16]


def test_a_supervisor_that_was_killed_is_replaced_for_the_next_job(launcher, tmp_path):
    launcher, env = launcher
    process = launcher.start(["sh", "-c", "echo $$ $PPID; exec sleep 600"], env, tmp_path)
    with process.stdout:
        job, supervisor = map(int, process.stdout.readline().split())
    os.kill(supervisor, signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL
    returncode, output = launched(launcher, ["sh", "-c", "echo $PPID"], env, tmp_path)
    assert returncode == 0 and int(output) not in (supervisor, 0) and pid_alive(int(output))
    wait_for(lambda: not pid_alive(job))


WORKER_FOLDER = Path(__file__).resolve().parents[2] / "face_tagger"


def wait_for_the_templates_warm_up(launcher, env, folder: Path, probe_source: str, expected: str) -> None:
    """Run a probe that imports nothing (what it finds loaded, the template loaded) until it prints ``expected``:
    once the template got to its warm-up."""
    probe = folder / "probe.py"
    probe.write_text(probe_source)

    def warmed_up():
        returncode, output = launched(launcher, [sys.executable, str(probe)], env, folder)
        assert returncode == 0, output
        return output.strip() == expected

    wait_for(warmed_up)


def test_the_worker_finds_its_cascade_parsed_by_the_template(launcher, tmp_path):
    """The cascade does not depend on the job: parsed once before the fork, not once a job."""
    launcher, env = launcher
    wait_for_the_templates_warm_up(
        launcher,
        env,
        tmp_path,
        "import sys\nloaded = sys.modules.get('haar_cascades')\n"
        "print(len(loaded._PARSED), loaded.__file__) if loaded else print(0, '-')\n",
        f"1 {WORKER_FOLDER / 'haar_cascades.py'}",
    )


def test_the_worker_finds_its_worker_layer_and_s3s_exception_classes_made_by_the_template(launcher, tmp_path):
    """What a face_tagger job's first steps would import or build, whatever the job: done once before the fork."""
    launcher, env = launcher
    wait_for_the_templates_warm_up(
        launcher,
        env,
        tmp_path,
        "import sys\nworker = sys.modules.get('htc_worker')\nboto3 = sys.modules.get('boto3')\n"
        "session = boto3 and boto3.DEFAULT_SESSION and boto3.DEFAULT_SESSION._session\n"
        "factory = session and session._get_internal_component('exceptions_factory')\n"
        "print(worker.__file__ if worker else '-', sorted(factory._client_exceptions_cache) if factory else [],"
        " all(name in sys.modules for name in ('argparse', 'netrc', 'boto3.s3.inject')))\n",
        f"{WORKER_FOLDER / 'htc_worker.py'} ['s3'] True",
    )


def test_a_program_beside_its_own_copy_of_a_preloaded_worker_module_imports_its_copy(launcher, tmp_path):
    """As in a fresh interpreter: the script's folder comes first, and the template's htc_worker is not the job's."""
    launcher, env = launcher
    own = tmp_path / "own"
    own.mkdir()
    (own / "htc_worker.py").write_text("WHOSE = 'the job'\n")
    (own / "program.py").write_text(
        "import sys\npreloaded = sys.modules.get('htc_worker')\nimport htc_worker\n"
        "print(preloaded is not None and preloaded.__file__, htc_worker.WHOSE)\n"
    )
    # A probe with no copy beside it finds the template's.
    wait_for_the_templates_warm_up(
        launcher,
        env,
        tmp_path,
        "import sys\nprint(getattr(sys.modules.get('htc_worker'), '__file__', '-'))\n",
        str(WORKER_FOLDER / "htc_worker.py"),
    )
    returncode, output = launched(launcher, [sys.executable, str(own / "program.py")], env, own)
    assert (returncode, output.strip()) == (0, "False the job")


def test_a_job_process_does_not_outlive_its_supervisor(launcher, tmp_path):
    launcher, env = launcher
    process = launcher.start(
        [sys.executable, "-c", "import os, time; print(os.getpid(), os.getppid(), flush=True); time.sleep(600)"],
        env,
        tmp_path,
    )
    assert_ends_with_its_supervisor(process)


@as_root
def test_a_job_of_its_own_user_does_not_outlive_its_supervisor(launcher, job_user):
    """Changing credentials clears the parent-death signal: it is set once the job is its own user."""
    launcher, env = launcher
    user, scratch = job_user()
    code = "import os, time; print(os.getpid(), os.getppid(), flush=True); time.sleep(600)"
    assert_ends_with_its_supervisor(launcher.start([sys.executable, "-c", code], env, scratch, user=user))
    assert_ends_with_its_supervisor(
        launcher.start(["sh", "-c", "echo $$ $PPID; exec sleep 600"], env, scratch, user=user)
    )


def assert_ends_with_its_supervisor(process) -> None:
    with process.stdout:
        job, supervisor = map(int, process.stdout.readline().split())
        assert pid_alive(job)
        os.kill(supervisor, signal.SIGKILL)
        assert process.wait(timeout=60) == -signal.SIGKILL
    wait_for(lambda: not pid_alive(job))


# What a job of a user of its own reaches of the launcher's (root's) processes and files.
OWN_USER_PROBE = r"""
import json, os, sys, tempfile
def attempt(action):
    try:
        action()
        return "allowed"
    except OSError as exc:
        return type(exc).__name__
target = int(sys.argv[1])
with open(os.path.join(os.environ["HOME"], "home-file"), "w") as home_file:
    home_file.write("written")
with tempfile.NamedTemporaryFile() as temporary:
    tmp = os.path.dirname(temporary.name)
status = dict(line.split(":\t") for line in open("/proc/self/status").read().splitlines() if ":\t" in line)
print(json.dumps({
    "ids": [os.getuid(), os.geteuid(), os.getgid(), os.getegid()], "groups": os.getgroups(),
    "no_new_privs": status["NoNewPrivs"].strip(), "tmp": tmp, "cwd": os.getcwd(),
    "environ": attempt(lambda: open(f"/proc/{target}/environ", "rb").read()),
    "signal": attempt(lambda: os.kill(target, 0)),
    "supervisor": attempt(lambda: os.kill(os.getppid(), 0)),
    "secret": attempt(lambda: open(sys.argv[2]).read()),
}))
"""


@as_root
def test_a_job_of_its_own_user_reaches_nothing_of_the_launchers_user(launcher, job_user, tmp_path, drop_box):
    launcher, base = launcher
    holder = subprocess.Popen(["sleep", "600"], env={"RESCALE_API_KEY": "the key"})  # a kernel with the key
    secret = drop_box / "apiconfig"  # in a folder anyone may enter: the file's mode alone keeps it
    secret.write_text("[default]\napikey = the key\n")
    secret.chmod(0o600)
    script = drop_box / "probe.py"
    script.write_text(OWN_USER_PROBE)
    script.chmod(0o644)
    try:
        for argv in ([sys.executable, str(script)], ["sh", "-c", f'exec "{sys.executable}" "$@"', "sh", str(script)]):
            user, scratch = job_user()
            env = {**base, "HOME": str(scratch), "TMPDIR": str(scratch)}
            returncode, output = launched_as(launcher, [*argv, str(holder.pid), str(secret)], env, scratch, user)
            assert returncode == 0, output
            report = report_of(output)
            assert report["ids"] == [user["uid"]] * 2 + [user["gid"]] * 2 and user["uid"] >= FIRST_JOB_UID
            assert report["groups"] == [] and report["no_new_privs"] == "1"
            assert report["environ"] == report["signal"] == report["supervisor"] == "PermissionError", report
            assert report["secret"] == "PermissionError", report
            assert report["tmp"] == report["cwd"] == str(scratch) and (scratch / "home-file").read_text() == "written"
    finally:
        holder.kill()
        holder.wait()


@as_root
def test_a_job_of_its_own_user_runs_in_the_warm_template_what_it_may_read(launcher, job_user, drop_box):
    launcher, base = launcher
    probe = drop_box / "probe.py"
    probe.write_text("import sys\nprint('cv2' in sys.modules, sys.modules.get('haar_cascades') is not None)\n")
    probe.chmod(0o644)
    argv = [sys.executable, str(probe)]
    assert launcher._runs_in_template(argv, base)
    wait_for(lambda: launched_as(launcher, argv, base, *job_user()[::-1]) == (0, "True True\n"))
    probe.chmod(0o600)  # the template, root, still compiles it; the job may not read it, so it does not run
    returncode, output = launched_as(launcher, argv, base, *job_user()[::-1])
    assert (
        returncode == 2
        and output == f"{sys.executable}: can't open file {str(probe)!r}: [Errno 13] Permission denied\n"
    )


@as_root
def test_each_job_of_a_supervisor_that_stays_sees_the_files_of_its_own_way(launcher, job_user, tmp_path):
    """The supervisor joins its job's mount namespace itself: the job after it, of another way or of none,
    sees the files its own way holds, not those of the job before it."""
    launcher, env = launcher
    private = Path(tempfile.mkdtemp(prefix="htc-test-private-"))  # closed to a job's user: its way covers it
    try:
        for name in ("first", "other", "second"):
            (private / name).write_text(name)
            (private / name).chmod(0o644)
        listing = ["sh", "-c", f"ls {private}"]
        first, second = job_user((private / "first",)), job_user((private / "second",))
        assert launched_as(launcher, listing, env, *first[::-1]) == (0, "first\n")
        assert launched_as(launcher, listing, env, *second[::-1]) == (0, "second\n")
        assert launched(launcher, listing, env, tmp_path) == (0, "first\nother\nsecond\n")
        assert launched_as(launcher, listing, env, *first[::-1]) == (0, "first\n")
    finally:
        shutil.rmtree(private)


@pytest.mark.slow
@as_root
def test_an_emulator_that_is_not_root_says_at_start_what_its_jobs_can_reach(launcher, job_user, caplog):
    """Run by a user of its own (one the launcher gives a job), an emulator cannot confine its jobs, and says so."""
    launcher, base = launcher
    project = Path(__file__).resolve().parents[2]
    user, scratch = job_user((project,))
    code = "from htc_emulator import running\nwith running(profile='ideal'):\n    print('started', flush=True)\n"
    env = {**base, "HOME": str(scratch), "TMPDIR": str(scratch), "PYTHONPATH": str(project)}
    returncode, output = launched_as(launcher, [sys.executable, "-c", code], env, scratch, user)
    assert returncode == 0 and "started" in output, output
    assert "process-mode jobs run as this user: the emulator does not run as root" in output
    assert "Jobs run as containers (--docker) are isolated" in output
    with running(concurrency=1, profile="ideal"):  # as root: not a word
        pass
    assert not [record for record in caplog.records if "process-mode jobs run as this user" in record.getMessage()]


def launched_as(launcher, argv, env, cwd, user) -> tuple[int, str]:
    process = launcher.start(argv, env, cwd, user=user)
    with process.stdout:
        output = process.stdout.read().decode()
    return process.wait(), output


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def wait_for(predicate, timeout: float = 60, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(interval)
    return result


# Leaves two processes behind in sessions of their own (a setsid'd child and a double-forked
# grandchild), logs their pids, traps SIGTERM by writing a file, then does what MODE says.
JOB = r"""
import os, signal, subprocess, sys, time
escaped = subprocess.Popen(["sleep", "600"], start_new_session=True, stdout=subprocess.DEVNULL)
print("escapee", escaped.pid, flush=True)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        print("escapee", os.getpid(), flush=True)
        time.sleep(600)
    os._exit(0)
os.wait()
mode = os.environ["MODE"]
def on_term(*_):
    open(os.environ["TERM_FILE"], "w").write("got SIGTERM")
    if mode == "obey":
        sys.exit(3)
signal.signal(signal.SIGTERM, on_term)
if mode == "exit":
    time.sleep(0.2)
    sys.exit(0)
if mode == "memory":
    hog = bytearray(int(os.environ["HOG_MIB"]) << 20)
    for i in range(0, len(hog), 4096):
        hog[i] = 1
print("sleeping", flush=True)
while True:
    time.sleep(1)
"""


# Two jobs at once: the first waits while the second tries the processes of the emulator's user
# (the emulator, a notebook kernel holding the API key), its own supervisor and the first job,
# and the emulator's files; then each does a job's work: its scratch folder, its job token.
CONFINED_JOB = r"""
import json, os, sys, tempfile, time
import requests
def attempt(action):
    try:
        action()
        return "allowed"
    except OSError as exc:
        return type(exc).__name__
box = os.environ["DROP_BOX"]
report = {"uid": os.getuid()}
if os.environ["AWS_BATCH_JOB_ARRAY_INDEX"] == "0":
    open(os.path.join(box, "first"), "w").write(str(os.getpid()))
    while not os.path.exists(os.path.join(box, "second-done")):  # the job's timeout bounds the wait
        time.sleep(0.05)
else:
    while not os.path.exists(os.path.join(box, "first")):
        time.sleep(0.05)
    others = {"emulator": int(os.environ["EMULATOR_PID"]), "kernel": int(os.environ["KERNEL_PID"]),
              "supervisor": os.getppid(), "first job": int(open(os.path.join(box, "first")).read())}
    for name, pid in others.items():
        report[name] = [attempt(lambda: open(f"/proc/{pid}/environ", "rb").read()), attempt(lambda: os.kill(pid, 0))]
    report["apiconfig"] = attempt(lambda: open(os.environ["APICONFIG"]).read())
    report["other attempts"] = attempt(lambda: os.listdir(os.path.dirname(os.getcwd())))
    open(os.path.join(box, "second-done"), "w").close()
with open(os.path.join(os.environ["HOME"], "home-file"), "w") as home_file:
    home_file.write("written")
with tempfile.NamedTemporaryFile() as temporary:
    report["scratch"] = [os.path.dirname(temporary.name) == os.getcwd(), "home-file" in os.listdir(".")]
api, project, task = (os.environ[f"RESCALE_HTC_{n}"] for n in ("API_URL", "PROJECT_ID", "TASK_ID"))
token = {"Authorization": "Bearer " + os.environ["RESCALE_HTC_BEARER_TOKEN"]}
report["own task"] = requests.get(f"{api}/htc/projects/{project}/tasks/{task}", headers=token).status_code
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def job_image(tmp_path_factory) -> dict:
    context = tmp_path_factory.mktemp("launcher-image")
    (context / "job.py").write_text(JOB)
    (context / "Dockerfile").write_text('FROM python:3.12-slim\nCOPY job.py /job.py\nCMD ["python", "/job.py"]\n')
    (context / "confined.py").write_text(CONFINED_JOB)
    (context / "Confined.Dockerfile").write_text("FROM python:3.12-slim\nCOPY confined.py /confined.py\n")
    return {
        "launch:v1": (context / "Dockerfile", context),
        "confined:v1": (context / "Confined.Dockerfile", context),
    }


@pytest.fixture(scope="module")
def emu(job_image, client_for):
    with running(images=job_image, time_scale=0.1, concurrency=2, profile="ideal") as emulator:
        yield client_for(emulator)


@pytest.fixture
def task(emu):
    project_id = emu.new_project(repositories=["launch"])
    return project_id, emu.new_task(project_id)


def submit(emu, task, drop_box, mode: str, timeout: int = 600, **definition) -> tuple[str, Path]:
    term_file = drop_box / f"term-{mode}"  # where the job, of a user of its own, may write
    envs = [
        {"name": "MODE", "value": mode},
        {"name": "TERM_FILE", "value": str(term_file)},
        {"name": "HOG_MIB", "value": "400"},
    ]
    parent = emu.submit(*task, {"imageName": "launch:v1", "envs": envs, "execTimeoutSeconds": timeout, **definition})
    return f"{parent}:0", term_file


def escapees(client, task, job_id) -> list[int]:
    """The pids of the two processes the job left in sessions of their own, from its log."""

    def logged():
        pids = [int(line.split()[1]) for line in client.logs(*task, job_id) if line.startswith("escapee")]
        return pids if len(pids) == 2 else None

    pids = wait_for(logged)
    assert all(pid_alive(pid) for pid in pids) or client.job(*task, job_id)["status"] in ("SUCCEEDED", "FAILED")
    return pids


def test_nothing_a_job_started_outlives_its_end(emu, task, drop_box):
    job_id, _ = submit(emu, task, drop_box, "exit")
    emu.wait_terminal(*task, 1)
    job = emu.job(*task, job_id)
    assert job["status"] == "SUCCEEDED", job
    assert not [pid for pid in escapees(emu, task, job_id) if pid_alive(pid)]


def test_an_attempts_folder_goes_once_its_job_has_ended(emu, task):
    """Removed by a thread of its own after the job's end, with what the job left in it."""
    parent = emu.submit(*task, {"imageName": "launch:v1", "commands": ["sh", "-c", "pwd; mkdir kept; touch kept/file"]})
    emu.wait_terminal(*task, 1)
    assert emu.job(*task, f"{parent}:0")["status"] == "SUCCEEDED"
    (folder,) = emu.logs(*task, f"{parent}:0")
    assert Path(folder).name.startswith("attempt-")
    wait_for(lambda: not Path(folder).exists())


def test_nothing_a_job_started_outlives_its_task(emu, task, drop_box):
    job_id, _ = submit(emu, task, drop_box, "ignore")
    pids = escapees(emu, task, job_id)
    emu.ok("DELETE", f"/htc/projects/{task[0]}/tasks/{task[1]}")
    wait_for(lambda: emu.job(*task, job_id)["status"] == "FAILED")
    wait_for(lambda: not [pid for pid in pids if pid_alive(pid)])


def test_nothing_a_job_started_outlives_the_emulator(job_image, client_for, drop_box):
    with running(images=job_image, time_scale=0.1, concurrency=1, profile="ideal") as emulator:
        client = client_for(emulator)
        project_id = client.new_project(repositories=["launch"])
        task = (project_id, client.new_task(project_id))
        job_id, _ = submit(client, task, drop_box, "ignore")
        pids = escapees(client, task, job_id)
        assert all(pid_alive(pid) for pid in pids)
    assert not [pid for pid in pids if pid_alive(pid)]


@pytest.mark.slow
def test_a_timeout_sends_sigterm_then_sigkill_after_the_grace_period(emu, task, drop_box):
    ignores, ignored_term = submit(emu, task, drop_box, "ignore", timeout=60)
    obeys, obeyed_term = submit(emu, task, drop_box, "obey", timeout=60)
    emu.wait_terminal(*task, 2)
    stubborn, polite = emu.job(*task, ignores), emu.job(*task, obeys)
    assert ignored_term.read_text() == obeyed_term.read_text() == "got SIGTERM"
    assert stubborn["failureCode"] == polite["failureCode"] == "ErrorTimeout"
    assert stubborn["container"]["exitCode"] == 137  # SIGKILL once the grace period was over
    assert polite["container"]["exitCode"] == 3  # its own exit, from its SIGTERM handler


def test_a_cancel_sends_sigterm_then_sigkill_after_the_grace_period(emu, task, drop_box):
    job_id, term_file = submit(emu, task, drop_box, "ignore")
    wait_for(lambda: "sleeping" in emu.logs(*task, job_id))
    assert emu.post(f"/htc/projects/{task[0]}/tasks/{task[1]}/jobs/cancel").status_code == 200
    emu.wait_terminal(*task, 1)
    job = emu.job(*task, job_id)
    assert term_file.read_text() == "got SIGTERM"
    assert job["statusReason"] == "Cancelled by user" and job["container"]["exitCode"] == 137


def test_a_job_over_its_max_memory_fails_as_out_of_memory(emu, task, drop_box):
    hog, _ = submit(emu, task, drop_box, "memory", maxMemory=200)  # MiB; it touches 400 MiB
    roomy, _ = submit(emu, task, drop_box, "exit", maxMemory=1024)
    emu.wait_terminal(*task, 2)
    job = emu.job(*task, hog)
    assert job["status"] == "FAILED" and job["failureCode"] == "ErrorNotEnoughMemory", job
    assert job["container"]["exitCode"] == 137
    assert "sleeping" not in emu.logs(*task, hog)
    assert emu.job(*task, roomy)["status"] == "SUCCEEDED"


@as_root
def test_a_job_cannot_read_or_signal_the_emulators_processes_and_still_does_its_work(emu, drop_box, tmp_path):
    """Issue 19: a job read RESCALE_API_KEY from the environment of a process the emulator's runner started."""
    kernel = subprocess.Popen(["sleep", "600"], env={"RESCALE_API_KEY": emu.emu.api_key})
    apiconfig = emu.emu.write_apiconfig(drop_box / "apiconfig")  # mode 0600, in a folder anyone may enter
    project_id = emu.new_project(repositories=["confined"])
    task = (project_id, emu.new_task(project_id))
    envs = {"DROP_BOX": drop_box, "EMULATOR_PID": os.getpid(), "KERNEL_PID": kernel.pid, "APICONFIG": apiconfig}
    definition = {
        "imageName": "confined:v1",
        "commands": ["python", "/confined.py"],
        "envs": [{"name": name, "value": str(value)} for name, value in envs.items()],
        "execTimeoutSeconds": 600,
    }
    try:
        parent = emu.submit(*task, definition, batch_size=2)
        emu.wait_terminal(*task, 2, timeout=120)
    finally:
        kernel.kill()
        kernel.wait()
    first, second = (report_of("\n".join(emu.logs(*task, f"{parent}:{i}"))) for i in (0, 1))
    for index in (0, 1):
        assert emu.job(*task, f"{parent}:{index}")["status"] == "SUCCEEDED"
    refused = ["PermissionError", "PermissionError"]  # reading /proc/PID/environ, then os.kill(PID, 0)
    assert second["emulator"] == second["kernel"] == second["supervisor"] == second["first job"] == refused, second
    assert second["apiconfig"] == second["other attempts"] == "PermissionError", second
    assert FIRST_JOB_UID <= first["uid"] != second["uid"] >= FIRST_JOB_UID
    for report in (first, second):
        assert report["scratch"] == [True, True] and report["own task"] == 200, report
