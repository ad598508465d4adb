"""End to end: the real worker, from the real Dockerfile, as a batch on the session emulator.

Images and an image list go to project shared storage through a storage
token; a batch of three jobs runs ``python /opt/face_tagger.py``; every job
must succeed and the manifests in task storage must account for every
listed image.
"""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGE_COUNT = 7
BATCH_SIZE = 3


def sample_images() -> list[Path]:
    """Photos from the data set, which `make test` fetches first."""
    fetched = sorted((ROOT / "data" / "images").glob("*.jpg"))[:IMAGE_COUNT]
    assert len(fetched) == IMAGE_COUNT, "the data set is missing from data/images: run `make data`"
    return fetched


def s3_client(token: dict, endpoint: str):
    credentials = token["credentials"]
    return boto3.session.Session(
        aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=credentials["AWS_SESSION_TOKEN"],
    ).client("s3", endpoint_url=endpoint, region_name="eu-west-1")


@pytest.mark.slow
def test_face_tagger_batch_tags_every_listed_image(api, emulator):
    project_id = api.new_project(regions=["AWS_EU_WEST_1"], repositories=["opencv-htc-tutorial"])
    assert "opencv-htc-tutorial:v1" in api.ok("GET", f"/htc/projects/{project_id}/container-registry/images")["images"]
    task_id = api.new_task(project_id)

    shared_token = api.ok("GET", f"/htc/projects/{project_id}/storage/token/AWS_EU_WEST_1")
    bucket, _, shared = shared_token["storagePath"].removeprefix("s3://").partition("/")
    s3 = s3_client(shared_token, emulator.s3_endpoint)
    images = sample_images()
    for image in images:
        s3.upload_file(str(image), bucket, shared + image.name)
    names = [image.name for image in images]
    s3.put_object(Bucket=bucket, Key=shared + "image_list.dat", Body="\n".join(names).encode() + b"\n")

    parent = api.submit(
        project_id,
        task_id,
        {
            "imageName": "opencv-htc-tutorial:v1",
            "maxVCpus": 1,
            "maxMemory": 512,
            "commands": ["python", "/opt/face_tagger.py"],
            "envs": [
                {"name": "IMG_OBJKEY_LIST", "value": "image_list.dat"},
                {"name": "BATCH_JOB_ARRAY_SIZE", "value": str(BATCH_SIZE)},
            ],
            "execTimeoutSeconds": 3600,
        },
        batch_size=BATCH_SIZE,
        group="faces",
    )
    api.wait_terminal(project_id, task_id, BATCH_SIZE, timeout=240)

    for index in range(BATCH_SIZE):
        job = api.job(project_id, task_id, f"{parent}:{index}")
        logs = "\n".join(api.logs(project_id, task_id, f"{parent}:{index}"))
        assert job["status"] == "SUCCEEDED", f"{job['statusReason']}\n{logs}"

    task_token = api.ok("GET", f"/htc/projects/{project_id}/tasks/{task_id}/storage/token/AWS_EU_WEST_1")
    _, _, task_prefix = task_token["storagePath"].removeprefix("s3://").partition("/")
    task_s3 = s3_client(task_token, emulator.s3_endpoint)
    # Each batch writes under its own namespace: without HTC_RUN_ID, the batch part of its job ids.
    listing = task_s3.list_objects_v2(Bucket=bucket, Prefix=task_prefix + f"runs/{parent}/manifests/")
    manifests = sorted(obj["Key"] for obj in listing.get("Contents", []))
    assert len(manifests) == BATCH_SIZE
    records = []
    for key in manifests:
        body = task_s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
        records += [json.loads(line) for line in body.splitlines() if line.strip()]
    assert sorted(r["image"] for r in records) == sorted(names)
    assert all(r["status"] == "ok" for r in records), records
    assert {r["job"] for r in records} == {f"{parent}:{i}" for i in range(BATCH_SIZE)}
    assert {r["run"] for r in records} == {parent} and {r["index"] for r in records} == set(range(BATCH_SIZE))
