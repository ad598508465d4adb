"""Polling: job statistics, waits for a job or a group, cancellation, and deadlines kept through Retry-After.

Faults come from a real emulator (``running(faults=...)``): a 429 with ``Retry-After``
longer than what is left of a wait must end the wait with ``HtcTimeoutError`` and its
history, not block in urllib3's retries and raise ``HtcRateLimited`` much later.
"""

import inspect
import time

import pytest

import htc_helpers as htc
from htc_emulator import running
from tests.helpers.support import new_project, new_task

RETRY_AFTER = 10  # seconds the faulty server asks for; every wait below has less than that left
WAIT = 4


def job(status, code=None, reason=None):
    return {"status": status, "failureCode": code, "statusReason": reason}


def test_status_counts_all_nine_statuses_and_unknown_ones():
    counts = htc.status_counts(
        [job("RUNNING"), job("POD_FAILED"), job("POD_SUCCEEDED"), job("POD_FAILED"), job("SOME_FUTURE_STATUS")]
    )
    assert list(counts)[:9] == list(htc.JOB_STATUSES)
    assert counts["POD_FAILED"] == 2 and counts["POD_SUCCEEDED"] == 1 and counts["RUNNING"] == 1
    assert counts["SOME_FUTURE_STATUS"] == 1
    assert counts["SUCCEEDED"] == 0 and sum(counts.values()) == 5


def test_failure_summary_counts_first_occurrence_as_one():
    jobs = [
        job("FAILED", "ErrorTimeout", "Job timed out"),
        job("FAILED", "ErrorNonZeroContainerExitCode", "Essential container exited"),
        job("FAILED", "ErrorTimeout", "Job timed out"),
        job("POD_FAILED", "ErrorInstanceTermination", "Spot reclaimed"),
        job("SUCCEEDED", None, "Completed"),
    ]
    assert htc.failure_summary(jobs) == {
        "ErrorTimeout: Job timed out": 2,
        "ErrorInstanceTermination: Spot reclaimed": 1,
        "ErrorNonZeroContainerExitCode: Essential container exited": 1,
    }
    assert list(htc.failure_summary(jobs))[0] == "ErrorTimeout: Job timed out"
    assert htc.failure_summary([]) == {}


def test_cancel_group_refuses_to_cancel_the_whole_task():
    with pytest.raises(ValueError, match="group"):
        htc.cancel_group(htc.HtcSession("http://127.0.0.1:9/api/v1", "k"), "p", "t", "")


@pytest.mark.parametrize("wait", [htc.wait_for_job, htc.monitor_group, htc.monitor_for_cancellation])
def test_waits_give_up_after_a_day_by_default(wait):
    assert inspect.signature(wait).parameters["timeout"].default == htc.WAIT_TIMEOUT_SECONDS == 86400


def test_monitor_group_timeout_keeps_the_history(session):
    project_id = new_project(session)
    task_id = new_task(session, project_id)
    with pytest.raises(htc.HtcTimeoutError) as err:
        htc.monitor_group(session, project_id, task_id, "no-such-group", interval=0.1, timeout=0.35, progress=False)
    history = err.value.history
    assert isinstance(err.value, TimeoutError)
    assert history["time"].nunique() >= 3 and set(history["status"]) == set(htc.JOB_STATUSES)
    assert (history["count"] == 0).all()


def test_monitor_for_cancellation_judges_the_ratio_only_after_ten_finished(monkeypatch):
    """A scripted sequence of group counts (the decision, not the server, is under test here)."""
    polls = iter(
        [
            {"FAILED": 1, "RUNNING": 19},  # 100 % failed, but only one finished
            {"FAILED": 2, "SUCCEEDED": 7, "RUNNING": 11},  # 22 % of nine
            {"FAILED": 2, "SUCCEEDED": 8, "RUNNING": 10},  # 20 % of ten: cancel
            {"FAILED": 12, "SUCCEEDED": 8},
        ]
    )  # settled after the cancel
    seen, cancelled_after = [], []

    def counts(*args, deadline):
        seen.append(next(polls))
        return {**dict.fromkeys(htc.JOB_STATUSES, 0), **seen[-1]}

    monkeypatch.setattr(htc, "group_status_counts", counts)
    monkeypatch.setattr(htc, "cancel_group", lambda *args: cancelled_after.append(len(seen)))
    nowhere = htc.HtcSession("http://127.0.0.1:9/api/v1", "k")  # never used: both calls are replaced
    cancelled, history = htc.monitor_for_cancellation(
        nowhere, "p", "t", "g", expected_jobs=20, interval=0, progress=False
    )
    assert cancelled and cancelled_after == [3]
    assert len(seen) == 4 and len(history) == 4 * len(htc.JOB_STATUSES)


def test_monitor_for_cancellation_shows_one_bar_that_ends_where_the_group_does(monkeypatch, capsys):
    """Watching, cancelling and settling on one progress bar: none is left frozen at the moment of the cancel."""
    polls = iter([{"FAILED": 4, "SUCCEEDED": 6, "RUNNING": 10}, {"FAILED": 14, "SUCCEEDED": 6}])
    monkeypatch.setattr(
        htc, "group_status_counts", lambda *args, deadline: {**dict.fromkeys(htc.JOB_STATUSES, 0), **next(polls)}
    )
    monkeypatch.setattr(htc, "cancel_group", lambda *args: None)
    nowhere = htc.HtcSession("http://127.0.0.1:9/api/v1", "k")  # never used: both calls are replaced
    cancelled, _ = htc.monitor_for_cancellation(nowhere, "p", "t", "g", expected_jobs=20, interval=0)
    bars = [line.split("\r")[-1] for line in capsys.readouterr().out.split("\n") if line.strip()]
    assert cancelled and len(bars) == 1
    assert bars[0].startswith("g (cancelled): 100%") and "20/20" in bars[0]


@pytest.mark.slow
def test_wait_for_job_shows_the_jobs_status_on_one_line_that_ends_with_it(session, capsys):
    project_id = new_project(session, repository="opencv-htc-tutorial")
    task_id = new_task(session, project_id)
    # A job that fails at once is all this wait needs.
    parent = session.post(
        f"/htc/projects/{project_id}/tasks/{task_id}/jobs/batch",
        json=[{"htcJobDefinition": {"imageName": "opencv-htc-tutorial:v1", "commands": ["false"]}}],
    ).json()[0]["parentJobId"]
    event = htc.wait_for_job(session, project_id, task_id, f"{parent}:0", interval=0.1, timeout=120)
    bars = [line.split("\r")[-1] for line in capsys.readouterr().out.split("\n") if line.strip()]
    assert len(bars) == 1 and bars[0].startswith(f"job {parent}:0: 100%")
    assert event["status"] == "FAILED" and bars[0].endswith("FAILED]")


# --- deadlines


@pytest.fixture(scope="module")
def slow_to_forgive():
    with running(faults={"retry_after": RETRY_AFTER}) as emu:
        yield emu


@pytest.fixture
def faults(slow_to_forgive):
    slow_to_forgive.faults.clear()
    slow_to_forgive.faults.injected.clear()
    yield slow_to_forgive.faults
    slow_to_forgive.faults.clear()


@pytest.fixture
def task(slow_to_forgive):
    """A session with the API's default retries (six, honouring Retry-After), a project and a task."""
    session = htc.HtcSession(slow_to_forgive.api_url, slow_to_forgive.api_key)
    project = session.post(
        "/htc/projects", json={"projectName": "deadlines", "projectDescription": "pytest", "regions": ["AWS_EU_WEST_1"]}
    ).json()
    task = session.post(
        f"/htc/projects/{project['projectId']}/tasks", json={"taskName": "t", "taskDescription": "pytest"}
    ).json()
    return session, project["projectId"], task["taskId"]


def rate_limit_after_first_poll(faults, path):
    """The first poll is answered, every later one is a 429 asking for RETRY_AFTER seconds."""
    faults.script(["ok"], path=path)
    faults.set_rate(1.0, kinds=["429"], path=path)


def test_monitor_group_keeps_its_deadline_through_retry_after(task, faults):
    session, project_id, task_id = task
    rate_limit_after_first_poll(faults, r"group-summary-statistics$")
    with pytest.raises(htc.HtcTimeoutError) as err:
        htc.monitor_group(session, project_id, task_id, "never-finishes", interval=0.2, timeout=WAIT, progress=False)
    # One 429: its Retry-After ends past the deadline, so no retry is waited for.
    assert faults.injected[("api", "429")] == 1
    history = err.value.history
    assert history["time"].nunique() == 1 and set(history["status"]) == set(htc.JOB_STATUSES)
    assert "'never-finishes' not finished after 4 s" in str(err.value)


def test_monitor_for_cancellation_keeps_its_deadline_through_retry_after(task, faults):
    session, project_id, task_id = task
    rate_limit_after_first_poll(faults, r"group-summary-statistics$")
    with pytest.raises(htc.HtcTimeoutError) as err:
        htc.monitor_for_cancellation(
            session, project_id, task_id, "never-finishes", interval=0.2, timeout=WAIT, progress=False
        )
    assert faults.injected[("api", "429")] == 1
    assert err.value.history["time"].nunique() == 1


def test_wait_for_job_keeps_its_deadline_through_retry_after(task, faults):
    session, project_id, task_id = task
    faults.set_rate(1.0, kinds=["429"], path=r"/events$")
    with pytest.raises(htc.HtcTimeoutError, match="still not finished after 4 s"):
        htc.wait_for_job(session, project_id, task_id, "some-job:0", interval=0.2, timeout=WAIT)
    assert faults.injected[("api", "429")] == 1


@pytest.mark.slow
def test_requests_outside_a_wait_still_retry_as_before(task, faults):
    session, project_id, _ = task
    faults.script(["429"], path=r"/tasks$")
    assert htc.paginate(session, f"/htc/projects/{project_id}/tasks")  # waited RETRY_AFTER, then answered
    assert faults.injected[("api", "429")] == 1


@pytest.mark.slow
def test_a_deadline_is_an_argument_of_the_call_and_ends_with_it(task, faults):
    """``deadline=`` bounds that call's retries and pauses; the next call without one retries as before."""
    session, project_id, task_id = task
    url = f"/htc/projects/{project_id}/tasks"
    faults.set_rate(1.0, kinds=["429"], path=r"/tasks$")
    with pytest.raises(htc.HtcTimeoutError, match=f"deadline reached .* GET {session.api_url}{url}"):
        session.get(url, deadline=time.monotonic() + WAIT)
    assert faults.injected[("api", "429")] == 1  # its Retry-After ends past the deadline: not waited for
    faults.clear()
    faults.injected.clear()
    faults.script(["429"], path=r"/tasks$")
    assert [t["taskId"] for t in session.get(url).json()["items"]] == [task_id]  # waited RETRY_AFTER, then answered
    assert faults.injected[("api", "429")] == 1
