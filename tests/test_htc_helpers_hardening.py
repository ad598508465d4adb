"""htc_helpers against a misbehaving server: waits keep their deadline, paging ends, errors name the key.

Faults come from a real emulator (``running(faults=...)``): a 429 with ``Retry-After``
longer than what is left of a wait must end the wait with ``HtcTimeoutError`` and its
history, not block in urllib3's retries and raise ``HtcRateLimited`` much later.
"""

import json
from urllib.parse import parse_qsl, urlsplit

import pytest

import htc_helpers as htc
from htc_emulator import running

RETRY_AFTER = 10  # seconds the faulty server asks for; every wait below has less than that left
WAIT = 4


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


def test_requests_outside_a_wait_still_retry_as_before(task, faults):
    session, project_id, _ = task
    faults.script(["429"], path=r"/tasks$")
    assert htc.paginate(session, f"/htc/projects/{project_id}/tasks")  # waited RETRY_AFTER, then answered
    assert faults.injected[("api", "429")] == 1


# --- paging always ends


def repeat_pages(session, change_next):
    """Rewrite each page's ``next`` with ``change_next(own page index, next)``; refuse to go on past 50 pages."""
    pages = []

    def hook(response, *args, **kwargs):
        if "/tasks" not in response.url or response.request.method != "GET":
            return
        pages.append(response.url)
        if len(pages) > 50:
            raise AssertionError("paginate kept following pages")
        body = response.json()
        if body.get("next"):
            own = dict(parse_qsl(urlsplit(response.url).query)).get("pageIndex")
            body["next"] = change_next(own, body["next"])
            response._content = json.dumps(body).encode()

    session.hooks["response"].append(hook)
    return pages


@pytest.fixture
def paged(emulator):
    session = htc.HtcSession(emulator.api_url, emulator.api_key)
    project = session.post(
        "/htc/projects", json={"projectName": "paging", "projectDescription": "pytest", "regions": ["AWS_EU_WEST_1"]}
    ).json()
    for n in range(5):
        session.post(f"/htc/projects/{project['projectId']}/tasks", json={"taskName": f"t{n}", "taskDescription": "d"})
    return session, f"/htc/projects/{project['projectId']}/tasks"


def test_paging_stops_when_next_names_a_page_already_fetched(paged):
    session, url = paged
    # The second page's next names the second page again.
    pages = repeat_pages(session, lambda own, link: link if own is None else f"{url}?pageIndex={own}")
    with pytest.raises(htc.HtcError, match=r"does not end: after 2 pages, next names page '2' again"):
        htc.paginate(session, url, {"pageSize": 2})
    assert len(pages) == 2


def test_paging_stops_when_a_page_repeats_the_one_before(paged):
    session, url = paged
    # Every next names offset 0 under a new spelling: the same items again and again.
    pages = repeat_pages(session, lambda own, link: f"{url}?pageIndex=0")
    with pytest.raises(htc.HtcError, match="repeats the page before it"):
        htc.paginate(session, url, {"pageSize": 2})
    assert len(pages) == 2


# --- errors name the key, and keys follow one rule both ways


def test_a_missing_key_is_named_in_the_error(emulator, tmp_path):
    session = htc.HtcSession(emulator.api_url, emulator.api_key)
    project = session.post(
        "/htc/projects", json={"projectName": "keys", "projectDescription": "pytest", "regions": ["AWS_EU_WEST_1"]}
    ).json()
    (tmp_path / "here.dat").write_text("x")
    htc.upload_files(session, project["projectId"], [tmp_path / "here.dat"], progress=False)
    with pytest.raises(htc.HtcNotFound, match=r"'not/here.dat' not found in project .* shared storage"):
        htc.download_files(
            session, project["projectId"], ["here.dat", "not/here.dat"], tmp_path / "out", progress=False
        )


@pytest.mark.parametrize("prefix", ["../../../", "/abs/", "a/../../", "a\\"])
def test_upload_refuses_the_keys_download_refuses_and_stores_nothing(emulator, tmp_path, prefix):
    session = htc.HtcSession(emulator.api_url, emulator.api_key)
    project = session.post(
        "/htc/projects", json={"projectName": "keys", "projectDescription": "pytest", "regions": ["AWS_EU_WEST_1"]}
    ).json()
    (tmp_path / "ok.dat").write_text("x")
    (tmp_path / "also.dat").write_text("y")
    with pytest.raises(ValueError, match="refusing object key"):
        htc.upload_files(
            session, project["projectId"], [tmp_path / "ok.dat", tmp_path / "also.dat"], prefix=prefix, progress=False
        )
    assert htc.list_objects(session, project["projectId"]) == []
