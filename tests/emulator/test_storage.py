"""Storage: tokens and paths per region, presigned uploads, and STS credentials that move real objects in moto's S3.

What the credentials may reach (the S3 gate's enforcement) is ``test_storage_credentials.py``.
"""

from __future__ import annotations

import os

import boto3
import pytest
import requests
from botocore.config import Config
from botocore.exceptions import ClientError

from htc_emulator.storage import Storage
from tests.support.refusals import assert_bad_request


def test_storage_tokens_and_paths(api, emulator):
    project_id = api.new_project(regions=["AWS_EU_WEST_1", "AWS_US_EAST_1"])
    task_id = api.new_task(project_id)
    shared = f"s3://{emulator.bucket}/projects/{project_id}/shared/"
    task_path = f"s3://{emulator.bucket}/projects/{project_id}/tasks/{task_id}/"
    project_token = api.ok("GET", f"/htc/projects/{project_id}/storage/token")
    assert project_token["projectSharedStoragePath"] == project_token["storagePath"] == shared
    assert project_token["region"] == "AWS_EU_WEST_1"
    assert set(project_token["credentials"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
    regional = api.ok("GET", f"/htc/projects/{project_id}/storage/token/AWS_US_EAST_1")
    assert regional["region"] == "AWS_US_EAST_1"
    task_token = api.ok("GET", f"/htc/projects/{project_id}/tasks/{task_id}/storage/token/AWS_EU_WEST_1")
    assert task_token["storagePath"] == task_path and task_token["projectSharedStoragePath"] == shared
    assert api.ok("GET", f"/htc/projects/{project_id}/tasks/{task_id}/storage/token")["storagePath"] == task_path
    tokens = api.ok("GET", f"/htc/projects/{project_id}/tasks/{task_id}/storage/tokens")
    assert tokens["defaultRegion"] == "AWS_EU_WEST_1" and len(tokens["regionStores"]) == 2
    assert len(api.ok("GET", f"/htc/projects/{project_id}/storage/tokens")["regionStores"]) == 2
    stores = api.ok("GET", f"/htc/projects/{project_id}/tasks/{task_id}/storage/regional-storage")
    assert stores["regionalStores"][0]["taskPath"] == task_path
    assert api.get(f"/htc/projects/{project_id}/storage/token/AWS_EU_WEST_2").status_code == 404
    for url in (
        f"/htc/projects/{project_id}/storage/presigned-url",
        f"/htc/projects/{project_id}/tasks/{task_id}/storage/presigned-url",
    ):
        presigned = api.ok("GET", url, params={"filePath": "dir/file.txt"})
        assert presigned["url"].startswith(emulator.s3_endpoint + "/")


@pytest.mark.parametrize("file_path", ["../escape.txt", "/etc/passwd", "a/../../b", "a/./b", "a\\b"])
def test_presigned_urls_refuse_paths_outside_their_prefix(api, place, file_path):
    project_id, task_id = place
    for path in (
        f"/htc/projects/{project_id}/storage/presigned-url",
        f"/htc/projects/{project_id}/tasks/{task_id}/storage/presigned-url",
    ):
        assert_bad_request(api.get(path, params={"filePath": file_path}), "filePath")
    assert_bad_request(api.get(f"/htc/projects/{project_id}/storage/presigned-url", request_valid=False), "filePath")


# --- real objects ------------------------------------------------------------------


def s3_for(token: dict):
    """A boto3 client built only from a storage token; the endpoint comes from AWS_ENDPOINT_URL_S3."""
    credentials = token["credentials"]
    return boto3.session.Session(
        aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=credentials["AWS_SESSION_TOKEN"],
    ).client(
        "s3",
        region_name=token["region"][4:].lower().replace("_", "-"),
        config=Config(retries={"total_max_attempts": 1}),
    )


def split(storage_path: str) -> tuple[str, str]:
    bucket, _, prefix = storage_path.removeprefix("s3://").partition("/")
    return bucket, prefix


@pytest.fixture
def layout(api):
    project_id = api.new_project()
    task_id, other_task = api.new_task(project_id), api.new_task(project_id)
    return project_id, task_id, other_task


def keys(client, bucket: str, prefix: str) -> list[str]:
    listing = client.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(obj["Key"][len(prefix) :] for obj in listing.get("Contents", []))


def test_upload_with_project_token_download_with_task_token(api, layout, emulator, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", emulator.s3_endpoint)
    project_id, task_id, _ = layout
    project_token = api.ok("GET", f"/htc/projects/{project_id}/storage/token")
    bucket, shared = split(project_token["storagePath"])
    s3_for(project_token).put_object(Bucket=bucket, Key=shared + "inputs/a.txt", Body=b"alpha")
    task_token = api.ok("GET", f"/htc/projects/{project_id}/tasks/{task_id}/storage/token/AWS_EU_WEST_1")
    task_s3 = s3_for(task_token)
    _, shared_again = split(task_token["projectSharedStoragePath"])
    assert task_s3.get_object(Bucket=bucket, Key=shared_again + "inputs/a.txt")["Body"].read() == b"alpha"
    _, task_prefix = split(task_token["storagePath"])
    task_s3.put_object(Bucket=bucket, Key=task_prefix + "out/result.json", Body=b"{}")
    assert keys(task_s3, bucket, task_prefix) == ["out/result.json"]
    assert task_token["credentials"]["AWS_ACCESS_KEY_ID"] != project_token["credentials"]["AWS_ACCESS_KEY_ID"]


def test_presigned_put_url_uploads_into_its_prefix(api, layout, emulator, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", emulator.s3_endpoint)
    project_id, task_id, _ = layout
    presigned = api.ok(
        "GET",
        f"/htc/projects/{project_id}/tasks/{task_id}/storage/presigned-url",
        params={"filePath": "uploads/data.bin"},
    )
    assert requests.put(presigned["url"], data=b"payload", timeout=30).status_code == 200
    task_s3 = s3_for(api.ok("GET", f"/htc/projects/{project_id}/tasks/{task_id}/storage/token"))
    body = task_s3.get_object(Bucket=emulator.bucket, Key=f"projects/{project_id}/tasks/{task_id}/uploads/data.bin")
    assert body["Body"].read() == b"payload"
    # The URL is for that one PUT: another method or key breaks its signature.
    assert requests.get(presigned["url"], timeout=30).status_code == 403
    assert requests.put(presigned["url"].replace("data.bin", "other.bin"), data=b"x", timeout=30).status_code == 403


def test_deleting_a_task_deletes_its_objects_only(api, layout, emulator, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", emulator.s3_endpoint)
    project_id, task_id, other_task = layout
    project_token = api.ok("GET", f"/htc/projects/{project_id}/storage/token")
    bucket, shared = split(project_token["storagePath"])
    s3 = s3_for(project_token)
    s3.put_object(Bucket=bucket, Key=shared + "keep.txt", Body=b"1")
    prefixes = {}
    for task in (task_id, other_task):
        token = api.ok("GET", f"/htc/projects/{project_id}/tasks/{task}/storage/token")
        prefixes[task] = split(token["storagePath"])[1]
        for name in ("a", "b/c"):
            s3.put_object(Bucket=bucket, Key=prefixes[task] + name, Body=b"x")
    api.ok("DELETE", f"/htc/projects/{project_id}/tasks/{task_id}")
    assert keys(s3, bucket, prefixes[task_id]) == []
    assert keys(s3, bucket, prefixes[other_task]) == ["a", "b/c"]
    assert keys(s3, bucket, shared) == ["keep.txt"]
    assert api.get(f"/htc/projects/{project_id}/tasks/{task_id}/storage/token").status_code == 404


def test_storage_tokens_expire_in_the_future(api, layout):
    import datetime as dt

    project_id, _, _ = layout
    token = api.ok("GET", f"/htc/projects/{project_id}/storage/token")
    expiration = dt.datetime.fromisoformat(token["expiration"].replace("Z", "+00:00"))
    assert dt.timedelta(minutes=50) < expiration - dt.datetime.now(dt.UTC) < dt.timedelta(minutes=70)


def test_s3_refuses_what_does_not_exist(api, layout, emulator, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", emulator.s3_endpoint)
    project_id, _, _ = layout
    token = api.ok("GET", f"/htc/projects/{project_id}/storage/token")
    bucket, shared = split(token["storagePath"])
    with pytest.raises(ClientError) as missing:
        s3_for(token).get_object(Bucket=bucket, Key=shared + "nope")
    assert missing.value.response["Error"]["Code"] == "NoSuchKey"


@pytest.mark.slow
def test_a_presigned_url_puts_its_one_key_and_nothing_else(api, layout, emulator, monkeypatch):
    """Issue 19's attack: a presigned PUT plus an unsigned ``x-amz-copy-source`` copied another project's file."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", emulator.s3_endpoint)
    project_id, task_id, _ = layout
    other_project = api.new_project()
    secret = f"projects/{other_project}/shared/secret.txt"
    s3_for(api.ok("GET", f"/htc/projects/{other_project}/storage/token")).put_object(
        Bucket=emulator.bucket, Key=secret, Body=b"secret"
    )
    url = api.ok(
        "GET", f"/htc/projects/{project_id}/tasks/{task_id}/storage/presigned-url", params={"filePath": "in.txt"}
    )["url"]
    key = f"projects/{project_id}/tasks/{task_id}/in.txt"
    owner = s3_for(api.ok("GET", f"/htc/projects/{project_id}/tasks/{task_id}/storage/token"))

    copy = requests.put(url, headers={"x-amz-copy-source": f"/{emulator.bucket}/{secret}"}, timeout=30)
    assert copy.status_code == 403 and b"<Code>AccessDenied</Code>" in copy.content, copy.text
    assert b"x-amz-copy-source" in copy.content  # named, as S3 names the headers that were not signed
    for header in ("x-amz-acl", "x-amz-meta-owner", "x-amz-tagging", "x-amz-website-redirect-location"):
        refused = requests.put(url, data=b"x", headers={header: "v"}, timeout=30)
        assert refused.status_code == 403 and header.encode() in refused.content, (header, refused.text)
    for method in ("GET", "HEAD", "DELETE", "POST"):
        assert requests.request(method, url, timeout=30).status_code == 403, method
    assert requests.put(url + "&uploads", data=b"x", timeout=30).status_code == 403
    with pytest.raises(ClientError) as missing:
        owner.head_object(Bucket=emulator.bucket, Key=key)
    assert missing.value.response["Error"]["Code"] == "404"  # nothing refused above stored anything

    assert requests.put(url, data=b"mine", timeout=30).status_code == 200
    assert owner.get_object(Bucket=emulator.bucket, Key=key)["Body"].read() == b"mine"


def test_a_presigned_url_ends_with_its_task(api, layout, emulator):
    project_id, task_id, _ = layout
    url = api.ok(
        "GET", f"/htc/projects/{project_id}/tasks/{task_id}/storage/presigned-url", params={"filePath": "late.txt"}
    )["url"]
    api.ok("DELETE", f"/htc/projects/{project_id}/tasks/{task_id}")
    late = requests.put(url, data=b"late", timeout=30)
    assert late.status_code == 403 and b"expired" in late.content, late.text
    assert emulator.storage.delete_prefix(f"projects/{project_id}/tasks/{task_id}/") == 0


def test_an_empty_file_and_a_kept_alive_connection_are_served(api, layout, emulator, monkeypatch, tmp_path):
    """botocore sends ``Expect: 100-continue`` with every PUT, an empty file's too (a job's first manifest
    can be empty), and keeps its connections open between requests."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", emulator.s3_endpoint)
    project_id, task_id, _ = layout
    token = api.ok("GET", f"/htc/projects/{project_id}/tasks/{task_id}/storage/token")
    bucket, prefix = split(token["storagePath"])
    credentials = token["credentials"]
    s3 = boto3.client(
        "s3",
        aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=credentials["AWS_SESSION_TOKEN"],
        region_name="eu-west-1",
        # A server that waits for a body that never comes fails the test here instead of hanging it.
        config=Config(retries={"total_max_attempts": 1}, read_timeout=10),
    )
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    for attempt in range(3):
        with empty.open("rb") as body:
            s3.put_object(Bucket=bucket, Key=f"{prefix}empty-{attempt}.jsonl", Body=body)
        assert s3.get_object(Bucket=bucket, Key=f"{prefix}empty-{attempt}.jsonl")["Body"].read() == b""
    assert keys(s3, bucket, prefix) == [f"empty-{attempt}.jsonl" for attempt in range(3)]


def test_stopping_writes_the_wake_up_byte_before_the_loop_can_close_the_trigger():
    """Storage's server stops by queuing a thunk that closes every socket, its wake-up pipe (the trigger)
    included, on the server's loop. The loop runs the queued thunks whenever it wakes, and a byte that an
    earlier pull left (a finished request's) can wake it right after the thunk is queued: here the loop
    gets that chance, deterministically, before the stop writes its own byte. The stop used to write to a
    pipe already closed (EBADF in ``running()``'s exit, 1 run in 5), or into a file given its number meanwhile."""
    storage = Storage()
    server, loop = storage._server._server, storage._server._thread
    trigger = server.trigger
    write_wake_up_byte = trigger._physical_pull
    closed_when_written = []

    def pull_after_the_loop_had_its_chance() -> None:
        if trigger.thunks:  # the stop's pull (a finished request's pulls queue nothing)
            if not trigger.lock.locked():  # nothing keeps the loop from running the queued thunk first
                os.write(trigger.trigger, b"x")  # an earlier pull's byte, still unread
                loop.join()  # the loop ran it: the thunk closed everything and the loop ended
            closed_when_written.append(trigger._closed)
        write_wake_up_byte()

    trigger._physical_pull = pull_after_the_loop_had_its_chance
    storage.stop()
    loop.join()  # stop() waits 10 s at most
    assert closed_when_written == [False] and trigger._closed
