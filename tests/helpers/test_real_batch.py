"""The client over a real batch: the worker tags photos of the data set as jobs, the helpers follow and gather them."""

import json
import uuid

import pytest

import htc_helpers as htc
import tutorial_helpers as tutorial
from tests.helpers.support import DATA, new_project, new_task

TUTORIAL_IMAGE = "opencv-htc-tutorial:v1"


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


@pytest.mark.slow
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
    assert "SUCCEEDED" in [trace.name for trace in tutorial.plot_status_history(history).data]

    jobs = htc.get_all_jobs(session, project_id, task_id, group)
    assert sorted(j["jobUUID"] for j in jobs) == [f"{parent}:{i}" for i in range(3)]
    assert htc.status_counts(jobs)["SUCCEEDED"] == 3 and htc.failure_summary(jobs) == {}

    assert (
        htc.wait_for_job(session, project_id, task_id, f"{parent}:0", interval=0.2, timeout=10)["status"] == "SUCCEEDED"
    )
    logs = htc.get_logs(session, project_id, task_id, f"{parent}:0")
    assert "array index 0 of 3" in logs[0]["message"]
    assert logs[-1]["message"].endswith(f"manifest runs/{parent}/manifests/chunk-00000.jsonl")
    stamps = [htc._timestamp(line["timestamp"]) for line in logs]
    assert stamps == sorted(stamps)

    results = htc.collect_results(session, project_id, task_id)
    assert sorted(results["image"]) == sorted(listed)
    assert (results["source"].str.startswith(f"runs/{parent}/manifests/chunk-")).all()
    assert (results["run"] == parent).all() and set(results["index"]) == {0, 1, 2}
    assert htc.missing_results(htc.read_image_list(session, project_id), results) == ["not-uploaded.jpg"]
    assert "download of 'not-uploaded.jpg' failed" in results.set_index("image").loc["not-uploaded.jpg", "error"]

    with_faces = set(results.loc[results["faces"].fillna(0) > 0, "image"])
    assert with_faces, "the Haar cascade found no face in the crowded photos"
    dats = {
        k.removeprefix(f"runs/{parent}/").removesuffix("_tagged.dat")
        for k in htc.list_objects(session, project_id, task_id)
        if k.endswith("_tagged.dat")
    }
    assert dats == with_faces
    best = tutorial.find_max_faces(results)
    assert not best.empty and (best["faces"] == results["faces"].max()).all()
    assert set(best["image"]) <= with_faces


@pytest.mark.slow
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
