"""Storage: tokens, paths, transfers both ways, renewal of credentials, faults, and the key rule at work."""

import time
from pathlib import Path

import pandas as pd
import pytest

import config
import htc_helpers as htc
from tests.helpers.support import fast_session, new_project, new_task, record_responses, rewrite_json


def make_tree(root: Path) -> dict[str, bytes]:
    files = {"image_list.dat": b"a.jpg\nsub/b.jpg\n", "a.jpg": b"\xff\xd8a", "sub/b.jpg": b"\xff\xd8b"}
    for key, data in files.items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(data)
    return files


@pytest.mark.slow
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


def without_storage_path(token):
    # The spec's StorageAccessToken has no storagePath; the emulator adds it as the original tutorial read it.
    token.pop("storagePath")


@pytest.mark.slow
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


@pytest.mark.slow
def test_storage_transfers_survive_injected_s3_errors(faulty, faults, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", faulty.s3_endpoint)  # this emulator's S3, not the session's
    session = fast_session(faulty)
    project_id = new_project(session)
    files = make_tree(tmp_path / "src")
    faults.script(["503", "500"], target="storage")
    assert sorted(htc.upload_files(session, project_id, tmp_path / "src", workers=1, progress=False)) == sorted(files)
    assert faults.injected[("storage", "503")] == 1 and faults.injected[("storage", "500")] == 1
    assert sorted(htc.list_objects(session, project_id)) == sorted(files)


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


# --- deleting


@pytest.mark.slow
def test_delete_objects_removes_only_the_named_keys(emulator, tmp_path):
    session = htc.HtcSession(config.htc_api_url(), config.get_profile()[1])
    project_id = session.post(
        "/htc/projects", json={"projectName": "delete-objects", "projectDescription": "clean-up helper"}
    ).json()["projectId"]
    for name in ("keep.txt", "drop-1.txt", "drop-2.txt"):
        (tmp_path / name).write_text(name)
    htc.upload_files(session, project_id, tmp_path, progress=False)
    assert htc.delete_objects(session, project_id, ["drop-1.txt", "drop-2.txt"]) == 2
    assert htc.list_objects(session, project_id) == ["keep.txt"]


def test_delete_objects_refuses_a_key_outside_the_storage_path(emulator):
    session = htc.HtcSession(config.htc_api_url(), config.get_profile()[1])
    with pytest.raises(ValueError, match="refusing object key"):
        htc.delete_objects(session, "any-project", ["../elsewhere.txt"])


def test_image_lists_keep_names_with_unicode_line_breaks(session, tmp_path):
    """read_image_list ends lines at \\n only, as the worker does (issue 19, item 9)."""
    project_id = new_project(session)
    names = ["line\u2028separator.jpg", "group\x1cseparator.jpg", "next\x85line.jpg"]
    (tmp_path / "image_list.dat").write_text("".join(f"{name}\r\n" for name in names))
    htc.upload_files(session, project_id, [tmp_path / "image_list.dat"], progress=False)
    assert htc.read_image_list(session, project_id) == names
