"""The client and the tutorial against the platform's rough edges, one by one.

Each test puts the helpers (and, further down, the notebook's sections) in front of one
behaviour of ``htc_emulator.platform_profile``: an image that is a 404, then PENDING, before it
is READY; log pages that are empty but carry ``next``; storage tokens without ``storagePath``;
a cancel that leaves some jobs running to their end; a clock that runs faster than the
platform's and says so.
"""

from __future__ import annotations

import dataclasses
import json
import time
from urllib.parse import urlsplit

import pytest

import htc_helpers as htc
from htc_emulator import running
from htc_emulator.platform_profile import DAY, PLATFORM, TIME_SCALE_HEADER
from tests.notebook.test_notebook_sections import run_section

IMAGE = "opencv-htc-tutorial:v1"
TUTORIAL_IMAGES = {IMAGE: "docker/Dockerfile"}


def new_project(session, repository: str | None = None) -> str:
    project = session.post(
        "/htc/projects", json={"projectName": "rough", "projectDescription": "pytest", "regions": ["AWS_EU_WEST_1"]}
    ).json()
    if repository:
        session.post(f"/htc/projects/{project['projectId']}/container-registry/repo/{repository}")
    return project["projectId"]


def new_task(session, project_id: str) -> str:
    return session.post(
        f"/htc/projects/{project_id}/tasks", json={"taskName": "t", "taskDescription": "pytest"}
    ).json()["taskId"]


def submit(session, project_id: str, task_id: str, code: str, *, batch_size: int = 1, group: str | None = None) -> str:
    definition = {"imageName": IMAGE, "commands": ["python", "-c", code], "execTimeoutSeconds": 600}
    submitted = session.post(
        f"/htc/projects/{project_id}/tasks/{task_id}/jobs/batch",
        params={"group": group} if group else None,
        json=[{"batchSize": batch_size, "htcJobDefinition": definition}],
    )
    return submitted.json()[0]["parentJobId"]


def answers(session, path_part: str) -> list:
    """Every answer the session gets whose URL contains ``path_part``."""
    seen = []

    def keep(response, *args, **kwargs):
        if path_part in response.url:
            seen.append(response)

    session.hooks["response"].append(keep)
    return seen


# --- an image: 404, then PENDING, then READY -------------------------------------------------


@pytest.mark.slow
def test_wait_for_image_waits_through_the_404_and_pending():
    slow = dataclasses.replace(PLATFORM, image_unknown_seconds=5, image_pending_seconds=2)
    with running(images=TUTORIAL_IMAGES, profile=slow) as emu:
        session = htc.HtcSession(emu.api_url, emu.api_key)
        project_id = new_project(session, "opencv-htc-tutorial")
        url = f"/htc/projects/{project_id}/container-registry/images/{IMAGE}"
        # What the notebook's loop did: the first poll raises, the platform being right to answer 404.
        with pytest.raises(htc.HtcNotFound, match="pushed recently"):
            session.get(url)
        polls = answers(session, "/container-registry/images/")
        assert htc.wait_for_image(session, project_id, IMAGE, interval=0.1) == "READY"
        seen = [r.json()["status"] if r.ok else r.status_code for r in polls]
        assert [s for i, s in enumerate(seen) if i == 0 or s != seen[i - 1]] == [404, "PENDING", "READY"]


@pytest.mark.slow
def test_wait_for_image_gives_up_at_its_deadline_naming_the_last_status():
    pending = dataclasses.replace(PLATFORM, image_unknown_seconds=0, image_pending_seconds=10 * DAY)
    with running(images=TUTORIAL_IMAGES, profile=pending) as emu:
        session = htc.HtcSession(emu.api_url, emu.api_key)
        project_id = new_project(session, "opencv-htc-tutorial")
        started = time.monotonic()
        with pytest.raises(htc.HtcTimeoutError, match="not READY .* after 1 s: PENDING"):
            htc.wait_for_image(session, project_id, IMAGE, interval=0.1, timeout=1)
        with pytest.raises(htc.HtcTimeoutError, match=r"unknown to the platform \(404\)"):
            htc.wait_for_image(session, project_id, "never-pushed:v1", interval=0.1, timeout=1)
        assert time.monotonic() - started < 30


# --- log pages: empty, with next ------------------------------------------------------------------


@pytest.mark.slow
def test_get_logs_returns_every_line_through_empty_pages():
    """With the emulator's defaults (on a fast clock): a log of a few thousand lines, some pages of it empty."""
    with running(images=TUTORIAL_IMAGES, time_scale=0.01, timeout_scale=0.1) as emu:
        session = htc.HtcSession(emu.api_url, emu.api_key)
        project_id = new_project(session, "opencv-htc-tutorial")
        htc.wait_for_image(session, project_id, IMAGE)
        task_id = new_task(session, project_id)
        parent = submit(session, project_id, task_id, "for i in range(3000): print('line', i)")
        assert htc.wait_for_job(session, project_id, task_id, f"{parent}:0", timeout=300)["status"] == "SUCCEEDED"
        pages = answers(session, "/logs")
        lines = htc.get_logs(session, project_id, task_id, f"{parent}:0")
    assert [line["message"] for line in lines] == [f"line {i}" for i in range(3000)]
    bodies = [page.json() for page in pages]
    assert any(not body["items"] and "next" in body for body in bodies), [len(b["items"]) for b in bodies]
    assert "next" not in bodies[-1] and len(bodies) > 3


def test_paging_gives_up_on_a_server_whose_pages_stay_empty(emulator, monkeypatch):
    session = htc.HtcSession(emulator.api_url, emulator.api_key)
    project_id = new_project(session)
    for _ in range(3):
        new_task(session, project_id)
    monkeypatch.setattr(htc, "MAX_EMPTY_PAGES", 5)
    pages = []

    def always_empty(response, *args, **kwargs):
        if response.request.method == "GET" and urlsplit(response.url).path.endswith("/tasks"):
            pages.append(response.url)
            following = f"{urlsplit(response.url).path}?pageIndex=token-{len(pages)}"
            response.status_code = 200  # its own tokens, which the real server would not know
            response._content = json.dumps({"items": [], "next": following}).encode()

    session.hooks["response"].append(always_empty)
    with pytest.raises(htc.HtcError, match="6 empty pages in a row"):
        htc.paginate(session, f"/htc/projects/{project_id}/tasks", {"pageSize": 1})
    assert len(pages) == 6


# --- storage tokens without storagePath --------------------------------------------------------


def test_transfers_work_with_tokens_that_have_no_storage_path(tmp_path, monkeypatch):
    as_the_spec_reads = dataclasses.replace(PLATFORM, storage_path_in_tokens=False)
    with running(profile=as_the_spec_reads, time_scale=0.01) as emu:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", emu.s3_endpoint)
        session = htc.HtcSession(emu.api_url, emu.api_key)
        project_id = new_project(session)
        task_id = new_task(session, project_id)
        token = htc.task_storage_token(session, project_id, task_id)
        assert "storagePath" not in token
        # The task's folder all the same, from the task's regional-storage.
        regional = session.get(f"/htc/projects/{project_id}/tasks/{task_id}/storage/regional-storage").json()
        [task_path] = [s["taskPath"] for s in regional["regionalStores"] if s["region"] == token["region"]]
        assert htc.storage_path(session, project_id, task_id, token).rstrip("/").endswith(task_path.rstrip("/"))
        assert task_id in task_path
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "result.txt").write_text("42\n")
        htc.upload_files(session, project_id, tmp_path / "out", task_id=task_id, progress=False)
        assert htc.list_objects(session, project_id, task_id) == ["result.txt"]
        htc.download_files(session, project_id, ["result.txt"], tmp_path / "back", task_id=task_id, progress=False)
        assert (tmp_path / "back" / "result.txt").read_text() == "42\n"


# --- a cancel that leaves some jobs running ------------------------------------------------------

# Jobs 2-5 fail after a second; the others run until stopped, and finish what they do on SIGTERM.
FAIL_OR_FINISH_ON_SIGTERM = """
import os, signal, sys, time
if 2 <= int(os.environ["AWS_BATCH_JOB_ARRAY_INDEX"]) <= 5:
    time.sleep(1)
    sys.exit(1)
signal.signal(signal.SIGTERM, lambda *_: (print("finishing on SIGTERM", flush=True), sys.exit(0)))
print("running", flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_monitor_for_cancellation_when_not_every_job_is_cancelled():
    """Jobs 0 and 1 run from the start; once jobs 2-5 have failed the group is cancelled, and those two finish."""
    with running(images=TUTORIAL_IMAGES, time_scale=0.01, timeout_scale=0.1, concurrency=4) as emu:
        session = htc.HtcSession(emu.api_url, emu.api_key)
        project_id = new_project(session, "opencv-htc-tutorial")
        htc.wait_for_image(session, project_id, IMAGE)
        task_id = new_task(session, project_id)
        submit(session, project_id, task_id, FAIL_OR_FINISH_ON_SIGTERM, batch_size=8, group="mixed")
        cancelled, history = htc.monitor_for_cancellation(
            session, project_id, task_id, "mixed", max_failed_ratio=0.5, min_finished=4, expected_jobs=8, timeout=120
        )
        assert cancelled
        last = history[history["time"] == history["time"].max()].set_index("status")["count"]
        assert last.sum() == 8 and last[["SUCCEEDED", "FAILED"]].sum() == 8
        jobs = htc.get_all_jobs(session, project_id, task_id, group="mixed", view_type="FULL")
        finished_anyway = [j for j in jobs if j["status"] == "SUCCEEDED"]
        assert {j["jobUUID"].rsplit(":", 1)[1] for j in finished_anyway} >= {"0", "1"}, "cancelled while running?"
        for job in finished_anyway:
            messages = [line["message"] for line in htc.get_logs(session, project_id, task_id, job["jobUUID"])]
            assert messages == ["running", "finishing on SIGTERM"]
        cancelled_jobs = htc.failure_summary(jobs).get("ErrorUnknownFailure: Cancelled by user", 0)
        assert cancelled_jobs + len(finished_anyway) == 4  # the four that had not failed on their own


# --- a clock that runs faster, and says so ---------------------------------------------------


@pytest.mark.slow
def test_waits_poll_at_the_platform_refresh_on_the_clock_the_api_announces():
    with running(images=TUTORIAL_IMAGES, time_scale=0.02, timeout_scale=0.1) as emu:
        session = htc.HtcSession(emu.api_url, emu.api_key)
        assert session.time_scale == 0.02
        assert htc.platform_seconds(session, htc.STATUS_REFRESH_SECONDS) == pytest.approx(0.6)
        project_id = new_project(session, "opencv-htc-tutorial")
        htc.wait_for_image(session, project_id, IMAGE)
        task_id = new_task(session, project_id)
        parent = submit(session, project_id, task_id, "import time; time.sleep(3)")
        polls = answers(session, "/events")
        started = time.monotonic()
        assert htc.wait_for_job(session, project_id, task_id, f"{parent}:0", timeout=120)["status"] == "SUCCEEDED"
        elapsed = time.monotonic() - started
        assert 2 <= len(polls) <= elapsed / 0.6 + 2  # every 0.6 s: neither hammering nor 30 s


def test_without_the_header_the_clock_is_the_platform_s(emulator):
    session = htc.HtcSession(emulator.api_url, emulator.api_key)

    def as_the_platform_answers(response, *args, **kwargs):
        response.headers.pop(TIME_SCALE_HEADER, None)

    session.hooks["response"].append(as_the_platform_answers)
    assert session.time_scale == 1.0
    assert htc.platform_seconds(session, htc.STATUS_REFRESH_SECONDS) == 30


# --- the notebook's sections against them ------------------------------------------------------

SAMPLE = "2008_004176.jpg"  # the Setup's sample photo: seven labelled faces
READY_TASK = "session, PROJECT_ID, TASK_ID, IMAGE, IMAGE_LIST_KEY = quickstart.ready_task(API_URL)"


@pytest.mark.slow
def test_the_batch_section_after_an_image_that_stays_a_404_then_pending():
    """quickstart waits for the image (2 s a 404, then 2 s PENDING here), as the section's preamble, then the batch.

    Within wait_for_image's own limit: ten minutes of the platform's, 6 s on this clock.
    """
    slow = dataclasses.replace(PLATFORM, image_unknown_seconds=200, image_pending_seconds=200)  # on the 0.01 clock
    result = run_section(
        "batch",
        '{"counts": htc.group_status_counts(session, PROJECT_ID, TASK_ID, GROUP), '
        '"image": session.get(f"/htc/projects/{PROJECT_ID}/container-registry/images/{IMAGE}").json()}',
        profile=slow,
    )
    assert result["image"] == {"status": "READY"}
    assert {status: n for status, n in result["counts"].items() if n} == {"SUCCEEDED": 6}


@pytest.mark.slow
def test_the_first_job_section_reads_its_logs_through_empty_pages():
    result = run_section(
        "first-job",
        '{"status": final["status"], "lines": [line["message"] for line in htc.get_logs(session, PROJECT_ID, '
        'TASK_ID, JOB_ID)], "pages": [len(session.get(f"/htc/projects/{PROJECT_ID}/tasks/{TASK_ID}/jobs/{JOB_ID}'
        '/logs").json()["items"])]}',
        preamble_line=f"{READY_TASK}; SAMPLE = {SAMPLE!r}",
    )
    assert result["pages"] == [0]  # the first page of the log is an empty one, with `next`
    assert result["status"] == "SUCCEEDED"
    assert any(SAMPLE in line and "7 faces" in line for line in result["lines"]), result["lines"]


@pytest.mark.slow
def test_the_dry_run_and_gather_sections_with_tokens_without_storage_path():
    as_the_spec_reads = dataclasses.replace(PLATFORM, storage_path_in_tokens=False)
    dry_run = run_section(
        "dry-run",
        '{"token_keys": sorted(task_token), "prefix": prefix, "task": TASK_ID, "listed": objects is not None}',
        preamble_line=f"{READY_TASK}; REGION = quickstart.REGION; DOCKER = False; SAMPLE = {SAMPLE!r}",
        profile=as_the_spec_reads,
    )
    assert "storagePath" not in dry_run["token_keys"]
    # The listing opened the task's folder, found from regional-storage (the gather below has the jobs' results).
    assert dry_run["task"] in dry_run["prefix"] and dry_run["listed"]
    gathered = run_section(
        "gather", '{"missing": missing, "rows": len(results), "winner": winner}', profile=as_the_spec_reads
    )
    assert gathered["missing"] == [] and gathered["rows"] > 0 and gathered["winner"]
