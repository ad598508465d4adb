"""htc_helpers.py: pure functions here, then everything else against the running emulator over HTTP."""

import json
import re
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pandas as pd
import plotly.graph_objects as go
import pytest
import requests

import config
import htc_helpers as htc
from htc_emulator import running

ROOT = Path(__file__).resolve().parent.parent


# --- pure functions ----------------------------------------------------------------------


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


def results(*rows):
    return pd.DataFrame(
        [dict(zip(["image", "faces", "status"], r, strict=True)) for r in rows], columns=htc.RESULT_COLUMNS
    ).astype({"faces": "Int64"})


def test_find_max_faces_returns_every_tied_image():
    df = results(("b.jpg", 4, "ok"), ("a.jpg", 4, "ok"), ("c.jpg", 1, "ok"), ("d.jpg", None, "error"))
    best = htc.find_max_faces(df)
    assert best["image"].tolist() == ["a.jpg", "b.jpg"]
    assert best["faces"].tolist() == [4, 4]


def test_find_max_faces_single_winner():
    assert htc.find_max_faces(results(("a.jpg", 2, "ok"), ("b.jpg", 7, "ok")))["image"].tolist() == ["b.jpg"]


@pytest.mark.parametrize("df", [results(), results(("a.jpg", None, "error")), results(("a.jpg", 0, "ok"))])
def test_find_max_faces_empty_when_no_face_anywhere(df):
    best = htc.find_max_faces(df)
    assert best.empty and list(best.columns) == htc.RESULT_COLUMNS


def test_missing_results_names_absent_and_failed_images_in_input_order():
    df = results(("a.jpg", 1, "ok"), ("c.jpg", None, "error"), ("d.jpg", 0, "ok"))
    assert htc.missing_results(["e.jpg", "a.jpg", "c.jpg", "b.jpg", "d.jpg", "e.jpg"], df) == [
        "e.jpg",
        "c.jpg",
        "b.jpg",
    ]
    assert htc.missing_results(["a.jpg", "d.jpg"], df) == []


def test_next_page_keeps_the_parameters_and_takes_only_the_page_index():
    params = htc._next_params(
        {"group": "g", "pageSize": 5, "pageIndex": "old"},
        "http://h/api/v1/htc/projects/p/tasks/t/jobs?group=g&pageIndex=abc&pageSize=7",
    )
    assert params == {"group": "g", "pageSize": 5, "pageIndex": "abc"}  # each parameter once
    assert htc._next_params({"x": "y"}, "?pageIndex=2") == {"x": "y", "pageIndex": "2"}


def test_next_page_on_another_host_only_lends_its_page_index():
    # The spec's own example of `next`; following it would take the request (and token) elsewhere.
    params = htc._next_params({"pageSize": 3}, "https://page2.com/steal?pageIndex=p2&pageSize=1&evil=1")
    assert params == {"pageSize": 3, "pageIndex": "p2"}


@pytest.mark.parametrize("link", ["", "https://page2.com", "http://h/api/v1/htc/projects?pageIndex="])
def test_next_page_without_a_page_index_ends_the_listing(link):
    assert htc._next_params({"pageSize": 3}, link) is None


def test_dat_file_parsing():
    assert htc._dat_faces("a_tagged.dat", "face_cnt\n12\n") == 12
    with pytest.raises(ValueError, match="a_tagged.dat"):
        htc._dat_faces("a_tagged.dat", "12\n")


def test_aws_region_mapping():
    assert htc._aws_region("AWS_EU_WEST_1") == "eu-west-1"
    assert htc._aws_region("AWS_US_EAST_2") == "us-east-2"
    assert htc._aws_region("GCP_US_CENTRAL_1") is None


def test_plot_status_history_drops_always_zero_statuses():
    t0, t1 = pd.Timestamp("2025-01-01T00:00Z"), pd.Timestamp("2025-01-01T00:00:30Z")
    history = pd.DataFrame(
        [
            (t0, "RUNNING", 2),
            (t0, "SUCCEEDED", 0),
            (t0, "FAILED", 0),
            (t1, "RUNNING", 0),
            (t1, "SUCCEEDED", 2),
            (t1, "FAILED", 0),
        ],
        columns=["time", "status", "count"],
    )
    fig = htc.plot_status_history(history)
    assert isinstance(fig, go.Figure)
    assert [trace.name for trace in fig.data] == ["RUNNING", "SUCCEEDED"]
    assert fig.layout.yaxis.type != "log"


def test_session_needs_key_or_job_token(monkeypatch):
    with pytest.raises(ValueError, match="not both"):
        htc.HtcSession("http://127.0.0.1:9/api/v1", "key", job_token="jwt")
    monkeypatch.delenv("RESCALE_HTC_BEARER_TOKEN", raising=False)
    with pytest.raises(ValueError, match="RESCALE_HTC_BEARER_TOKEN"):
        htc.HtcSession("http://127.0.0.1:9/api/v1")


def test_session_repr_hides_secrets(monkeypatch):
    assert "s3cr3t" not in repr(htc.HtcSession("http://127.0.0.1:9/api/v1", "s3cr3t-key"))
    monkeypatch.setenv("RESCALE_HTC_BEARER_TOKEN", "s3cr3t-jwt")
    assert repr(htc.HtcSession("http://127.0.0.1:9/api/v1")) == "<HtcSession http://127.0.0.1:9/api/v1 (job token)>"


def test_cancel_group_refuses_to_cancel_the_whole_task():
    with pytest.raises(ValueError, match="group"):
        htc.cancel_group(htc.HtcSession("http://127.0.0.1:9/api/v1", "k"), "p", "t", "")


@pytest.mark.parametrize("wait", [htc.wait_for_job, htc.monitor_group, htc.monitor_for_cancellation])
def test_waits_give_up_after_a_day_by_default(wait):
    import inspect

    assert inspect.signature(wait).parameters["timeout"].default == htc.WAIT_TIMEOUT_SECONDS == 86400


def test_no_host_hard_coded_outside_config():
    assert "htc.rescale.com" not in (ROOT / "htc_helpers.py").read_text()


# --- against the emulator ----------------------------------------------------------------


TUTORIAL_IMAGE = "opencv-htc-tutorial:v1"
DATA = ROOT / "data"


@pytest.fixture(scope="module")
def session(emulator):
    # Through config.py, as the notebook does: conftest points the environment at the emulator.
    return htc.HtcSession(config.htc_api_url(), config.get_profile()[1], backoff_factor=0.05)


def new_project(session, repository=None):
    project = session.post(
        "/htc/projects", json={"projectName": "helpers", "projectDescription": "pytest", "regions": ["AWS_EU_WEST_1"]}
    ).json()
    if repository:
        session.post(f"/htc/projects/{project['projectId']}/container-registry/repo/{repository}")
    return project["projectId"]


def new_task(session, project_id, name="t"):
    return session.post(
        f"/htc/projects/{project_id}/tasks", json={"taskName": name, "taskDescription": "pytest"}
    ).json()["taskId"]


def record_responses(session):
    """Every response the session receives (token requests and retried 401s included)."""
    seen = []
    session.hooks["response"].append(lambda response, *args, **kwargs: seen.append(response))
    return seen


def test_absolute_and_relative_urls_reach_the_same_endpoint(session, emulator):
    assert session.get(f"{emulator.api_url}/htc/regions").json() == session.get("htc/regions").json()
    assert session.get("/htc/storage").json()[0]["storageName"] == emulator.bucket


def test_bearer_token_only_sent_to_the_api(emulator):
    session = htc.HtcSession(emulator.api_url, emulator.api_key)
    seen = record_responses(session)
    session.get("/htc/regions")
    try:
        session.get(emulator.s3_endpoint + "/")
    except htc.HtcError:
        pass  # moto's answer doesn't matter here, only what was sent
    assert seen[-2].request.headers["Authorization"].startswith("Bearer ")
    assert seen[-1].request.url.startswith(emulator.s3_endpoint)
    assert "Authorization" not in seen[-1].request.headers


# --- typed errors


def test_400_carries_the_servers_error_description(session):
    project_id = new_project(session)
    task_id = new_task(session, project_id)
    with pytest.raises(htc.HtcBadRequest) as err:
        session.post(
            f"/htc/projects/{project_id}/tasks/{task_id}/jobs/batch",
            json=[{"batchSize": 0, "htcJobDefinition": {"imageName": "x:v1"}}],
        )
    assert err.value.status == 400 and "batchSize" in err.value.description
    assert err.value.description in str(err.value) and err.value.method == "POST"


def test_401_for_a_wrong_api_key_without_echoing_it(emulator):
    wrong = "not-the-key-" + uuid.uuid4().hex
    with pytest.raises(htc.HtcUnauthorized) as err:
        htc.HtcSession(emulator.api_url, wrong).get("/htc/regions")
    assert err.value.status == 401 and wrong not in str(err.value)


def test_403_for_a_job_token_outside_its_scope(session, emulator, monkeypatch):
    project_id = new_project(session)
    task_id = new_task(session, project_id)
    # A job token lives as long as its job (and a minute): this job fails at once, which is enough here.
    parent = session.post(
        f"/htc/projects/{project_id}/tasks/{task_id}/jobs/batch",
        json=[{"htcJobDefinition": {"imageName": "not-in-the-registry:v1"}}],
    ).json()[0]["parentJobId"]
    token = emulator.scheduler.tokens.job_token(
        project_id=project_id, task_id=task_id, job_id=f"{parent}:0", lifetime=60
    )
    monkeypatch.setenv("RESCALE_HTC_BEARER_TOKEN", token)
    job_session = htc.HtcSession(emulator.api_url)
    assert htc.task_storage_token(job_session, project_id, task_id)["projectId"] == project_id
    with pytest.raises(htc.HtcForbidden) as err:
        job_session.get("/htc/regions")
    assert err.value.status == 403 and token not in str(err.value) and token not in repr(job_session)


def test_404_for_an_unknown_project(session):
    with pytest.raises(htc.HtcNotFound) as err:
        session.get(f"/htc/projects/{uuid.uuid4()}")
    assert err.value.status == 404 and isinstance(err.value, htc.HtcError)


@pytest.fixture(scope="module")
def faulty():
    """An emulator whose faults the tests script; Retry-After: 1 s, 'slow' waits 1 s."""
    with running(faults={"retry_after": 1, "slow_seconds": 1.0}) as emu:
        yield emu


@pytest.fixture
def faults(faulty):
    faulty.faults.clear()
    faulty.faults.injected.clear()
    yield faulty.faults
    faulty.faults.clear()


def fast_session(emu, **kwargs):
    session = htc.HtcSession(emu.api_url, emu.api_key, backoff_factor=0.01, **kwargs)
    session.bearer_token()  # fetched now, so scripted faults hit the call under test
    return session


@pytest.mark.parametrize(
    "kind, error", [("429", htc.HtcRateLimited), ("503", htc.HtcServerError), ("500", htc.HtcServerError)]
)
def test_429_and_5xx_raise_typed_errors_once_retries_run_out(faulty, faults, kind, error):
    session = fast_session(faulty, max_retries=1)
    faults.script([kind] * 3)
    with pytest.raises(error) as err:
        session.get("/htc/regions")
    assert err.value.status == int(kind) and "injected fault" in err.value.description
    assert faults.injected[("api", kind)] == 2  # the first try and one retry


# --- retries


def test_get_retries_429_and_5xx_and_honours_retry_after(faulty, faults):
    session = fast_session(faulty)
    faults.script(["429", "500", "503"])
    started = time.monotonic()
    assert session.get("/htc/regions").json()
    # 429 and 503 carry Retry-After: 1; the backoff alone would be a few hundredths of a second.
    assert time.monotonic() - started >= 2.0
    assert faults.injected == {("api", "429"): 1, ("api", "500"): 1, ("api", "503"): 1}


def test_post_is_retried_on_429_and_submits_once(faulty, faults):
    session = fast_session(faulty)
    project_id = new_project(session)
    faults.script(["429", "429"], path=r"/tasks$")
    name = "rate-limited-" + uuid.uuid4().hex
    new_task(session, project_id, name)
    assert faults.injected[("api", "429")] == 2
    names = [t["taskName"] for t in htc.paginate(session, f"/htc/projects/{project_id}/tasks")]
    assert names.count(name) == 1


def test_post_is_not_retried_on_5xx(faulty, faults):
    session = fast_session(faulty)
    project_id = new_project(session)
    faults.script(["500"], path=r"/tasks$")
    with pytest.raises(htc.HtcServerError):
        new_task(session, project_id, "never-created")
    assert faults.injected[("api", "500")] == 1
    assert htc.paginate(session, f"/htc/projects/{project_id}/tasks") == []


def test_read_timeout_retried_for_get(faulty, faults):
    session = fast_session(faulty, timeout=(5, 0.3))
    faults.script(["slow"])
    assert session.get("/htc/regions").json()
    assert faults.injected[("api", "slow")] == 1


def test_read_timeout_not_retried_for_post(faulty, faults):
    # The server may have acted on a request whose answer timed out; a retry could submit twice.
    session = fast_session(faulty, timeout=(5, 0.3))
    project_id = new_project(session)
    faults.script(["slow"], path=r"/tasks$")
    with pytest.raises(requests.exceptions.ReadTimeout):  # a retry would have succeeded
        new_task(session, project_id, "slow-post")
    assert faults.injected[("api", "slow")] == 1


def test_connection_errors_are_raised_after_retries():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connections are refused
        session = htc.HtcSession(f"http://127.0.0.1:{port}/api/v1", "key", max_retries=2, backoff_factor=0.01)
        with pytest.raises(requests.exceptions.ConnectionError):
            session.get("/htc/regions")


# --- token renewal


@pytest.fixture(scope="module")
def short_tokens():
    with running(token_lifetime=2) as emu:
        yield emu


def test_token_renewed_before_it_expires(short_tokens):
    session = htc.HtcSession(short_tokens.api_url, short_tokens.api_key)
    seen = record_responses(session)
    started = time.monotonic()
    first = session.bearer_token()
    time.sleep(0.5)
    assert session.bearer_token() == first
    # A 2 s token is renewed a tenth of its lifetime early: from 1.8 s on.
    time.sleep(max(0.0, started + 1.9 - time.monotonic()))
    second = session.bearer_token()
    assert second != first
    session.get("/htc/regions")
    assert [r.status_code for r in seen] == [200, 200, 200]
    assert [urlsplit(r.url).path.endswith("/auth/token") for r in seen] == [True, True, False]


def test_token_renewed_once_after_a_401(short_tokens):
    session = htc.HtcSession(short_tokens.api_url, short_tokens.api_key)
    seen = record_responses(session)
    # JWT expiry counts whole seconds, so a 2 s token fetched at x.6 s is dead at x+2 s, 1.4 s
    # later, while the client (which counts from expiresIn) still trusts it until 1.8 s: the
    # same situation as a clock running behind the server's.
    while not 0.6 <= time.time() % 1 < 0.65:
        time.sleep(0.005)
    started = time.monotonic()
    stale = session.bearer_token()
    time.sleep(max(0.0, started + 1.6 - time.monotonic()))
    assert session.get("/htc/regions").json()
    assert [r.status_code for r in seen] == [200, 401, 200, 200]
    assert seen[1].request.headers["Authorization"] == f"Bearer {stale}"
    assert seen[3].request.headers["Authorization"] != f"Bearer {stale}"


def test_expired_job_token_is_not_renewed(short_tokens, monkeypatch):
    admin = htc.HtcSession(short_tokens.api_url, short_tokens.api_key)
    project_id = new_project(admin)
    task_id = new_task(admin, project_id)
    monkeypatch.setenv(
        "RESCALE_HTC_BEARER_TOKEN",
        short_tokens.scheduler.tokens.job_token(project_id=project_id, task_id=task_id, job_id="j:0", lifetime=1),
    )
    job_session = htc.HtcSession(short_tokens.api_url)
    seen = record_responses(job_session)
    time.sleep(1.1)
    with pytest.raises(htc.HtcUnauthorized):
        job_session.get(f"/htc/projects/{project_id}/tasks/{task_id}/storage/token")
    assert [r.status_code for r in seen] == [401]


# --- paging


def test_paginate_follows_next_without_duplicating_parameters(session):
    project_id = new_project(session)
    created = [new_task(session, project_id, f"task-{i}") for i in range(7)]
    seen = record_responses(session)
    url = f"/htc/projects/{project_id}/tasks"
    tasks = htc.paginate(session, url, {"pageSize": 3})
    assert [t["taskId"] for t in tasks] == created
    assert len(seen) == 3
    for response in seen:
        keys = [k for k, _ in parse_qsl(urlsplit(response.url).query)]
        assert sorted(keys) == sorted(set(keys)), response.url
        # Every page from the original URL, with the token, whatever host `next` names.
        assert response.url.split("?")[0] == session.api_url + url
        assert response.request.headers["Authorization"].startswith("Bearer ")
    # Each call's pageIndex is the one the previous page's `next` carried.
    links = [r.json().get("next") for r in seen]
    assert links[-1] is None
    assert [dict(parse_qsl(urlsplit(r.url).query))["pageIndex"] for r in seen[1:]] == [
        dict(parse_qsl(urlsplit(link).query))["pageIndex"] for link in links[:-1]
    ]

    seen.clear()
    assert [t["taskId"] for t in htc.paginate(session, url, {"pageSize": 3}, max_items=4)] == created[:4]
    assert len(seen) == 2  # the cap holds across pages and stops fetching
    seen.clear()
    assert len(htc.paginate(session, url, {"pageSize": 3}, max_items=3)) == 3 and len(seen) == 1


def test_paginate_stays_on_the_api_when_next_names_another_host(session):
    project_id = new_project(session)
    created = [new_task(session, project_id, f"task-{i}") for i in range(5)]
    seen = []

    def elsewhere(response, *args, **kwargs):
        # The spec's example `next` is https://page2.com: point the real links there.
        seen.append(response.url)
        body = response.json()
        if isinstance(body, dict) and body.get("next"):
            body["next"] = "https://page2.com/api/v1/htc?" + urlsplit(body["next"]).query
            response._content = json.dumps(body).encode()

    session.hooks["response"].append(elsewhere)
    try:
        tasks = htc.paginate(session, f"/htc/projects/{project_id}/tasks", {"pageSize": 2})
    finally:
        session.hooks["response"].remove(elsewhere)
    assert [t["taskId"] for t in tasks] == created
    assert len(seen) == 3 and all(url.startswith(session.api_url + "/") for url in seen)


# --- storage


def make_tree(root: Path) -> dict[str, bytes]:
    files = {"image_list.dat": b"a.jpg\nsub/b.jpg\n", "a.jpg": b"\xff\xd8a", "sub/b.jpg": b"\xff\xd8b"}
    for key, data in files.items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(data)
    return files


def test_storage_round_trip_shared_and_task(session, tmp_path):
    project_id = new_project(session)
    task_id = new_task(session, project_id)
    files = make_tree(tmp_path / "src")
    assert sorted(htc.upload_files(session, project_id, tmp_path / "src", progress=False)) == sorted(files)
    assert sorted(htc.list_objects(session, project_id)) == sorted(files)
    assert htc.list_objects(session, project_id, task_id) == []

    htc.upload_files(session, project_id, [tmp_path / "src" / "a.jpg"], task_id, prefix="in/", progress=False)
    assert htc.list_objects(session, project_id, task_id) == ["in/a.jpg"]
    assert htc.list_objects(session, project_id, prefix="sub/") == ["sub/b.jpg"]

    paths = htc.download_files(session, project_id, sorted(files), tmp_path / "out", progress=False)
    assert {p.relative_to(tmp_path / "out").as_posix(): p.read_bytes() for p in paths} == files
    assert htc.read_image_list(session, project_id) == ["a.jpg", "sub/b.jpg"]
    with pytest.raises(ValueError, match="leave the target directory"):
        htc.download_files(session, project_id, ["../escape"], tmp_path / "out")


def rewrite_json(session, path_pattern, change):
    """Edit the JSON of real responses whose path matches: the server's answers as another platform might give them."""

    def hook(response, *args, **kwargs):
        if response.ok and re.search(path_pattern, urlsplit(response.url).path):
            body = response.json()
            change(body)
            response._content = json.dumps(body).encode()

    session.hooks["response"].append(hook)


def without_storage_path(token):
    # The spec's StorageAccessToken has no storagePath; the emulator adds it as the original tutorial read it.
    token.pop("storagePath")


@pytest.mark.parametrize("task_path", ["as served", "bare key prefix"])
def test_task_storage_found_through_regional_storage_without_storage_path(emulator, tmp_path, task_path):
    plain = htc.HtcSession(emulator.api_url, emulator.api_key)
    project_id = new_project(plain)
    task_id = new_task(plain, project_id)
    expected = htc.task_storage_token(plain, project_id, task_id)["storagePath"]

    session = htc.HtcSession(emulator.api_url, emulator.api_key)
    rewrite_json(session, r"/storage/token(/[^/]+)?$", without_storage_path)
    if task_path == "bare key prefix":

        def bare(body):
            for store in body["regionalStores"]:
                store["taskPath"] = store["taskPath"].removeprefix(f"s3://{emulator.bucket}/")

        rewrite_json(session, r"/regional-storage$", bare)
    seen = record_responses(session)
    assert "storagePath" not in htc.task_storage_token(session, project_id, task_id)

    (tmp_path / "r.txt").write_text("result")
    htc.upload_files(session, project_id, [tmp_path / "r.txt"], task_id, progress=False)
    assert htc.list_objects(plain, project_id, task_id) == ["r.txt"]  # where storagePath points
    assert htc.list_objects(plain, project_id) == []  # not in shared storage
    assert htc.list_objects(session, project_id, task_id) == ["r.txt"]
    assert any(r.url.endswith(f"/tasks/{task_id}/storage/regional-storage") for r in seen)
    client, bucket, prefix = htc._s3(session, project_id, task_id, None)
    assert f"s3://{bucket}/{prefix}" == expected
    # Shared storage needs only projectSharedStoragePath.
    htc.upload_files(session, project_id, [tmp_path / "r.txt"], progress=False)
    assert htc.list_objects(plain, project_id) == ["r.txt"]


def test_task_storage_without_any_path_is_a_clear_error(emulator):
    session = htc.HtcSession(emulator.api_url, emulator.api_key)
    project_id = new_project(session)
    task_id = new_task(session, project_id)
    rewrite_json(session, r"/storage/token(/[^/]+)?$", without_storage_path)
    rewrite_json(
        session,
        r"/regional-storage$",
        lambda body: body.update(
            regionalStores=[{**store, "region": "AWS_US_WEST_2"} for store in body["regionalStores"]]
        ),
    )
    with pytest.raises(htc.HtcError, match=rf"no storage path for task {task_id}.*taskPath for region AWS_EU_WEST_1"):
        htc.list_objects(session, project_id, task_id)


def test_storage_on_another_provider_is_refused(emulator):
    session = htc.HtcSession(emulator.api_url, emulator.api_key)
    project_id = new_project(session)
    rewrite_json(session, r"/storage/token(/[^/]+)?$", lambda token: token.update(provider="AZURE"))
    with pytest.raises(htc.HtcError, match="AWS S3 storage only; this storage is on AZURE"):
        htc.list_objects(session, project_id)


def test_storage_credentials_renewed_when_they_expire(session, tmp_path, monkeypatch):
    project_id = new_project(session)
    lifetime = (
        htc._timestamp(htc.project_storage_token(session, project_id)["expiration"]) - pd.Timestamp.now(tz="UTC")
    ).total_seconds()
    # Treat the credentials as due for renewal 0.5 s after they were issued.
    monkeypatch.setattr(htc, "STORAGE_RENEW_BEFORE", lifetime)
    monkeypatch.setattr(htc, "STORAGE_RENEW_FRACTION", 1 - 0.5 / lifetime)
    (tmp_path / "f.txt").write_text("x")
    seen = record_responses(session)
    client, bucket, prefix = htc._s3(session, project_id, None, None)
    client.upload_file(str(tmp_path / "f.txt"), bucket, prefix + "f.txt")
    fetched = sum(r.url.endswith("/storage/token") for r in seen)
    time.sleep(0.6)
    assert htc._list(client, bucket, prefix)[0]["key"] == "f.txt"
    assert sum(r.url.endswith("/storage/token") for r in seen) == fetched + 1
    session.hooks["response"].clear()


def test_storage_transfers_survive_injected_s3_errors(faulty, faults, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", faulty.s3_endpoint)  # this emulator's S3, not the session's
    session = fast_session(faulty)
    project_id = new_project(session)
    files = make_tree(tmp_path / "src")
    faults.script(["503", "500"], target="storage")
    assert sorted(htc.upload_files(session, project_id, tmp_path / "src", workers=1, progress=False)) == sorted(files)
    assert faults.injected[("storage", "503")] == 1 and faults.injected[("storage", "500")] == 1
    assert sorted(htc.list_objects(session, project_id)) == sorted(files)


# --- aggregation from manifests written here


def put_text(session, project_id, task_id, tmp_path, files: dict[str, str]):
    root = tmp_path / uuid.uuid4().hex
    for key, text in files.items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_text(text)
    htc.upload_files(session, project_id, root, task_id, progress=False)


def manifest(*records):
    base = {"boxes": [], "seconds": 0.1, "error": None, "scale_factor": 1.2, "job": "p:0"}
    return "".join(json.dumps({**base, **r}) + "\n" for r in records)


def test_collect_results_from_manifests_and_dat_files(session, tmp_path):
    project_id = new_project(session)
    task_id = new_task(session, project_id)
    put_text(
        session,
        project_id,
        task_id,
        tmp_path,
        {
            "manifests/chunk-00000.jsonl": manifest(
                {"image": "a.jpg", "faces": 3, "status": "ok"},
                {"image": "b.jpg", "faces": None, "status": "error", "error": "not a readable image"},
            ),
            "manifests/chunk-00001.jsonl": manifest(
                {"image": "c.jpg", "faces": 3, "status": "ok"}, {"image": "d.jpg", "faces": 0, "status": "ok"}
            )
            + "\n",
            "a.jpg_tagged.dat": "face_cnt\n3\n",
            # A job that uploaded its outputs but died before its manifest:
            "e.jpg_tagged.dat": "face_cnt\n2\n",
        },
    )
    # A later single-image run that succeeded for b.jpg wins over the failed record.
    put_text(
        session,
        project_id,
        task_id,
        tmp_path,
        {"manifests/single-b.jpg.jsonl": manifest({"image": "b.jpg", "faces": 1, "status": "ok"})},
    )

    df = htc.collect_results(session, project_id, task_id)
    assert list(df.columns) == htc.RESULT_COLUMNS
    assert df["image"].tolist() == ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"]
    assert df["faces"].tolist() == [3, 1, 3, 0, 2]
    assert df.set_index("image")["source"].to_dict() == {
        "a.jpg": "manifests/chunk-00000.jsonl",
        "b.jpg": "manifests/single-b.jpg.jsonl",
        "c.jpg": "manifests/chunk-00001.jsonl",
        "d.jpg": "manifests/chunk-00001.jsonl",
        "e.jpg": "e.jpg_tagged.dat",
    }
    assert htc.find_max_faces(df)["image"].tolist() == ["a.jpg", "c.jpg"]
    assert htc.missing_results(["a.jpg", "b.jpg", "f.jpg", "e.jpg"], df) == ["f.jpg"]


def test_collect_results_of_an_empty_task(session):
    project_id = new_project(session)
    df = htc.collect_results(session, project_id, new_task(session, project_id))
    assert df.empty and list(df.columns) == htc.RESULT_COLUMNS
    assert htc.find_max_faces(df).empty
    assert htc.missing_results(["a.jpg"], df) == ["a.jpg"]


def test_collect_results_rejects_a_corrupt_manifest(session, tmp_path):
    project_id = new_project(session)
    task_id = new_task(session, project_id)
    put_text(
        session,
        project_id,
        task_id,
        tmp_path,
        {"manifests/chunk-00003.jsonl": manifest({"image": "a.jpg", "faces": 1, "status": "ok"}) + "{truncated\n"},
    )
    with pytest.raises(ValueError, match=r"manifests/chunk-00003.jsonl line 2"):
        htc.collect_results(session, project_id, task_id)


# --- monitoring


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

    def counts(*args):
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


# --- a real run of the worker over the local data set


def submit(session, project_id, task_id, group, batch_size, *envs, timeout=600):
    payload = [
        {
            "jobName": "helpers-test",
            "batchSize": batch_size,
            "htcJobDefinition": {
                "imageName": TUTORIAL_IMAGE,
                "maxVCpus": 1,
                "maxMemory": 512,
                "execTimeoutSeconds": timeout,
                "commands": ["python", "/opt/face_tagger.py"],
                "envs": [
                    {"name": "BATCH_JOB_ARRAY_SIZE", "value": str(batch_size)},
                    {"name": "IMG_OBJKEY_LIST", "value": "image_list.dat"},
                    *envs,
                ],
            },
        }
    ]
    submitted = session.post(
        f"/htc/projects/{project_id}/tasks/{task_id}/jobs/batch", params={"group": group}, json=payload
    ).json()
    return submitted[0]["parentJobId"]


@pytest.fixture(scope="module")
def tutorial_project(session, tmp_path_factory):
    """A project with the worker's repository and, in shared storage, a dozen photos and their list."""
    assert (DATA / "ground_truth.json").is_file(), "the data set is missing from data/: run `make data`"
    truth = json.loads((DATA / "ground_truth.json").read_text())["images"]
    by_faces = sorted(truth, key=lambda name: (-truth[name]["faces"], name))
    images = by_faces[:8] + by_faces[-4:]  # crowded photos and a few without faces
    project_id = new_project(session, repository=TUTORIAL_IMAGE.split(":")[0])
    listing = tmp_path_factory.mktemp("list") / "image_list.dat"
    # One listed image that is not in storage: the worker must report it, and the check must name it.
    listing.write_text("\n".join(images + ["not-uploaded.jpg"]) + "\n")
    htc.upload_files(session, project_id, [DATA / "images" / name for name in images] + [listing], progress=False)
    return project_id, images + ["not-uploaded.jpg"]


def test_worker_batch_is_monitored_collected_and_checked(session, tutorial_project):
    project_id, listed = tutorial_project
    task_id = new_task(session, project_id)
    group = "faces-" + uuid.uuid4().hex[:8]
    parent = submit(session, project_id, task_id, group, 3)

    history = htc.monitor_group(
        session, project_id, task_id, group, expected_jobs=3, interval=0.2, timeout=90, progress=False
    )
    last = history[history["time"] == history["time"].max()].set_index("status")["count"]
    assert last["SUCCEEDED"] == 3 and last.sum() == 3
    assert "SUCCEEDED" in [trace.name for trace in htc.plot_status_history(history).data]

    jobs = htc.get_all_jobs(session, project_id, task_id, group)
    assert sorted(j["jobUUID"] for j in jobs) == [f"{parent}:{i}" for i in range(3)]
    assert htc.status_counts(jobs)["SUCCEEDED"] == 3 and htc.failure_summary(jobs) == {}

    assert (
        htc.wait_for_job(session, project_id, task_id, f"{parent}:0", interval=0.2, timeout=10)["status"] == "SUCCEEDED"
    )
    logs = htc.get_logs(session, project_id, task_id, f"{parent}:0")
    assert "array index 0 of 3" in logs[0]["message"]
    assert logs[-1]["message"].endswith("manifest manifests/chunk-00000.jsonl")
    stamps = [htc._timestamp(line["timestamp"]) for line in logs]
    assert stamps == sorted(stamps)

    results = htc.collect_results(session, project_id, task_id)
    assert sorted(results["image"]) == sorted(listed)
    assert (results["source"].str.startswith("manifests/chunk-")).all()
    assert htc.missing_results(htc.read_image_list(session, project_id), results) == ["not-uploaded.jpg"]
    assert "download of 'not-uploaded.jpg' failed" in results.set_index("image").loc["not-uploaded.jpg", "error"]

    with_faces = set(results.loc[results["faces"].fillna(0) > 0, "image"])
    assert with_faces, "the Haar cascade found no face in the crowded photos"
    dats = {
        k.removesuffix("_tagged.dat")
        for k in htc.list_objects(session, project_id, task_id)
        if k.endswith("_tagged.dat")
    }
    assert dats == with_faces
    best = htc.find_max_faces(results)
    assert not best.empty and (best["faces"] == results["faces"].max()).all()
    assert set(best["image"]) <= with_faces


def test_too_many_failures_cancel_the_group(session, tutorial_project):
    project_id, _ = tutorial_project
    task_id = new_task(session, project_id)
    group = "failing-" + uuid.uuid4().hex[:8]
    # Every job fails on purpose: by raising, or by hanging past its (scaled) 60 s timeout.
    submit(session, project_id, task_id, group, 6, {"name": "SIMULATE_FAILURES", "value": "1.0"}, timeout=60)

    # min_finished=1: six jobs never reach the default of ten, and the first failure must trip it here.
    cancelled, history = htc.monitor_for_cancellation(
        session,
        project_id,
        task_id,
        group,
        max_failed_ratio=0.15,
        min_finished=1,
        expected_jobs=6,
        interval=0.2,
        timeout=90,
        progress=False,
    )
    assert cancelled
    last = history[history["time"] == history["time"].max()].set_index("status")["count"]
    assert last["FAILED"] == 6 and last.sum() == 6

    failed = htc.get_all_jobs(session, project_id, task_id, group, status="FAILED")
    summary = htc.failure_summary(failed)
    assert sum(summary.values()) == len(failed) == 6
    # The failures that tripped the threshold, then the jobs the cancellation ended.
    assert summary.get("ErrorUnknownFailure: Cancelled by user", 0) >= 1 and len(summary) >= 2


def test_presigned_urls_work_and_their_signatures_stay_out_of_errors(session, emulator):
    project_id = new_project(session)
    url = session.get(f"/htc/projects/{project_id}/storage/presigned-url", params={"filePath": "p.txt"}).json()["url"]
    session.put(url, data=b"presigned")  # not an API URL: sent without the bearer token
    assert htc.list_objects(session, project_id) == ["p.txt"]

    signature = dict(parse_qsl(urlsplit(url).query))["X-Amz-Signature"]
    with pytest.raises(htc.HtcNotFound) as err:
        session.put(url.replace(f"/{emulator.bucket}/", "/no-such-bucket-for-this-test/"), data=b"x")
    assert signature not in str(err.value) and "X-Amz-Signature=REDACTED" in str(err.value)


def test_error_bodies_from_other_hosts_stay_out_of_errors(session, emulator):
    project_id = new_project(session)
    url = session.get(f"/htc/projects/{project_id}/storage/presigned-url", params={"filePath": "p.txt"}).json()["url"]
    wrong_bucket = url.replace(f"/{emulator.bucket}/", "/no-such-bucket-for-this-test/")
    answer = requests.put(wrong_bucket, data=b"x", timeout=30)
    assert answer.status_code == 404 and "NoSuchBucket" in answer.text  # what S3 would have told us
    with pytest.raises(htc.HtcNotFound) as err:
        session.put(wrong_bucket, data=b"x")
    # S3 error bodies can echo StringToSign and AWSAccessKeyId: none of it reaches the message.
    assert err.value.description is None
    assert "NoSuchBucket" not in str(err.value) and "<Error>" not in str(err.value)
    assert str(err.value) == f"HTTP 404 {answer.reason} for PUT {err.value.url}"
