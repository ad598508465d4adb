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
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from htc_emulator import running
from htc_emulator.launcher import ProcessLauncher

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


def test_the_worker_finds_its_cascade_parsed_by_the_template(launcher, tmp_path):
    """The cascade does not depend on the job: parsed once before the fork, not once a job."""
    launcher, env = launcher
    worker_folder = Path(__file__).resolve().parents[2] / "face_tagger"
    probe = tmp_path / "probe.py"  # imports nothing: what it finds loaded, the template loaded
    probe.write_text(
        "import sys\nloaded = sys.modules.get('haar_cascades')\n"
        "print(len(loaded._PARSED), loaded.__file__) if loaded else print(0, '-')\n"
    )
    argv = [sys.executable, str(probe)]

    def parsed_before_the_job_started():
        returncode, output = launched(launcher, argv, env, tmp_path)
        assert returncode == 0, output
        count, where = output.split()
        return count == "1" and Path(where).parent == worker_folder

    wait_for(parsed_before_the_job_started)  # once the template got to it


def test_a_job_process_does_not_outlive_its_supervisor(launcher, tmp_path):
    launcher, env = launcher
    process = launcher.start(
        [sys.executable, "-c", "import os, time; print(os.getpid(), os.getppid(), flush=True); time.sleep(600)"],
        env,
        tmp_path,
    )
    with process.stdout:
        job, supervisor = map(int, process.stdout.readline().split())
        os.kill(supervisor, signal.SIGKILL)
        assert process.wait(timeout=60) == -signal.SIGKILL
    wait_for(lambda: not pid_alive(job))


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


@pytest.fixture(scope="module")
def job_image(tmp_path_factory) -> dict:
    context = tmp_path_factory.mktemp("launcher-image")
    (context / "job.py").write_text(JOB)
    (context / "Dockerfile").write_text('FROM python:3.12-slim\nCOPY job.py /job.py\nCMD ["python", "/job.py"]\n')
    return {"launch:v1": (context / "Dockerfile", context)}


@pytest.fixture(scope="module")
def emu(job_image, client_for):
    with running(images=job_image, time_scale=0.1, concurrency=2, profile="ideal") as emulator:
        yield client_for(emulator)


@pytest.fixture
def task(emu):
    project_id = emu.new_project(repositories=["launch"])
    return project_id, emu.new_task(project_id)


def submit(emu, task, tmp_path, mode: str, timeout: int = 600, **definition) -> tuple[str, Path]:
    term_file = tmp_path / f"term-{mode}"
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


def test_nothing_a_job_started_outlives_its_end(emu, task, tmp_path):
    job_id, _ = submit(emu, task, tmp_path, "exit")
    emu.wait_terminal(*task, 1)
    job = emu.job(*task, job_id)
    assert job["status"] == "SUCCEEDED", job
    assert not [pid for pid in escapees(emu, task, job_id) if pid_alive(pid)]


def test_nothing_a_job_started_outlives_its_task(emu, task, tmp_path):
    job_id, _ = submit(emu, task, tmp_path, "ignore")
    pids = escapees(emu, task, job_id)
    emu.ok("DELETE", f"/htc/projects/{task[0]}/tasks/{task[1]}")
    wait_for(lambda: emu.job(*task, job_id)["status"] == "FAILED")
    wait_for(lambda: not [pid for pid in pids if pid_alive(pid)])


def test_nothing_a_job_started_outlives_the_emulator(job_image, client_for, tmp_path):
    with running(images=job_image, time_scale=0.1, concurrency=1, profile="ideal") as emulator:
        client = client_for(emulator)
        project_id = client.new_project(repositories=["launch"])
        task = (project_id, client.new_task(project_id))
        job_id, _ = submit(client, task, tmp_path, "ignore")
        pids = escapees(client, task, job_id)
        assert all(pid_alive(pid) for pid in pids)
    assert not [pid for pid in pids if pid_alive(pid)]


@pytest.mark.slow
def test_a_timeout_sends_sigterm_then_sigkill_after_the_grace_period(emu, task, tmp_path):
    ignores, ignored_term = submit(emu, task, tmp_path, "ignore", timeout=60)
    obeys, obeyed_term = submit(emu, task, tmp_path, "obey", timeout=60)
    emu.wait_terminal(*task, 2)
    stubborn, polite = emu.job(*task, ignores), emu.job(*task, obeys)
    assert ignored_term.read_text() == obeyed_term.read_text() == "got SIGTERM"
    assert stubborn["failureCode"] == polite["failureCode"] == "ErrorTimeout"
    assert stubborn["container"]["exitCode"] == 137  # SIGKILL once the grace period was over
    assert polite["container"]["exitCode"] == 3  # its own exit, from its SIGTERM handler


def test_a_cancel_sends_sigterm_then_sigkill_after_the_grace_period(emu, task, tmp_path):
    job_id, term_file = submit(emu, task, tmp_path, "ignore")
    wait_for(lambda: "sleeping" in emu.logs(*task, job_id))
    assert emu.post(f"/htc/projects/{task[0]}/tasks/{task[1]}/jobs/cancel").status_code == 200
    emu.wait_terminal(*task, 1)
    job = emu.job(*task, job_id)
    assert term_file.read_text() == "got SIGTERM"
    assert job["statusReason"] == "Cancelled by user" and job["container"]["exitCode"] == 137


def test_a_job_over_its_max_memory_fails_as_out_of_memory(emu, task, tmp_path):
    hog, _ = submit(emu, task, tmp_path, "memory", maxMemory=200)  # MiB; it touches 400 MiB
    roomy, _ = submit(emu, task, tmp_path, "exit", maxMemory=1024)
    emu.wait_terminal(*task, 2)
    job = emu.job(*task, hog)
    assert job["status"] == "FAILED" and job["failureCode"] == "ErrorNotEnoughMemory", job
    assert job["container"]["exitCode"] == 137
    assert "sleeping" not in emu.logs(*task, hog)
    assert emu.job(*task, roomy)["status"] == "SUCCEEDED"
