"""The storage server enforces what storage credentials allow: who, where, and for how long."""

from __future__ import annotations

import datetime as dt
import threading
import time

import boto3
import pytest
import requests
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from htc_emulator import FaultInjector, running

SLEEPER = {
    "imageName": "opencv-htc-tutorial:v1",
    "execTimeoutSeconds": 600,
    "commands": ["python", "-c", "import time; time.sleep(300)"],
}


def s3_with(endpoint: str, access_key: str, secret_key: str, session_token: str | None = None):
    return boto3.session.Session(
        aws_access_key_id=access_key, aws_secret_access_key=secret_key, aws_session_token=session_token
    ).client("s3", endpoint_url=endpoint, region_name="eu-west-1", config=Config(retries={"total_max_attempts": 1}))


def s3_for(emulator, token: dict):
    credentials = token["credentials"]
    return s3_with(
        emulator.s3_endpoint,
        credentials["AWS_ACCESS_KEY_ID"],
        credentials["AWS_SECRET_ACCESS_KEY"],
        credentials["AWS_SESSION_TOKEN"],
    )


def error_code(call, *args, **kwargs) -> str:
    with pytest.raises(ClientError) as refused:
        call(*args, **kwargs)
    return refused.value.response["Error"]["Code"]


def prefix_of(path: str) -> str:
    return path.removeprefix("s3://").partition("/")[2]


@pytest.fixture(scope="module")
def world(api, emulator):
    """Two projects with a task each (the first with a second task), and an object in every place."""
    projects = [api.new_project(repositories=["opencv-htc-tutorial"]), api.new_project()]
    tasks = [api.new_task(projects[0]), api.new_task(projects[0]), api.new_task(projects[1])]
    places = {
        "shared": f"projects/{projects[0]}/shared/",
        "task": f"projects/{projects[0]}/tasks/{tasks[0]}/",
        "sibling": f"projects/{projects[0]}/tasks/{tasks[1]}/",
        "other_shared": f"projects/{projects[1]}/shared/",
        "other_task": f"projects/{projects[1]}/tasks/{tasks[2]}/",
    }
    for project_id in projects:
        owner = s3_for(emulator, api.ok("GET", f"/htc/projects/{project_id}/storage/token"))
        for prefix in places.values():
            if prefix.startswith(f"projects/{project_id}/"):
                owner.put_object(Bucket=emulator.bucket, Key=prefix + "file.txt", Body=b"original")
    return projects, tasks, places


def can_read(s3, bucket: str, key: str) -> bool:
    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"original"
    except ClientError as exc:
        assert exc.response["Error"]["Code"] == "AccessDenied", exc.response
        return False


def can_write(s3, bucket: str, key: str) -> bool:
    try:
        s3.put_object(Bucket=bucket, Key=key, Body=b"original")
        return True
    except ClientError as exc:
        assert exc.response["Error"]["Code"] == "AccessDenied", exc.response
        return False


def can_list(s3, bucket: str, prefix: str) -> bool:
    try:
        return bool(s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents"))
    except ClientError as exc:
        assert exc.response["Error"]["Code"] == "AccessDenied", exc.response
        return False


def reach(emulator, s3, places: dict) -> dict[str, str]:
    """For each place: r (read), w (write), l (list) as the credentials allow."""
    bucket = emulator.bucket
    return {
        name: "".join(
            flag
            for flag, allowed in (
                ("r", can_read(s3, bucket, prefix + "file.txt")),
                ("w", can_write(s3, bucket, prefix + "file.txt")),
                ("l", can_list(s3, bucket, prefix)),
            )
            if allowed
        )
        for name, prefix in places.items()
    }


def test_task_credentials_reach_their_task_and_read_the_shared_files(api, emulator, world):
    projects, tasks, places = world
    token = api.ok("GET", f"/htc/projects/{projects[0]}/tasks/{tasks[0]}/storage/token")
    assert reach(emulator, s3_for(emulator, token), places) == {
        "shared": "rl",
        "task": "rwl",
        "sibling": "",
        "other_shared": "",
        "other_task": "",
    }


def test_project_credentials_reach_their_project_only(api, emulator, world):
    projects, _, places = world
    token = api.ok("GET", f"/htc/projects/{projects[0]}/storage/token")
    assert reach(emulator, s3_for(emulator, token), places) == {
        "shared": "rwl",
        "task": "rwl",
        "sibling": "rwl",
        "other_shared": "",
        "other_task": "",
    }


@pytest.mark.slow
def test_a_job_reads_the_shared_files_and_writes_its_task_only(api, emulator, world):
    projects, tasks, places = world
    parent = api.submit(projects[0], tasks[0], SLEEPER)
    try:
        job_token = emulator.scheduler.tokens.job_token(
            project_id=projects[0], task_id=tasks[0], job_id=f"{parent}:0", lifetime=600
        )
        shared = api.ok("GET", f"/htc/projects/{projects[0]}/storage/token", auth=job_token)
        assert reach(emulator, s3_for(emulator, shared), places) == {
            "shared": "rl",
            "task": "",
            "sibling": "",
            "other_shared": "",
            "other_task": "",
        }
        task = api.ok("GET", f"/htc/projects/{projects[0]}/tasks/{tasks[0]}/storage/token", auth=job_token)
        assert reach(emulator, s3_for(emulator, task), places) == {
            "shared": "rl",
            "task": "rwl",
            "sibling": "",
            "other_shared": "",
            "other_task": "",
        }
    finally:
        api.post(f"/htc/projects/{projects[0]}/tasks/{tasks[0]}/jobs/cancel")


def test_scoped_credentials_cannot_copy_delete_or_list_their_way_out(api, emulator, world):
    projects, tasks, places = world
    s3 = s3_for(emulator, api.ok("GET", f"/htc/projects/{projects[0]}/tasks/{tasks[0]}/storage/token"))
    bucket = emulator.bucket
    assert (
        error_code(
            s3.copy_object,
            Bucket=bucket,
            Key=places["task"] + "stolen.txt",
            CopySource={"Bucket": bucket, "Key": places["other_shared"] + "file.txt"},
        )
        == "AccessDenied"
    )
    assert (
        error_code(
            s3.delete_objects,
            Bucket=bucket,
            Delete={"Objects": [{"Key": places["task"] + "file.txt"}, {"Key": places["sibling"] + "file.txt"}]},
        )
        == "AccessDenied"
    )
    assert error_code(s3.list_objects_v2, Bucket=bucket) == "AccessDenied"
    assert error_code(s3.list_objects_v2, Bucket=bucket, Prefix="projects/") == "AccessDenied"
    assert error_code(s3.list_buckets) == "AccessDenied"
    assert error_code(s3.put_object, Bucket=bucket, Key=places["task"] + "../escape.txt", Body=b"x") == "AccessDenied"
    assert error_code(s3.delete_bucket, Bucket=bucket) == "AccessDenied"
    # Within its own task the same operations work.
    s3.copy_object(
        Bucket=bucket,
        Key=places["task"] + "copy.txt",
        CopySource={"Bucket": bucket, "Key": places["shared"] + "file.txt"},
    )
    s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": places["task"] + "copy.txt"}]})


@pytest.mark.slow
def test_unknown_keys_bad_signatures_and_wrong_session_tokens_are_refused(api, emulator, world):
    projects, _, places = world
    credentials = api.ok("GET", f"/htc/projects/{projects[0]}/storage/token")["credentials"]
    key, secret, session = (credentials[n] for n in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"))
    target = {"Bucket": emulator.bucket, "Key": places["shared"] + "file.txt"}
    made_up = s3_with(emulator.s3_endpoint, "ASIAMADEUPMADEUP1234", secret, session)
    assert error_code(made_up.get_object, **target) == "InvalidAccessKeyId"
    assert (
        error_code(s3_with(emulator.s3_endpoint, key, "wrong" + secret[5:], session).get_object, **target)
        == "SignatureDoesNotMatch"
    )
    assert (
        error_code(s3_with(emulator.s3_endpoint, key, secret, session[:-4] + "AAAA").get_object, **target)
        == "InvalidToken"
    )
    assert error_code(s3_with(emulator.s3_endpoint, key, secret).get_object, **target) == "InvalidToken"
    # The emulator's own key id is public; its secret is not.
    admin = s3_with(emulator.s3_endpoint, "HTCEMULATORADMIN", "guess")
    assert error_code(admin.list_objects_v2, Bucket=emulator.bucket) == "SignatureDoesNotMatch"


def test_anonymous_requests_list_nothing_and_change_nothing(emulator, world):
    _, _, places = world
    bucket_url = f"{emulator.s3_endpoint}/{emulator.bucket}"
    for url in (
        f"{emulator.s3_endpoint}/",
        f"{bucket_url}?list-type=2",
        f"{bucket_url}?prefix=projects/",
        f"{bucket_url}/{places['shared']}file.txt",
    ):
        response = requests.get(url, timeout=30)
        assert response.status_code == 403 and b"AccessDenied" in response.content
        assert b"file.txt" not in response.content and emulator.bucket.encode() not in response.content
    assert requests.put(f"{bucket_url}/{places['shared']}anonymous.txt", data=b"x", timeout=30).status_code == 403
    # moto's own control API is not reachable through the storage server.
    assert requests.post(f"{emulator.s3_endpoint}/moto-api/reset", timeout=30).status_code == 404
    assert requests.put(f"{emulator.s3_endpoint}/another-bucket", timeout=30).status_code == 404


def wait_until_past(expiration: str, at_most: float) -> None:
    deadline = dt.datetime.fromisoformat(expiration.replace("Z", "+00:00"))
    assert deadline - dt.datetime.now(dt.UTC) <= dt.timedelta(seconds=at_most), expiration
    while dt.datetime.now(dt.UTC) <= deadline:
        time.sleep(0.1)


@pytest.mark.slow
def test_credentials_expire_with_the_job_token_that_got_them(api, emulator, world):
    projects, tasks, places = world
    parent = api.submit(projects[0], tasks[0], SLEEPER)
    try:
        # A token's times are whole seconds: minted early in a second, it lives 4.9 s or more, far longer than
        # the two calls below that must come before its end.
        while time.time() % 1 >= 0.1:
            time.sleep(0.01)
        job_token = emulator.scheduler.tokens.job_token(
            project_id=projects[0], task_id=tasks[0], job_id=f"{parent}:0", lifetime=5
        )
        token = api.ok("GET", f"/htc/projects/{projects[0]}/tasks/{tasks[0]}/storage/token", auth=job_token)
        s3 = s3_for(emulator, token)
        assert can_read(s3, emulator.bucket, places["task"] + "file.txt")
        wait_until_past(token["expiration"], at_most=5)  # no later than the job token
        assert error_code(s3.get_object, Bucket=emulator.bucket, Key=places["task"] + "file.txt") == "ExpiredToken"
    finally:
        api.post(f"/htc/projects/{projects[0]}/tasks/{tasks[0]}/jobs/cancel")


def test_deleting_a_task_ends_its_credentials(api, emulator):
    project_id = api.new_project()
    task_id = api.new_task(project_id)
    token = api.ok("GET", f"/htc/projects/{project_id}/tasks/{task_id}/storage/token")
    s3 = s3_for(emulator, token)
    key = prefix_of(token["storagePath"]) + "out.txt"
    s3.put_object(Bucket=emulator.bucket, Key=key, Body=b"1")
    api.ok("DELETE", f"/htc/projects/{project_id}/tasks/{task_id}")
    assert error_code(s3.put_object, Bucket=emulator.bucket, Key=key, Body=b"2") == "ExpiredToken"


@pytest.mark.parametrize(
    "authorization",
    [
        "AWS4-HMAC-SHA256 garbage",
        "AWS4-HMAC-SHA256 Credential=HTCEMULATORADMIN/x/y/s3/aws4_request, SignedHeaders=host, Signature=00",
        "AWS4-HMAC-SHA256 Credential=HTCEMULATORADMIN/{day}/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=\u00e9",
        "Basic dXNlcjpwYXNz",
    ],
)
def test_malformed_signatures_are_refused_not_crashed_on(emulator, authorization):
    now = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    headers = {
        "Authorization": authorization.format(day=now[:8]).encode(),
        "x-amz-date": now,
        "x-amz-content-sha256": "UNSIGNED-PAYLOAD",
    }
    for path in ("", "/k%ff", "/projects/x/shared/a?acl"):
        response = requests.get(f"{emulator.s3_endpoint}/{emulator.bucket}{path}", headers=headers, timeout=30)
        assert response.status_code in (400, 403) and b"<Code>" in response.content, response.text


def test_a_body_changed_after_signing_is_refused(api, emulator, world):
    projects, tasks, places = world
    s3 = s3_for(emulator, api.ok("GET", f"/htc/projects/{projects[0]}/tasks/{tasks[0]}/storage/token"))
    key = places["task"] + "tampered.txt"

    def tamper(request, **kwargs):
        request.body = b"evil!"  # same length, after the signature was computed

    s3.meta.events.register("before-send.s3.PutObject", tamper)
    assert error_code(s3.put_object, Bucket=emulator.bucket, Key=key, Body=b"good!") == "XAmzContentSHA256Mismatch"
    s3.meta.events.unregister("before-send.s3.PutObject", tamper)
    assert error_code(s3.head_object, Bucket=emulator.bucket, Key=key) == "404"
    s3.put_object(Bucket=emulator.bucket, Key=key, Body=b"good!")
    assert s3.get_object(Bucket=emulator.bucket, Key=key)["Body"].read() == b"good!"


def test_unsigned_amz_headers_are_refused_whoever_signed(api, emulator, world):
    """S3 refuses a request whose ``x-amz-*`` headers the signature does not cover; so does the gate, for every
    credential: a header added after signing cannot turn a PUT into a copy, even of a file the credential reads."""
    projects, tasks, places = world
    s3 = s3_for(emulator, api.ok("GET", f"/htc/projects/{projects[0]}/tasks/{tasks[0]}/storage/token"))
    key = places["task"] + "smuggled.txt"

    def smuggle(request, **kwargs):
        request.headers["x-amz-copy-source"] = f"/{emulator.bucket}/{places['shared']}file.txt"

    s3.meta.events.register("before-send.s3.PutObject", smuggle)
    assert error_code(s3.put_object, Bucket=emulator.bucket, Key=key, Body=b"") == "AccessDenied"
    s3.meta.events.unregister("before-send.s3.PutObject", smuggle)
    assert error_code(s3.head_object, Bucket=emulator.bucket, Key=key) == "404"


def chunked(chunks: list[bytes]) -> bytes:
    """An ``aws-chunked`` body whose chunk signatures are forged (all zeros)."""
    forged = "0" * 64
    body = b"".join(b"%x;chunk-signature=%s\r\n%s\r\n" % (len(c), forged.encode(), c) for c in chunks)
    return body + b"0;chunk-signature=%s\r\n\r\n" % forged.encode()


def test_streamed_uploads_with_chunk_signatures_are_refused_as_not_implemented(api, emulator, world):
    """The gate does not verify ``aws-chunked`` chunk signatures, so it refuses the signed streaming scheme as S3
    refuses what it does not implement (boto3 sends a plain SHA-256 of the body here, never this scheme)."""
    projects, tasks, places = world
    credentials = api.ok("GET", f"/htc/projects/{projects[0]}/tasks/{tasks[0]}/storage/token")["credentials"]
    key = places["task"] + "streamed.txt"

    class StreamingAuth(S3SigV4Auth):
        def payload(self, request):
            return "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"

    request = AWSRequest(
        method="PUT",
        url=f"{emulator.s3_endpoint}/{emulator.bucket}/{key}",
        data=chunked([b"forged"]),
        headers={"Content-Encoding": "aws-chunked", "x-amz-decoded-content-length": "6"},
    )
    StreamingAuth(
        Credentials(
            credentials["AWS_ACCESS_KEY_ID"], credentials["AWS_SECRET_ACCESS_KEY"], credentials["AWS_SESSION_TOKEN"]
        ),
        "s3",
        "eu-west-1",
    ).add_auth(request)
    prepared = request.prepare()
    response = requests.put(prepared.url, data=prepared.body, headers=dict(prepared.headers), timeout=30)
    assert response.status_code == 501 and b"<Code>NotImplemented</Code>" in response.content, response.text
    s3 = s3_for(emulator, {"credentials": credentials})
    assert error_code(s3.head_object, Bucket=emulator.bucket, Key=key) == "404"
    s3.put_object(Bucket=emulator.bucket, Key=key, Body=b"plain")  # boto3's own uploads still work
    assert s3.get_object(Bucket=emulator.bucket, Key=key)["Body"].read() == b"plain"


@pytest.mark.slow
def test_a_jobs_credentials_end_when_its_job_token_does(api, emulator, world, monkeypatch):
    """Credentials a job token got stop working on the S3 side as soon as the token does (its job ended and the
    afterlife passed), not when their own hour is up."""
    from htc_emulator import job_rights

    projects, _, places = world
    task_id = api.new_task(projects[0])
    parent = api.submit(projects[0], task_id, {**SLEEPER, "commands": ["python", "-c", "pass"]})  # ends at once
    api.wait_terminal(projects[0], task_id, 1)
    job_token = emulator.scheduler.tokens.job_token(
        project_id=projects[0], task_id=task_id, job_id=f"{parent}:0", lifetime=600
    )
    task_token = api.ok("GET", f"/htc/projects/{projects[0]}/tasks/{task_id}/storage/token", auth=job_token)
    task_s3, shared_s3 = (
        s3_for(emulator, task_token),
        s3_for(emulator, api.ok("GET", f"/htc/projects/{projects[0]}/storage/token", auth=job_token)),
    )
    key = prefix_of(task_token["storagePath"]) + "late.txt"
    task_s3.put_object(Bucket=emulator.bucket, Key=key, Body=b"within the afterlife")
    assert can_read(shared_s3, emulator.bucket, places["shared"] + "file.txt")
    monkeypatch.setattr(job_rights, "JOB_TOKEN_AFTERLIFE_SECONDS", 0)
    assert error_code(task_s3.put_object, Bucket=emulator.bucket, Key=key, Body=b"too late") == "ExpiredToken"
    assert error_code(shared_s3.get_object, Bucket=emulator.bucket, Key=places["shared"] + "file.txt") == (
        "ExpiredToken"
    )
    owner = s3_for(emulator, api.ok("GET", f"/htc/projects/{projects[0]}/tasks/{task_id}/storage/token"))
    assert owner.get_object(Bucket=emulator.bucket, Key=key)["Body"].read() == b"within the afterlife"


def test_deleting_a_task_ends_every_credential_its_jobs_got(api, emulator):
    project_id = api.new_project(repositories=["opencv-htc-tutorial"])
    task_id = api.new_task(project_id)
    shared = f"projects/{project_id}/shared/file.txt"
    s3_for(emulator, api.ok("GET", f"/htc/projects/{project_id}/storage/token")).put_object(
        Bucket=emulator.bucket, Key=shared, Body=b"original"
    )
    parent = api.submit(project_id, task_id, SLEEPER)
    job_token = emulator.scheduler.tokens.job_token(
        project_id=project_id, task_id=task_id, job_id=f"{parent}:0", lifetime=600
    )
    shared_s3 = s3_for(emulator, api.ok("GET", f"/htc/projects/{project_id}/storage/token", auth=job_token))
    assert can_read(shared_s3, emulator.bucket, shared)
    api.ok("DELETE", f"/htc/projects/{project_id}/tasks/{task_id}")
    assert error_code(shared_s3.get_object, Bucket=emulator.bucket, Key=shared) == "ExpiredToken"


@pytest.mark.slow
def test_deleting_a_task_waits_for_the_uploads_in_flight(client_for):
    """An upload the gate let through before the task's deletion began lands before its objects are deleted:
    nothing is left behind in a DELETED task's folder."""
    with running(faults=FaultInjector(slow_seconds=3)) as emu:
        api = client_for(emu)
        project_id = api.new_project()
        task_id = api.new_task(project_id)
        token = api.ok("GET", f"/htc/projects/{project_id}/tasks/{task_id}/storage/token")
        s3 = s3_for(emu, token)
        key = prefix_of(token["storagePath"]) + "in-flight.txt"
        emu.faults.script(["slow"], target="storage")  # the upload is held inside the gate for 3 s
        upload = threading.Thread(target=s3.put_object, kwargs={"Bucket": emu.bucket, "Key": key, "Body": b"x"})
        upload.start()
        while not emu.faults.injected[("storage", "slow")]:
            time.sleep(0.01)
        api.ok("DELETE", f"/htc/projects/{project_id}/tasks/{task_id}")
        upload.join(60)
        assert emu.storage.delete_prefix(prefix_of(token["storagePath"])) == 0
