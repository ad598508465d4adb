"""HtcSession: authentication and token renewal, URLs, typed errors, retries, and secrets kept out of errors."""

import logging
import subprocess
import sys
import time
import uuid
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests

import htc_helpers as htc
from tests.helpers.support import ROOT, fast_session, new_project, new_task, record_responses


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


def test_no_host_hard_coded_outside_config():
    assert "htc.rescale.com" not in (ROOT / "htc_helpers.py").read_text()


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


def test_the_description_carries_the_servers_most_specific_message(session):
    """101 batch definitions: the body's errorDescription says which field, its message what is wrong with it."""
    project_id = new_project(session)
    task_id = new_task(session, project_id)
    with pytest.raises(htc.HtcBadRequest) as err:
        session.post(
            f"/htc/projects/{project_id}/tasks/{task_id}/jobs/batch",
            json=[{"htcJobDefinition": {"imageName": "x:v1"}}] * 101,
        )
    assert err.value.description.startswith("Invalid value for body")
    assert "List should have at most 100 items" in err.value.description
    assert err.value.description in str(err.value)
    assert htc.get_all_jobs(session, project_id, task_id) == []  # refused whole


def test_401_for_a_wrong_api_key_without_echoing_it(emulator):
    wrong = "not-the-key-" + uuid.uuid4().hex
    with pytest.raises(htc.HtcUnauthorized) as err:
        htc.HtcSession(emulator.api_url, wrong).get("/htc/regions")
    assert err.value.status == 401 and wrong not in str(err.value)


def test_403_for_a_job_token_outside_its_scope(session, emulator, monkeypatch):
    project_id = new_project(session, repository="opencv-htc-tutorial")
    task_id = new_task(session, project_id)
    # A job token lives as long as its job (and a minute): this job ends at once, which is enough here.
    parent = session.post(
        f"/htc/projects/{project_id}/tasks/{task_id}/jobs/batch",
        json=[{"htcJobDefinition": {"imageName": "opencv-htc-tutorial:v1", "commands": ["python", "-c", "pass"]}}],
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


@pytest.mark.slow
def test_get_retries_429_and_5xx_and_honours_retry_after(faulty, faults):
    session = fast_session(faulty)
    faults.script(["429", "500", "503"])
    started = time.monotonic()
    assert session.get("/htc/regions").json()
    # 429 and 503 carry Retry-After: 1; the backoff alone would be a few hundredths of a second.
    assert time.monotonic() - started >= 2.0
    assert faults.injected == {("api", "429"): 1, ("api", "500"): 1, ("api", "503"): 1}


@pytest.mark.slow
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
    with pytest.raises(htc.HtcNoAnswer) as err:  # a retry would have succeeded
        new_task(session, project_id, "slow-post")
    assert isinstance(err.value.__cause__, requests.exceptions.ReadTimeout)
    assert "may have carried it out" in str(err.value) and err.value.method == "POST"
    assert faults.injected[("api", "slow")] == 1


def pauses_between_retries(monkeypatch) -> list:
    """Every pause the session's retries take, recorded instead of slept."""
    pauses = []
    monkeypatch.setattr(htc._HtcRetry, "sleep", lambda self, response=None: pauses.append(self.get_backoff_time()))
    return pauses


def test_a_refused_connection_fails_at_once_naming_the_url_and_what_to_check(monkeypatch):
    import socket

    pauses = pauses_between_retries(monkeypatch)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connections are refused
        url = f"http://127.0.0.1:{port}/api/v1"
        session = htc.HtcSession(url, "key", max_retries=6)
        with pytest.raises(requests.exceptions.ConnectionError) as err:
            session.get("/htc/regions")
    message = str(err.value)
    assert isinstance(err.value, htc.HtcConnectionError)
    assert f"cannot reach the HTC API at {url}: the connection was refused" in message
    assert f"nothing listens at 127.0.0.1:{port}" in message and "make lab" in message
    assert "RESCALE_HTC_API_URL" in message and len(message) < 500
    assert pauses == []  # no retry: nothing will listen there in a minute either


def test_an_unknown_host_fails_at_once_and_says_what_to_check(monkeypatch):
    pauses = pauses_between_retries(monkeypatch)
    session = htc.HtcSession("https://no-such-host.invalid/api/v1", "key", max_retries=6)
    with pytest.raises(htc.HtcConnectionError) as err:
        session.get("/htc/regions")
    message = str(err.value)
    assert "cannot reach the HTC API at https://no-such-host.invalid/api/v1" in message
    assert "'no-such-host.invalid' does not resolve" in message and "network" in message
    assert "emulator" not in message and "make lab" not in message
    assert pauses == []


def test_a_connect_timeout_is_retried_a_few_times_not_for_a_minute(monkeypatch):
    """A host that does not answer may come back: two more tries, then the error, not six."""
    pauses = pauses_between_retries(monkeypatch)
    attempts = []

    def no_answer(address, *args, **kwargs):
        attempts.append(address)
        raise TimeoutError("timed out")

    monkeypatch.setattr("urllib3.util.connection.create_connection", no_answer)
    session = htc.HtcSession("https://htc.example.org/api/v1", "key", max_retries=6)
    with pytest.raises(htc.HtcConnectionError) as err:
        session.get("/htc/regions")
    assert "htc.example.org:443 did not answer in time" in str(err.value)
    assert len(attempts) == 3 and len(pauses) == 2


def test_a_refused_api_key_says_where_it_came_from(emulator, monkeypatch, tmp_path):
    import config

    wrong = "not-the-key-" + uuid.uuid4().hex
    monkeypatch.setenv("RESCALE_API_KEY", wrong)
    session = htc.HtcSession(emulator.api_url, config.get_profile()[1], key_source=config.key_source())
    with pytest.raises(htc.HtcUnauthorized) as err:
        session.get("/htc/regions")
    assert f"the HTC API at {emulator.api_url} refused the API key from $RESCALE_API_KEY" in str(err.value)
    assert "API section of your Rescale profile" in str(err.value) and wrong not in str(err.value)

    monkeypatch.delenv("RESCALE_API_KEY")
    monkeypatch.delenv("RESCALE_API_TOKEN", raising=False)
    apiconfig = tmp_path / "apiconfig"
    apiconfig.write_text(f"[mine]\napikey = {wrong}\n")
    apiconfig.chmod(0o600)
    monkeypatch.setenv("RESCALE_APICONFIG", str(apiconfig))
    monkeypatch.setenv("RESCALE_PROFILE", "mine")
    session = htc.HtcSession(emulator.api_url, config.get_profile()[1], key_source=config.key_source())
    with pytest.raises(htc.HtcUnauthorized) as err:
        session.bearer_token()
    assert f"refused the API key from profile [mine] of {apiconfig}" in str(err.value)
    assert err.value.status == 401 and wrong not in str(err.value)


def test_the_key_exchange_written_out_goes_with_its_own_authorization(emulator):
    """``session.get("/auth/token", headers=...)`` as the notebook shows it: the key, not the session's token, goes."""
    session = htc.HtcSession(emulator.api_url, emulator.api_key)
    seen = record_responses(session)
    token = session.get("/auth/token", headers={"Authorization": f"Token {emulator.api_key}"}).json()
    assert token["tokenValue"] and int(token["expiresIn"]) > 0
    assert [r.request.headers["Authorization"] for r in seen] == [f"Token {emulator.api_key}"]


def test_a_refused_key_in_the_key_exchange_written_out_says_where_it_came_from(emulator, monkeypatch):
    import config

    wrong = "not-the-key-" + uuid.uuid4().hex
    monkeypatch.setenv("RESCALE_API_KEY", wrong)
    session = htc.HtcSession(emulator.api_url, config.get_profile()[1], key_source=config.key_source())
    with pytest.raises(htc.HtcUnauthorized) as err:
        session.get("/auth/token", headers={"Authorization": f"Token {wrong}"})
    assert f"the HTC API at {emulator.api_url} refused the API key from $RESCALE_API_KEY" in str(err.value)
    assert err.value.status == 401 and wrong not in str(err.value)
    # Another key than the session's: the plain typed error, which names no source it cannot know.
    with pytest.raises(htc.HtcUnauthorized) as err:
        session.get("/auth/token", headers={"Authorization": "Token someone-elses"})
    assert "refused the API key from" not in str(err.value) and "HTTP 401" in str(err.value)


def test_a_connection_error_keeps_a_presigned_urls_signature_out():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/bucket/key?X-Amz-Signature=s3cr3tsig&X-Amz-Credential=AKIA"
        session = htc.HtcSession("http://127.0.0.1:9/api/v1", "key", max_retries=0)
        with pytest.raises(htc.HtcConnectionError) as err:
            session.put(url, data=b"x")
    assert "s3cr3tsig" not in str(err.value) + err.value.url and "AKIA" not in str(err.value)
    assert "X-Amz-Signature=REDACTED" in err.value.url and "the connection was refused" in str(err.value)


# --- what the helpers log


def test_retries_and_their_waits_are_logged(faulty, faults, caplog):
    session = fast_session(faulty)
    faults.script(["503", "500"], path=r"/htc/regions$")
    with caplog.at_level(logging.INFO, logger="htc_helpers"):
        session.get("/htc/regions")
    messages = [r.getMessage() for r in caplog.records if r.name == "htc_helpers"]
    assert any("GET" in m and "/htc/regions: HTTP 503; retry 1" in m for m in messages), messages
    assert any("/htc/regions: HTTP 500; retry 2" in m for m in messages), messages
    assert any(m.startswith("waiting 1.0 s before the retry (Retry-After)") for m in messages), messages


def test_token_renewals_are_logged(short_tokens, caplog):
    session = htc.HtcSession(short_tokens.api_url, short_tokens.api_key)
    with caplog.at_level(logging.INFO, logger="htc_helpers"):
        session.bearer_token()
    assert [r.getMessage() for r in caplog.records if "bearer token renewed" in r.getMessage()]
    assert session.bearer_token() not in caplog.text


def test_nothing_is_printed_when_logging_is_not_configured():
    """A library stays silent unless its user configures logging: even its warnings go nowhere by default."""
    code = "import htc_helpers as htc; htc._log.warning('resubmitting'); htc._log.error('lost')"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == "" and result.stdout == ""
    configured = "import logging, htc_helpers as htc; logging.basicConfig(); htc._log.warning('resubmitting')"
    shown = subprocess.run([sys.executable, "-c", configured], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "resubmitting" in shown.stderr  # and configured logging shows them


# --- token renewal


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


@pytest.mark.slow
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


# --- secrets stay out of errors


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
