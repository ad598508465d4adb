"""The platform's rough edges, one test each: what ``htc_emulator.platform_profile`` says the platform does.

Timing is observed, not assumed: a test records when each request left and when its
answer came (``Poll``), and asserts only what those instants prove (an answer received
before a phase could have ended belongs to it). Where a behaviour needs no waiting for
its proof, the emulator runs a profile with just that behaviour, on a clock whose phases
last seconds; where the defaults are the point, it runs with ``running()``'s defaults.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import pytest

from htc_emulator import job_rights, running
from htc_emulator.platform_profile import DAY, IDEAL, PLATFORM, TIME_SCALE_HEADER

IMAGE = "probe:v1"
PROBE = r"""
import base64, json, os, signal, sys, time
mode = os.environ["MODE"]


def finish(*_):
    print("SIGTERM: finishing what was started", flush=True)
    sys.exit(0)


if mode == "lines":
    for i in range(int(os.environ["LINES"])):
        print(f"line {i}")
elif mode == "sleep":
    time.sleep(float(os.environ["SECONDS"]))
elif mode == "finish-on-sigterm":
    signal.signal(signal.SIGTERM, finish)
    print("running", flush=True)
    time.sleep(600)
elif mode == "ignore-sigterm":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("running", flush=True)
    time.sleep(600)
elif mode == "token":
    payload = os.environ["RESCALE_HTC_BEARER_TOKEN"].split(".")[1]
    print(json.dumps(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))))
elif mode == "refresh":
    import requests
    api, refresh = os.environ["RESCALE_HTC_API_URL"], os.environ["RESCALE_HTC_REFRESH_TOKEN"]
    task = f"{api}/htc/projects/{os.environ['RESCALE_HTC_PROJECT_ID']}/tasks/{os.environ['RESCALE_HTC_TASK_ID']}"
    exchanged = requests.get(api + "/auth/token", headers={"Authorization": "Refresh " + refresh}, timeout=30)
    fresh = exchanged.json()["tokenValue"]

    def read_task(token):
        return requests.get(task, headers={"Authorization": "Bearer " + token}, timeout=30).status_code

    codes = {"exchange": exchanged.status_code, "fresh_token_reads_its_task": read_task(fresh),
             "refresh_token_as_bearer": read_task(refresh)}
    print(json.dumps(codes), flush=True)
"""


@pytest.fixture(scope="module")
def probe_image(tmp_path_factory) -> dict:
    context = tmp_path_factory.mktemp("probe")
    (context / "probe.py").write_text(PROBE)
    (context / "Dockerfile").write_text(
        'FROM python:3.12-slim\nCOPY probe.py /opt/probe.py\nCMD ["python", "/opt/probe.py"]\n'
    )
    return {IMAGE: (context / "Dockerfile", context)}


def probe(mode: str, **envs) -> dict:
    pairs = [{"name": "MODE", "value": mode}] + [{"name": k, "value": str(v)} for k, v in envs.items()]
    return {"imageName": IMAGE, "commands": ["python", "/opt/probe.py"], "envs": pairs, "execTimeoutSeconds": 600}


@dataclass(frozen=True)
class Poll:
    """One answer and the wall-clock instants its request left and its answer came back."""

    sent: float
    received: float
    answer: object


def timed(call) -> Poll:
    sent = time.time()
    answer = call()
    return Poll(sent, time.time(), answer)


def wait_for(predicate, timeout: float = 60, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(interval)
    return result


def instant(value: str) -> float:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def events(client, project_id: str, task_id: str, job_id: str) -> list[dict]:
    path = f"/htc/projects/{project_id}/tasks/{task_id}/jobs/{job_id}/events"
    return client.ok("GET", path, params={"pageSize": 1000})["items"]


def new_place(client, repositories=("probe",)) -> tuple[str, str]:
    project_id = client.new_project(repositories=list(repositories))
    return project_id, client.new_task(project_id)


# --- image replication, and the check at submit --------------------------------------------


@pytest.fixture(scope="module")
def platform(probe_image, client_for):
    """The platform's profile on a clock 20 times as fast: refresh 1.5 s, 404 for 1.5 s, PENDING 3 s, cold 6 s."""
    with running(images=probe_image, time_scale=0.05, timeout_scale=0.1, concurrency=2) as emu:
        yield client_for(emu)


@pytest.mark.slow
def test_an_image_is_unknown_then_pending_then_ready(platform):
    profile = platform.emu.profile
    project_id = platform.new_project()
    path = f"/htc/projects/{project_id}/container-registry/images/{IMAGE}"
    created = timed(lambda: platform.ok("POST", f"/htc/projects/{project_id}/container-registry/repo/probe"))
    polls = []
    while not polls or polls[-1].answer.status_code == 404 or polls[-1].answer.json()["status"] != "READY":
        polls.append(timed(lambda: platform.request("GET", path, request_valid=None)))
        assert time.time() - created.sent < 60, "never READY"
        time.sleep(0.05)
    seen = [p.answer.json().get("status", "404") if p.answer.status_code == 200 else "404" for p in polls]
    assert [s for i, s in enumerate(seen) if i == 0 or s != seen[i - 1]] == ["404", "PENDING", "READY"]
    missing = polls[0].answer.json()
    assert missing["errorType"] == "IMAGE_UNAVAILABLE" and "pushed recently" in missing["errorDescription"]
    # Listed at once (it is in the registry); replicated (READY) only later.
    assert IMAGE in platform.ok("GET", f"/htc/projects/{project_id}/container-registry/images")["images"]
    for poll, status in zip(polls, seen, strict=True):
        if poll.received - created.sent < profile.image_unknown_seconds:
            assert status == "404"
        if poll.sent - created.received >= profile.image_unknown_seconds:
            assert status != "404"
        if poll.received - created.sent < profile.image_ready_after:
            assert status != "READY"
        if poll.sent - created.received >= profile.image_ready_after:
            assert status == "READY"


def test_with_the_defaults_a_fresh_image_is_not_ready_and_a_batch_naming_it_is_refused(probe_image, client_for):
    with running(images=probe_image) as emu:
        assert emu.profile.name == "platform" and emu.time_scale == 1.0
        client = client_for(emu)
        project_id, task_id = new_place(client)
        first = client.get(f"/htc/projects/{project_id}/container-registry/images/{IMAGE}", request_valid=None)
        assert first.status_code == 404
        path = f"/htc/projects/{project_id}/tasks/{task_id}/jobs/batch"
        for image in (IMAGE, "nothere:v1"):
            refused = client.post(path, json=[{"htcJobDefinition": {**probe("sleep", SECONDS=0), "imageName": image}}])
            assert refused.status_code == 400, refused.text
            body = refused.json()
            assert "imageName" in body["errorDescription"] and image in body["message"]
        assert client.job_count(project_id, task_id) == 0


def test_a_batch_naming_a_pending_image_is_refused_and_creates_nothing(probe_image, client_for):
    pending_for_ever = dataclasses.replace(PLATFORM, image_unknown_seconds=0, image_pending_seconds=10 * DAY)
    with running(images=probe_image, profile=pending_for_ever) as emu:
        client = client_for(emu)
        project_id, task_id = new_place(client)
        assert client.ok("GET", f"/htc/projects/{project_id}/container-registry/images/{IMAGE}") == {
            "status": "PENDING"
        }
        refused = client.post(
            f"/htc/projects/{project_id}/tasks/{task_id}/jobs/batch",
            json=[{"htcJobDefinition": probe("sleep", SECONDS=0)}, {"htcJobDefinition": probe("sleep", SECONDS=0)}],
        )
        assert refused.status_code == 400 and "[0].htcJobDefinition.imageName" in refused.json()["errorDescription"]
        assert "PENDING" in refused.json()["message"]
        assert client.job_count(project_id, task_id) == 0


# --- status refresh ticks ------------------------------------------------------------------


@pytest.mark.slow
def test_statuses_change_only_at_refresh_ticks(platform):
    backend, period = platform.emu.backend, platform.emu.profile.status_refresh_seconds
    project_id, task_id = new_place(platform)
    parent = platform.submit(project_id, task_id, probe("sleep", SECONDS=0.5))
    path = f"/htc/projects/{project_id}/tasks/{task_id}/jobs/{parent}:0"
    polls = [timed(lambda: platform.ok("GET", path))]
    while polls[-1].answer["status"] != "SUCCEEDED":
        assert polls[-1].received - polls[0].sent < 120, "the job never finished"
        time.sleep(0.05)
        polls.append(timed(lambda: platform.ok("GET", path)))
    started = backend.started_at.timestamp()
    changes = 0
    for before, after in zip(polls, polls[1:], strict=False):
        # A tick falls between the two answers: at started + k * period, for some k.
        tick = started + period * (int((after.received - started) // period))
        if before.answer["status"] != after.answer["status"]:
            changes += 1
            assert tick >= before.sent - 0.01, (before, after, tick)
        # What an answer shows is as of the last tick before it: no later event (a job shows its first at least).
        if after.answer["status"] != "SUBMITTED_TO_RESCALE":
            assert instant(after.answer["updatedAt"]) <= tick + 0.01
    assert changes >= 1
    history = events(platform, project_id, task_id, f"{parent}:0")
    assert history[-1]["status"] == "SUCCEEDED"


# --- instances and pulls -------------------------------------------------------------------


@pytest.mark.slow
def test_jobs_wait_for_a_cold_instance_then_for_their_image(probe_image, client_for):
    latency = dataclasses.replace(IDEAL, instance_start_seconds=4, instance_idle_seconds=2, image_pull_seconds=3)
    with running(images=probe_image, profile=latency, concurrency=1) as emu:
        client = client_for(emu)
        project_id, task_id = new_place(client)

        def run_one() -> dict[str, float]:
            parent = client.submit(project_id, task_id, probe("sleep", SECONDS=0))
            wait_for(lambda: client.job(project_id, task_id, f"{parent}:0")["status"] == "SUCCEEDED")
            return {e["status"]: instant(e["dateTime"]) for e in events(client, project_id, task_id, f"{parent}:0")}

        cold = run_one()
        assert cold["STARTING"] - cold["RUNNABLE"] >= latency.instance_start_seconds - 0.01
        assert cold["RUNNING"] - cold["STARTING"] >= latency.image_pull_seconds - 0.01
        warm = run_one()  # at once: the instance is still warm and has the image
        assert warm["STARTING"] - warm["RUNNABLE"] < latency.instance_start_seconds
        assert warm["RUNNING"] - warm["STARTING"] < latency.image_pull_seconds
        time.sleep(latency.instance_idle_seconds + 1)  # idle long enough to be scaled in
        again = run_one()
        assert again["STARTING"] - again["RUNNABLE"] >= latency.instance_start_seconds - 0.01
        assert again["RUNNING"] - again["STARTING"] >= latency.image_pull_seconds - 0.01
    assert PLATFORM.instance_start_seconds >= 60 and PLATFORM.image_pull_seconds > 0


# --- logs ----------------------------------------------------------------------------------


def log_pages(client, path: str, **params) -> list[dict]:
    pages = []
    while True:
        body = client.ok("GET", path, params=params)
        pages.append(body)
        if "next" not in body:
            return pages
        params["pageIndex"] = parse_qs(urlsplit(body["next"]).query)["pageIndex"][0]


@pytest.mark.slow
def test_log_pages_come_as_cloudwatch_serves_them(platform):
    project_id, task_id = new_place(platform)
    parent = platform.submit(project_id, task_id, probe("lines", LINES=3000))
    other = platform.submit(project_id, task_id, probe("lines", LINES=5))
    platform.wait_terminal(project_id, task_id, 2)
    path = f"/htc/projects/{project_id}/tasks/{task_id}/jobs/{parent}:0/logs"
    pages = log_pages(platform, path, sort="asc", pageSize=1000)
    assert [len(p["items"]) for p in pages[:2]] == [0, 0] and all("next" in p for p in pages[:2])
    assert any(not p["items"] and "next" in p for p in pages[3:]), [len(p["items"]) for p in pages]
    assert "next" not in pages[-1]
    tokens = [parse_qs(urlsplit(p["next"]).query)["pageIndex"][0] for p in pages[:-1]]
    assert all(re.fullmatch(r"f/[0-9]{56}/s", token) for token in tokens) and len(set(tokens)) == len(tokens)
    lines = [item["message"] for page in pages for item in page["items"]]
    assert lines == [f"line {i}" for i in range(3000)]
    newest_first = [item["message"] for page in log_pages(platform, path, pageSize=1000) for item in page["items"]]
    assert newest_first == lines[::-1]
    # A token names its log and its order: another's, a changed one or the other order's is refused.
    for wrong, sort in [
        (tokens[2], "desc"),
        (tokens[2][:-4] + ("1" if tokens[2][-3] == "0" else "0") + "1/s", "asc"),
        ("1000", "asc"),
    ]:
        refused = platform.get(path, params={"pageIndex": wrong, "sort": sort}, request_valid=None)
        assert refused.status_code == 400 and "pageIndex" in refused.json()["errorDescription"]
    other_path = f"/htc/projects/{project_id}/tasks/{task_id}/jobs/{other}:0/logs"
    refused = platform.get(other_path, params={"pageIndex": tokens[2], "sort": "asc"}, request_valid=None)
    assert refused.status_code == 400


# --- cancel ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cancel_is_best_effort_applied_at_the_next_tick(probe_image, client_for):
    best_effort = dataclasses.replace(IDEAL, best_effort_cancel=True, status_refresh_seconds=3.0)
    # A 5 s grace period (timeout scale 0.5): ample for the finishing job to end on SIGTERM on a busy machine.
    with running(images=probe_image, profile=best_effort, concurrency=2, timeout_scale=0.5) as emu:
        client = client_for(emu)
        project_id, task_id = new_place(client)
        finishing = client.submit(project_id, task_id, probe("finish-on-sigterm"), group="g")
        stubborn = client.submit(project_id, task_id, probe("ignore-sigterm"), group="g")
        queued = client.submit(project_id, task_id, probe("sleep", SECONDS=600), batch_size=2, group="g")
        jobs = {job_id: emu.backend.jobs[job_id] for job_id in (f"{finishing}:0", f"{stubborn}:0")}
        wait_for(lambda: all(client.logs(project_id, task_id, job_id) == ["running"] for job_id in jobs))
        wait_for(lambda: emu.backend.seconds_to_next_tick() > 2.5, interval=0.01)  # just after a tick
        # At the latest the next tick (the wall clock read before the backend's: never later than the tick).
        next_tick = time.time() + emu.backend.seconds_to_next_tick()
        answered = timed(lambda: client.post(f"/htc/projects/{project_id}/tasks/{task_id}/jobs/cancel"))
        assert answered.answer.status_code == 200 and answered.answer.content == b""
        jobs_then = emu.backend.task_jobs(project_id, task_id)
        requested, statuses = [job.cancel_requested for job in jobs_then], [job.status for job in jobs_then]
        if time.time() < next_tick - 0.1:  # read before the next tick, however slow the machine: nothing cancelled
            assert not any(requested)
            assert statuses[2:] == ["RUNNABLE", "RUNNABLE"]
        client.wait_terminal(project_id, task_id, 4, timeout=60)
        by_id = {j["jobUUID"]: j for j in client.ok("GET", f"/htc/projects/{project_id}/tasks/{task_id}/jobs")["items"]}
        # Allowed to finish within the grace period: not every job was cancelled.
        assert by_id[f"{finishing}:0"]["status"] == "SUCCEEDED"
        assert "SIGTERM: finishing what was started" in client.logs(project_id, task_id, f"{finishing}:0")
        killed = by_id[f"{stubborn}:0"]
        assert (killed["status"], killed["container"]["exitCode"]) == ("FAILED", 137)
        for index in (0, 1):
            job = by_id[f"{queued}:{index}"]
            assert job["status"] == "FAILED" and job["startedAt"] is None
            cancelled = events(client, project_id, task_id, f"{queued}:{index}")[-1]
            assert cancelled["userCancelledEvent"] is True
            assert instant(cancelled["dateTime"]) >= answered.sent  # applied after the request, at a tick


# --- tokens ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_user_defined_claims_are_prefixed_in_the_job_token(platform):
    project_id, task_id = new_place(platform)
    definition = {**probe("token"), "claims": [{"name": "team", "value": "faces"}]}
    parent = platform.submit(project_id, task_id, definition)
    platform.wait_terminal(project_id, task_id, 1)
    claims = json.loads(platform.logs(project_id, task_id, f"{parent}:0")[0])
    assert claims["userDefined_team"] == "faces" and "team" not in claims
    assert claims["tokenType"] == "JOB" and claims["jobId"] == f"{parent}:0"


@pytest.mark.slow
def test_a_job_exchanges_its_refresh_token_for_a_fresh_job_token(platform, monkeypatch):
    project_id, task_id = new_place(platform)
    parent = platform.submit(project_id, task_id, probe("refresh"))
    platform.wait_terminal(project_id, task_id, 1)
    codes = json.loads(platform.logs(project_id, task_id, f"{parent}:0")[0])
    assert codes == {"exchange": 200, "fresh_token_reads_its_task": 200, "refresh_token_as_bearer": 401}
    tokens = platform.emu.scheduler.tokens
    refresh = tokens.refresh_token(project_id=project_id, task_id=task_id, job_id=f"{parent}:0", lifetime=600)
    url = platform.emu.api_url + "/auth/token"
    assert platform.get(url, auth=None, headers={"Authorization": f"Refresh {refresh}"}).status_code == 200
    monkeypatch.setattr(job_rights, "JOB_TOKEN_AFTERLIFE_SECONDS", 0)  # the job is over
    refused = platform.get(url, auth=None, headers={"Authorization": f"Refresh {refresh}"}, request_valid=None)
    assert refused.status_code == 401
    forged = platform.get(url, auth=None, headers={"Authorization": "Refresh not-a-token"}, request_valid=None)
    assert forged.status_code == 401


# --- projects, storage tokens, retention, the clock -------------------------------------------------


def test_organization_code_is_null_for_some_projects(client_for):
    with running() as emu:
        client = client_for(emu)
        created = [client.new_project() for _ in range(4)]
        codes = [client.ok("GET", f"/htc/projects/{project_id}")["organizationCode"] for project_id in created]
        assert codes[1] is None and codes[3] is None and isinstance(codes[0], str) and codes[0] == codes[2]
        listed = {p["projectId"]: p["organizationCode"] for p in client.ok("GET", "/htc/projects")["items"]}
        assert [listed[project_id] for project_id in created] == codes


def test_storage_tokens_without_storage_path_as_the_spec_reads_them(client_for):
    with running(profile=dataclasses.replace(IDEAL, storage_path_in_tokens=False)) as emu:
        client = client_for(emu)
        project_id, task_id = new_place(client, repositories=())
        token = client.ok("GET", f"/htc/projects/{project_id}/tasks/{task_id}/storage/token")
        assert "storagePath" not in token and token["projectSharedStoragePath"]
        stores = client.ok("GET", f"/htc/projects/{project_id}/tasks/{task_id}/storage/regional-storage")
        assert stores["regionalStores"][0]["taskPath"].endswith(f"{task_id}/")
    assert PLATFORM.storage_path_in_tokens  # the original tutorial reads it; both ways work


@pytest.mark.slow
def test_jobs_are_deleted_some_time_after_they_end(probe_image, client_for):
    kept_for = 1.5
    with running(images=probe_image, profile=dataclasses.replace(IDEAL, job_retention_seconds=kept_for)) as emu:
        client = client_for(emu)
        project_id, task_id = new_place(client)
        parent = client.submit(project_id, task_id, probe("sleep", SECONDS=0))
        path = f"/htc/projects/{project_id}/tasks/{task_id}/jobs/{parent}:0"
        ended = instant(wait_for(lambda: (j := client.ok("GET", path))["status"] == "SUCCEEDED" and j)["completedAt"])
        polls = [timed(lambda: client.request("GET", path, request_valid=None))]
        while polls[-1].answer.status_code == 200:
            assert polls[-1].sent - ended < 30, "never deleted"
            time.sleep(0.05)
            polls.append(timed(lambda: client.request("GET", path, request_valid=None)))
        assert polls[-1].answer.status_code == 404
        assert polls[-1].received >= ended + kept_for - 0.01  # not before its time
        assert client.job_count(project_id, task_id) == 0
        assert client.ok("GET", f"/htc/projects/{project_id}/tasks/{task_id}/jobs")["items"] == []
    assert PLATFORM.job_retention_seconds == 60 * DAY


def test_every_answer_says_how_fast_the_clock_runs(client_for):
    with running(time_scale=0.25, faults={"script": ["503"], "path": "/htc/storage$"}) as emu:
        client = client_for(emu)
        answers = [
            client.get("/htc/regions"),
            client.get("/htc/projects/nothere", request_valid=None),
            client.get("/htc/regions", auth="not-a-token", request_valid=None),
            client.get("/htc/storage"),  # the injected 503, retried by nobody
        ]
        assert [a.status_code for a in answers] == [200, 404, 401, 503]
        assert all(float(a.headers[TIME_SCALE_HEADER]) == 0.25 for a in answers)
