"""Several batches in one task, and retries in the same task, lose nothing: each batch writes under its own name.

Through the session emulator, with the real worker: two tagging batches over the two halves of
the photos in one task, then a batch with failures followed by a retry of exactly the photos it
left missing. Before each batch had a namespace of its own, a batch's job *i* overwrote the
manifest of every other batch's job *i* in the task.
"""

import json
import uuid

import pytest

import htc_helpers as htc
import tutorial_helpers as tutorial
from face_tagger import htc_worker as hw
from tests.helpers.support import DATA, new_project, new_task

TUTORIAL_IMAGE = "opencv-htc-tutorial:v1"
JOBS = 4


@pytest.fixture(scope="module")
def photos(session, tmp_path_factory):
    """A project whose shared storage holds 16 photos, a quarter of them with faces, and lists of each half."""
    truth = json.loads((DATA / "ground_truth.json").read_text())["images"]
    with_faces = sorted(name for name in truth if truth[name]["faces"])[:4]
    without = sorted(name for name in truth if not truth[name]["faces"])[:12]
    # Photos without faces first: a job that loses its manifest loses them outright (no face-count file).
    halves = {"first-half.dat": without[:6] + with_faces[:2], "second-half.dat": without[6:] + with_faces[2:]}
    names = [name for listed in halves.values() for name in listed]
    project_id = new_project(session, repository=TUTORIAL_IMAGE.split(":")[0])
    folder = tmp_path_factory.mktemp("lists")
    for key, listed in halves.items():
        (folder / key).write_text("".join(f"{name}\n" for name in listed))
    htc.upload_files(
        session, project_id, [DATA / "images" / n for n in names] + [folder / k for k in halves], progress=False
    )
    return project_id, names, halves


def settle(session, project_id, task_id, group, jobs):
    htc.monitor_group(
        session, project_id, task_id, group, expected_jobs=jobs, interval=0.2, timeout=300, progress=False
    )


@pytest.mark.slow
def test_two_batches_in_one_task_lose_nothing(session, photos):
    """The issue's case: one request, two tagging batches over the two halves, one task, array indices alike."""
    project_id, names, halves = photos
    task_id = new_task(session, project_id)
    group = tutorial.unique_name("halves")
    batches = [tutorial.tagging_batch(TUTORIAL_IMAGE, JOBS, key) for key in halves]
    submitted = session.post(
        f"/htc/projects/{project_id}/tasks/{task_id}/jobs/batch", params={"group": group}, json=batches
    ).json()
    settle(session, project_id, task_id, group, 2 * JOBS)

    results = htc.collect_results(session, project_id, task_id)
    assert htc.missing_results(names, results) == []
    assert len(results) == len(names) and (results["status"] == "ok").all()
    # Every row names its batch (the HTC_RUN_ID tagging_batch gave it), its array index and its job.
    by_image = results.set_index("image")
    for batch, answer, listed in zip(batches, submitted, halves.values(), strict=True):
        run = {pair["name"]: pair["value"] for pair in batch["htcJobDefinition"]["envs"]}["HTC_RUN_ID"]
        rows = by_image.loc[listed]
        assert (rows["run"] == run).all()
        assert rows["job"].tolist() == [f"{answer['parentJobId']}:{i}" for i in rows["index"]]
        assert set(rows["index"]) == set(range(JOBS))
        assert rows["source"].str.startswith(f"runs/{run}/manifests/chunk-").all()
    # Outputs too are in each batch's namespace: the face counts of the photos with faces.
    stored = set(htc.list_objects(session, project_id, task_id))
    assert {key for keys in results["outputs"] for key in keys} <= stored
    assert all(key.startswith("runs/") for key in stored)


def failing_seed() -> str:
    """A SIMULATE_FAILURES_SEED under which job 0 of 4 succeeds and another raises (none hangs): 0.5 rate."""
    for n in range(1000):
        draws = [hw.simulated_failure(0.5, i, str(n)) for i in range(JOBS)]
        if draws[0] is None and "raise" in draws and "hang" not in draws:
            return str(n)
    raise AssertionError("no such seed below 1000")


@pytest.mark.slow
def test_a_retry_of_the_missing_photos_in_the_same_task_loses_nothing(session, photos, tmp_path):
    """The natural retry: collect, find what is missing, resubmit exactly that in the same task, collect again."""
    project_id, names, halves = photos
    task_id = new_task(session, project_id)
    group = tutorial.unique_name("retry")
    first = tutorial.tagging_batch(TUTORIAL_IMAGE, JOBS, "first-half.dat", simulate_failures=True)
    first["htcJobDefinition"]["envs"].append({"name": "SIMULATE_FAILURES_SEED", "value": failing_seed()})
    [failing] = htc.submit_batches(session, project_id, task_id, group, [first])
    settle(session, project_id, task_id, group, JOBS)
    assert htc.status_counts(htc.get_all_jobs(session, project_id, task_id, group))["FAILED"] >= 1

    listed = halves["first-half.dat"]
    missing = htc.missing_results(listed, htc.collect_results(session, project_id, task_id))
    assert missing and len(missing) < len(listed)
    retry_list = tmp_path / f"retry-{uuid.uuid4().hex[:8]}.dat"
    retry_list.write_text("".join(f"{name}\n" for name in missing))
    htc.upload_files(session, project_id, [retry_list], progress=False)
    # Array index 0 again, in the same task: before namespaces, it overwrote the first batch's job 0.
    [retry] = htc.submit_batches(
        session, project_id, task_id, group, [tutorial.tagging_batch(TUTORIAL_IMAGE, 1, retry_list.name)]
    )
    settle(session, project_id, task_id, group, JOBS + 1)

    results = htc.collect_results(session, project_id, task_id)
    assert htc.missing_results(listed, results) == []
    runs = results.set_index("image")["run"]
    assert (runs[missing] == retry["run"]).all()
    assert (runs[[n for n in listed if n not in missing]] == failing["run"]).all()
    assert {failing["run"], retry["run"]} == set(results["run"])
    assert [b["run"] for b in htc.group_batches(session, project_id, task_id, group)] == [
        failing["run"],
        retry["run"],
    ]
