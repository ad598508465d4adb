"""Jobs run for real: lifecycle, environment, exit codes, timeouts, cancel, retries, logs.

One emulator for the module with ``time_scale=0.01`` (the spec's minimum
timeout of 60 s becomes 0.6 s) and two job slots, and a small image whose
script does what the ``MODE`` variable says. These tests are about how jobs
run, so the emulator is the idealised one (statuses at once, no start
latency, cancel at once); the platform's profile has its own tests
(``test_platform_profile.py``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import time
import tracemalloc
from pathlib import Path

import jwt
import pytest
import requests

from htc_emulator import running
from htc_emulator.job_logs import MAX_EVENT_BYTES, MAX_LOG_BYTES

JOB_SCRIPT = r"""
import json, os, sys, time
mode = os.environ.get("MODE", "ok")
print(f"attempt {os.environ['AWS_BATCH_JOB_ATTEMPT']} pid {os.getpid()}", flush=True)
if mode == "env":
    names = ["AWS_BATCH_JOB_ARRAY_INDEX", "AWS_BATCH_JOB_ID", "AWS_BATCH_JOB_ATTEMPT", "RESCALE_HTC_PROJECT_ID",
             "RESCALE_HTC_TASK_ID", "RESCALE_HTC_REGION", "RESCALE_HTC_API_URL", "AWS_ENDPOINT_URL_S3",
             "GREETING", "USER_SETTING", "HOME", "OUTER_SENTINEL"]
    token = os.environ.get("RESCALE_HTC_BEARER_TOKEN", "")
    cmdline = open("/proc/self/cmdline", "rb").read().decode()
    print(json.dumps({**{n: os.environ.get(n) for n in names}, "cwd": os.getcwd(), "python": sys.executable,
                      "argv": sys.argv, "token_in_argv": bool(token) and token in cmdline,
                      "token_claims": token.split(".")[1] if token else None}), flush=True)
elif mode == "exit":
    sys.exit(int(os.environ["EXIT_CODE"]))
elif mode == "sleep":
    time.sleep(float(os.environ.get("SECONDS", "600")))
elif mode == "flaky":
    if int(os.environ["AWS_BATCH_JOB_ATTEMPT"]) < int(os.environ["SUCCEED_ON"]):
        print("failing on purpose", file=sys.stderr)
        sys.exit(1)
elif mode == "lines":
    for i in range(int(os.environ["LINES"])):
        print(f"line {i}")
elif mode == "long_lines":
    block, length = os.environ["CHAR"] * 65536, int(os.environ["LENGTH"])
    for _ in range(int(os.environ["LINES"])):
        for _ in range(length // 65536):
            sys.stdout.write(block)
        sys.stdout.write(block[: length % 65536] + "\n")
elif mode == "api":
    import requests
    base = os.environ["RESCALE_HTC_API_URL"] + "/htc/projects/"
    project, task = os.environ["RESCALE_HTC_PROJECT_ID"], os.environ["RESCALE_HTC_TASK_ID"]
    other_project, other_task = os.environ["OTHER_PROJECT"], os.environ["OTHER_TASK"]
    headers = {"Authorization": "Bearer " + os.environ["RESCALE_HTC_BEARER_TOKEN"]}
    paths = {
        "own_project_token": f"{project}/storage/token",
        "own_task_token": f"{project}/tasks/{task}/storage/token",
        "own_jobs": f"{project}/tasks/{task}/jobs",
        "other_task_token": f"{project}/tasks/{other_task}/storage/token",
        "other_project": f"{other_project}",
        "other_project_token": f"{other_project}/storage/token",
        "project_list": "",
    }
    codes = {name: requests.get(base + path, headers=headers, timeout=30).status_code for name, path in paths.items()}
    codes["regions"] = requests.get(os.environ["RESCALE_HTC_API_URL"] + "/htc/regions", headers=headers).status_code
    codes["submit"] = requests.post(base + f"{project}/tasks/{task}/jobs/batch", headers=headers, timeout=30,
                                    json=[{"htcJobDefinition": {"imageName": "jobs:v1"}}]).status_code
    print(json.dumps(codes), flush=True)
"""


@pytest.fixture(scope="module")
def job_image(tmp_path_factory) -> dict:
    context = tmp_path_factory.mktemp("jobs-image")
    (context / "job.py").write_text(JOB_SCRIPT)
    (context / "Dockerfile").write_text(
        "FROM python:3.12-slim\nENV GREETING=hello-from-dockerfile\nCOPY job.py /opt/app/job.py\n"
        'CMD ["python", "/opt/app/job.py"]\n'
    )
    return {"jobs:v1": (context / "Dockerfile", context)}


@pytest.fixture(scope="module")
def fast(job_image, client_for):
    """An emulator with short timeouts, two job slots, and a client for it."""
    with running(images=job_image, time_scale=0.01, concurrency=2, profile="ideal") as emu:
        yield client_for(emu)


@pytest.fixture
def task(fast):
    project_id = fast.new_project(repositories=["jobs"])
    return project_id, fast.new_task(project_id)


def definition(mode: str, *, timeout: int = 60_000, **envs) -> dict:
    """A job of the image doing ``mode``; 60,000 s last 10 minutes here, so that no job a test expects to end
    on its own is cut short by a busy machine (the timeout tests give their sleeping jobs 60 s: 0.6 s)."""
    pairs = [{"name": "MODE", "value": mode}] + [{"name": k, "value": str(v)} for k, v in envs.items()]
    return {
        "imageName": "jobs:v1",
        "commands": ["python", "/opt/app/job.py"],
        "envs": pairs,
        "execTimeoutSeconds": timeout,
    }


def events(client, project_id, task_id, job_id) -> list[dict]:
    return client.ok(
        "GET", f"/htc/projects/{project_id}/tasks/{task_id}/jobs/{job_id}/events", params={"pageSize": 1000}
    )["items"]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_for(predicate, timeout: float = 30, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(interval)
    return result


def test_statuses_move_through_the_lifecycle_with_timed_events(fast, task):
    project_id, task_id = task
    parent = fast.submit(project_id, task_id, definition("ok"))
    fast.wait_terminal(project_id, task_id, 1)
    history = events(fast, project_id, task_id, f"{parent}:0")
    assert [e["status"] for e in history] == [
        "SUBMITTED_TO_RESCALE",
        "SUBMITTED_TO_PROVIDER",
        "RUNNABLE",
        "STARTING",
        "RUNNING",
        "SUCCEEDED",
    ]
    times = [e["dateTime"] for e in history]
    assert times == sorted(times)
    assert all(e["jobId"] == f"{parent}:0" and e["userCancelledEvent"] is False for e in history)
    job = fast.job(project_id, task_id, f"{parent}:0")
    assert job["status"] == "SUCCEEDED" and job["statusReason"] == "Completed"
    assert job["container"]["exitCode"] == 0 and job["failureCode"] is None
    assert job["createdAt"] <= job["startedAt"] <= job["completedAt"] == job["updatedAt"]


def test_job_environment_and_command_mapping(fast, task, monkeypatch):
    monkeypatch.setenv("OUTER_SENTINEL", "must-not-leak")
    project_id, task_id = task
    parent = fast.submit(project_id, task_id, definition("env", USER_SETTING="from-envs"), batch_size=2)
    fast.wait_terminal(project_id, task_id, 2)
    seen = {}
    for index in range(2):
        job_id = f"{parent}:{index}"
        report = json.loads(fast.logs(project_id, task_id, job_id)[1])
        assert report["AWS_BATCH_JOB_ARRAY_INDEX"] == str(index)
        assert report["AWS_BATCH_JOB_ID"] == job_id and report["AWS_BATCH_JOB_ATTEMPT"] == "1"
        assert report["RESCALE_HTC_PROJECT_ID"] == project_id and report["RESCALE_HTC_TASK_ID"] == task_id
        assert report["RESCALE_HTC_REGION"] == "AWS_EU_WEST_1"
        assert report["RESCALE_HTC_API_URL"] == fast.emu.api_url
        assert report["AWS_ENDPOINT_URL_S3"] == fast.emu.s3_endpoint
        assert report["GREETING"] == "hello-from-dockerfile" and report["USER_SETTING"] == "from-envs"
        assert report["OUTER_SENTINEL"] is None
        assert report["python"] == sys.executable
        assert report["argv"][0].endswith("/job.py") and not report["argv"][0].startswith("/opt/")
        assert report["token_in_argv"] is False
        claims = json.loads(jwt.utils.base64url_decode(report["token_claims"]))
        assert (claims["tokenType"], claims["projectId"], claims["taskId"], claims["jobId"]) == (
            "JOB",
            project_id,
            task_id,
            job_id,
        )
        assert report["HOME"] == report["cwd"] and not Path(report["cwd"]).exists()
        seen[index] = report["cwd"]
    assert seen[0] != seen[1]


def test_a_job_that_waited_in_the_queue_gets_a_token_signed_at_its_start(fast, task):
    """Tokens are signed while their jobs wait (:mod:`htc_emulator.presigned_tokens`); one signed long before
    its job started would expire that much early, so a job's token is issued at its start, give or take a second."""
    project_id, task_id = task
    fast.submit(project_id, task_id, definition("sleep", SECONDS=5), batch_size=2)  # both job slots, 5 s
    parent = fast.submit(project_id, task_id, definition("env"))
    fast.wait_terminal(project_id, task_id, 3)
    job_id = f"{parent}:0"
    claims = json.loads(
        jwt.utils.base64url_decode(json.loads(fast.logs(project_id, task_id, job_id)[1])["token_claims"])
    )
    job = fast.job(project_id, task_id, job_id)
    created, started = (dt.datetime.fromisoformat(job[name]).timestamp() for name in ("createdAt", "startedAt"))
    assert started - created >= 4  # it waited for a job slot
    assert started - 3 <= claims["iat"] <= started


def test_non_zero_exit_fails_with_its_exit_code(fast, task):
    project_id, task_id = task
    parent = fast.submit(project_id, task_id, definition("exit", EXIT_CODE=7))
    fast.wait_terminal(project_id, task_id, 1)
    job = fast.job(project_id, task_id, f"{parent}:0")
    assert job["status"] == "FAILED" and job["failureCode"] == "ErrorNonZeroContainerExitCode"
    assert job["container"]["exitCode"] == 7


def test_timeout_kills_the_process(fast, task):
    project_id, task_id = task
    parent = fast.submit(project_id, task_id, definition("sleep", timeout=60))
    fast.wait_terminal(project_id, task_id, 1)  # 60 s x 0.01; the job itself would sleep 600 s
    job = fast.job(project_id, task_id, f"{parent}:0")
    assert job["status"] == "FAILED" and job["failureCode"] == "ErrorTimeout"
    assert job["container"]["exitCode"] == 143  # stopped as docker stop does: SIGTERM first, and it obeyed
    pid = int(fast.logs(project_id, task_id, f"{parent}:0")[0].split()[-1])
    assert not pid_alive(pid)


def test_cancel_kills_running_and_fails_pending_jobs_of_one_group(fast, task):
    project_id, task_id = task
    sleepers = fast.submit(project_id, task_id, definition("sleep"), batch_size=4, group="doomed")
    path = f"/htc/projects/{project_id}/tasks/{task_id}/jobs"

    def two_running():
        items = fast.ok("GET", path, params={"status": "RUNNING"})["items"]
        return items if len(items) == 2 else None

    running_jobs = wait_for(two_running)
    wait_for(lambda: all(fast.logs(project_id, task_id, j["jobUUID"]) for j in running_jobs))
    pids = [int(fast.logs(project_id, task_id, j["jobUUID"])[0].split()[-1]) for j in running_jobs]
    survivor = fast.submit(project_id, task_id, definition("ok"), group="other")
    response = fast.post(f"/htc/projects/{project_id}/tasks/{task_id}/jobs/cancel", params={"group": "doomed"})
    assert response.status_code == 200
    fast.wait_terminal(project_id, task_id, 5)
    for index in range(4):
        job = fast.job(project_id, task_id, f"{sleepers}:{index}")
        assert job["status"] == "FAILED", job
        last = events(fast, project_id, task_id, f"{sleepers}:{index}")[-1]
        assert last["status"] == "FAILED" and last["userCancelledEvent"] is True
    assert not any(pid_alive(pid) for pid in pids)
    never_started = [i for i in range(4) if f"{sleepers}:{i}" not in {j["jobUUID"] for j in running_jobs}]
    for index in never_started:
        statuses = [e["status"] for e in events(fast, project_id, task_id, f"{sleepers}:{index}")]
        assert "RUNNING" not in statuses
    assert fast.job(project_id, task_id, f"{survivor}:0")["status"] == "SUCCEEDED"


def test_a_job_cancelled_while_starting_never_shows_running(fast, task, monkeypatch):
    project_id, task_id = task
    scheduler = fast.emu.scheduler
    prepare = scheduler._job_environment
    cancel_url = f"{fast.emu.api_url}/htc/projects/{project_id}/tasks/{task_id}/jobs/cancel"
    token, seen = fast.token, []

    def cancel_then_prepare(job, *args):
        # Runs on the scheduler's thread after claim_for_start and before the process exists.
        status = job.status
        cancelled = requests.post(cancel_url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        seen.append((status, cancelled.status_code))
        return prepare(job, *args)

    monkeypatch.setattr(scheduler, "_job_environment", cancel_then_prepare)
    parent = fast.submit(project_id, task_id, definition("sleep"))
    fast.wait_terminal(project_id, task_id, 1)
    assert seen == [("STARTING", 200)]
    history = events(fast, project_id, task_id, f"{parent}:0")
    assert [e["status"] for e in history][-2:] == ["STARTING", "FAILED"], history
    assert history[-1]["userCancelledEvent"] is True
    assert fast.job(project_id, task_id, f"{parent}:0")["statusReason"] == "Cancelled by user"


def test_retries_rerun_failed_jobs_with_a_higher_attempt(fast, task):
    project_id, task_id = task
    recovers = fast.submit(project_id, task_id, definition("flaky", SUCCEED_ON=3), retryStrategy={"maxRetries": 2})
    gives_up = fast.submit(project_id, task_id, definition("flaky", SUCCEED_ON=9), retryStrategy={"maxRetries": 1})
    fast.wait_terminal(project_id, task_id, 2)
    assert fast.job(project_id, task_id, f"{recovers}:0")["status"] == "SUCCEEDED"
    attempts = [line for line in fast.logs(project_id, task_id, f"{recovers}:0") if line.startswith("attempt")]
    assert [line.split()[1] for line in attempts] == ["1", "2", "3"]
    statuses = [e["status"] for e in events(fast, project_id, task_id, f"{recovers}:0")]
    assert statuses.count("RUNNING") == 3 and statuses.count("FAILED") == 0
    failed = fast.job(project_id, task_id, f"{gives_up}:0")
    assert failed["status"] == "FAILED" and failed["failureCode"] == "ErrorNonZeroContainerExitCode"
    assert [e["status"] for e in events(fast, project_id, task_id, f"{gives_up}:0")].count("RUNNING") == 2


def test_unknown_image_missing_repository_or_executable_fail_to_start(fast, task):
    project_id, task_id = task
    unknown = fast.submit(project_id, task_id, {**definition("ok"), "imageName": "nothere:v1"})
    no_binary = fast.submit(project_id, task_id, {**definition("ok"), "commands": ["no-such-binary-xyz"]})
    other_project = fast.new_project()  # the image's repository was never created there
    other_task = fast.new_task(other_project)
    no_repo = fast.submit(other_project, other_task, definition("ok"))
    fast.wait_terminal(project_id, task_id, 2)
    fast.wait_terminal(other_project, other_task, 1)
    for project, task_, parent in (
        (project_id, task_id, unknown),
        (project_id, task_id, no_binary),
        (other_project, other_task, no_repo),
    ):
        job = fast.job(project, task_, f"{parent}:0")
        assert job["status"] == "FAILED" and job["failureCode"] == "ErrorStartingContainer", job


def test_at_most_concurrency_jobs_run_at_once(fast, task):
    project_id, task_id = task
    parent = fast.submit(project_id, task_id, definition("sleep", SECONDS=0.3), batch_size=5)
    fast.wait_terminal(project_id, task_id, 5)
    edges = []
    for index in range(5):
        for event in events(fast, project_id, task_id, f"{parent}:{index}"):
            if event["status"] == "RUNNING":
                edges.append((event["dateTime"], 1))
            elif event["status"] in ("SUCCEEDED", "FAILED"):
                edges.append((event["dateTime"], -1))
    level = peak = 0
    for _, step in sorted(edges, key=lambda edge: (edge[0], edge[1])):
        level += step
        peak = max(peak, level)
    assert peak == 2


def test_logs_page_sort_and_limit(fast, task):
    project_id, task_id = task
    parent = fast.submit(project_id, task_id, definition("lines", LINES=250))
    fast.wait_terminal(project_id, task_id, 1)
    path = f"/htc/projects/{project_id}/tasks/{task_id}/jobs/{parent}:0/logs"
    newest_first = fast.ok("GET", path)
    assert len(newest_first["items"]) == 100 and newest_first["items"][0]["message"] == "line 249"
    messages, url = [], path + "?sort=asc&pageSize=100"
    while url:
        body = fast.ok("GET", url)
        messages += [item["message"] for item in body["items"]]
        url = body.get("next")
    assert messages[1:] == [f"line {i}" for i in range(250)]
    stamps = [item["timestamp"] for item in fast.ok("GET", path, params={"sort": "asc", "pageSize": 10000})["items"]]
    assert stamps == sorted(stamps)
    too_big = fast.get(path, params={"pageSize": 10001})
    assert too_big.status_code == 400 and "pageSize" in too_big.json()["errorDescription"]


def long_lines(char: str, length: int, lines: int) -> dict:
    """A job that prints ``lines`` lines of ``length`` times ``char``."""
    return definition("long_lines", CHAR=char, LENGTH=length, LINES=lines)


def test_a_line_longer_than_an_event_is_split_as_the_awslogs_driver_splits_it(fast, task):
    """CloudWatch takes events of at most 256 KiB less 26 bytes; Docker's awslogs driver cuts a longer line into
    events of that size at character boundaries, and so does the emulator."""
    project_id, task_id = task
    accents = fast.submit(project_id, task_id, long_lines("\u00e9", 600_000, 1))
    ascii_ = fast.submit(project_id, task_id, long_lines("x", MAX_EVENT_BYTES + 1, 1))
    fast.wait_terminal(project_id, task_id, 2)
    events = fast.logs(project_id, task_id, f"{accents}:0")[1:]
    assert [len(e.encode()) for e in events] == [MAX_EVENT_BYTES] * 4 + [2 * 600_000 - 4 * MAX_EVENT_BYTES]
    assert "".join(events) == "\u00e9" * 600_000
    assert fast.logs(project_id, task_id, f"{ascii_}:0")[1:] == ["x" * MAX_EVENT_BYTES, "x"]


def test_a_jobs_log_keeps_to_its_budget_and_says_where_it_stopped(fast, task):
    project_id, task_id = task
    parent = fast.submit(project_id, task_id, long_lines("y", 100_000, 100))
    fast.wait_terminal(project_id, task_id, 1)
    assert fast.ok("GET", f"/htc/projects/{project_id}/tasks/{task_id}/jobs/{parent}:0")["status"] == "SUCCEEDED"
    events = fast.logs(project_id, task_id, f"{parent}:0")
    assert sum(len(e.encode()) + 26 for e in events) <= MAX_LOG_BYTES
    assert events[1:-1] == ["y" * 100_000] * (len(events) - 2) and len(events) > 10
    assert events[-1].startswith("[htc-emulator] this job's log reached the emulator's limit of 4 MiB")


def test_a_flood_on_one_line_is_read_in_bounded_memory_and_paged_in_bounded_answers(fast, task):
    """Issue 19: a job printing 150 MB on one line grew the emulator by 151 MB, and ``logs?pageSize=1``
    answered with all of it. The emulator runs in this process, so tracemalloc sees what it allocates."""
    project_id, task_id = task
    tracemalloc.start()
    try:
        parent = fast.submit(project_id, task_id, long_lines("z", 64 << 20, 1))
        fast.wait_terminal(project_id, task_id, 1, timeout=600)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert fast.ok("GET", f"/htc/projects/{project_id}/tasks/{task_id}/jobs/{parent}:0")["status"] == "SUCCEEDED"
    assert peak < 24 << 20, f"{peak >> 20} MiB at peak while a 64 MiB line went through"
    page = fast.get(f"/htc/projects/{project_id}/tasks/{task_id}/jobs/{parent}:0/logs", params={"pageSize": 1})
    assert page.status_code == 200 and len(page.content) < 2 * MAX_EVENT_BYTES


def test_job_token_reaches_only_its_own_project_and_task(fast, task):
    project_id, task_id = task
    other_task = fast.new_task(project_id)
    other_project = fast.new_project()
    # 60 s: nine requests do not fit in the module's usual 0.6 s on a loaded machine.
    parent = fast.submit(project_id, task_id, definition("api", OTHER_PROJECT=other_project, OTHER_TASK=other_task))
    fast.wait_terminal(project_id, task_id, 1)
    assert fast.job(project_id, task_id, f"{parent}:0")["status"] == "SUCCEEDED"
    codes = json.loads(fast.logs(project_id, task_id, f"{parent}:0")[-1])
    assert codes == {
        "own_project_token": 200,
        "own_task_token": 200,
        "own_jobs": 200,
        "other_task_token": 403,
        "other_project": 403,
        "other_project_token": 403,
        "project_list": 403,
        "regions": 403,
        "submit": 403,
    }
    assert (
        fast.ok("GET", f"/htc/projects/{project_id}/tasks/{task_id}/summary-statistics")["jobStatuses"]["SUCCEEDED"]
        == 1
    )


def test_deleting_a_task_kills_its_jobs(fast, task):
    project_id, task_id = task
    parent = fast.submit(project_id, task_id, definition("sleep"))
    wait_for(lambda: fast.logs(project_id, task_id, f"{parent}:0"))
    pid = int(fast.logs(project_id, task_id, f"{parent}:0")[0].split()[-1])
    fast.ok("DELETE", f"/htc/projects/{project_id}/tasks/{task_id}")
    wait_for(lambda: fast.job(project_id, task_id, f"{parent}:0")["status"] == "FAILED")
    assert not pid_alive(pid)
    refused = fast.post(
        f"/htc/projects/{project_id}/tasks/{task_id}/jobs/batch", json=[{"htcJobDefinition": {"imageName": "jobs:v1"}}]
    )
    assert refused.status_code == 404


@pytest.mark.slow
def test_status_refresh_delay_holds_statuses_until_the_next_tick(job_image, client_for):
    with running(images=job_image, refresh_delay=5.0, concurrency=1, profile="ideal") as emu:
        client = client_for(emu)
        project_id = client.new_project(repositories=["jobs"])
        task_id = client.new_task(project_id)
        parent = client.submit(project_id, task_id, definition("ok"))
        wait_for(lambda: emu.backend.jobs[f"{parent}:0"].status == "SUCCEEDED")
        # Finished, but the first refresh tick (5 s after start) has not come yet.
        job = client.job(project_id, task_id, f"{parent}:0")
        stats = client.ok("GET", f"/htc/projects/{project_id}/tasks/{task_id}/summary-statistics")
        history = [e["status"] for e in events(client, project_id, task_id, f"{parent}:0")]
        assert emu.backend.visible_time() == emu.backend.started_at, "too slow: the first tick has passed"
        assert job["status"] == "SUBMITTED_TO_RESCALE" and history == ["SUBMITTED_TO_RESCALE"]
        assert stats["jobStatuses"]["SUBMITTED_TO_RESCALE"] == 1
        wait_for(
            lambda: client.job(project_id, task_id, f"{parent}:0")["status"] == "SUCCEEDED", timeout=8, interval=0.2
        )
