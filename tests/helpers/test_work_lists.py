"""Work lists: any number of items over batches of at most 1,000 jobs, run to completion by resubmitting the missing.

The jobs run the worker layer's command worker without a command (each item only accounted
for) on the session emulator, in process mode, with simulated failures: what is tested is the
path (split, submit, monitor, collect, resubmit), not the work.
"""

import json
import logging
from urllib.parse import urlsplit

import pytest

import htc_helpers as htc
import tutorial_helpers as tutorial
from tests.helpers.support import new_project, new_task, record_responses

DRY_RUN = {
    "imageName": "opencv-htc-tutorial:v1",
    "maxVCpus": 1,
    "maxMemory": 128,
    "execTimeoutSeconds": 600,
    "commands": ["python", "/opt/command_worker.py"],
}
# Jobs that exist and fail at once; the image READY, since the platform refuses any other.
NEVER_RUNS = {"imageName": "opencv-htc-tutorial:v1", "commands": ["false"]}


@pytest.fixture(scope="module")
def project(session):
    return new_project(session, repository="opencv-htc-tutorial")


@pytest.mark.slow
def test_more_than_1000_jobs_over_one_list_run_to_completion_with_failures(session, project, caplog, tmp_path):
    task_id = new_task(session, project)
    group = tutorial.unique_name("work-list")
    items = [f"item-{n:05d}" for n in range(2200)]
    job = {
        **DRY_RUN,
        "envs": [{"name": "SIMULATE_FAILURES", "value": "0.1"}, {"name": "SIMULATE_HANG_SECONDS", "value": "0"}],
    }

    submitted = htc.submit_work_list(session, project, task_id, group, items, job, items_per_job=2)
    assert [(b["jobs"], b["items"]) for b in submitted] == [(1000, 2000), (100, 200)]
    assert [len(htc.read_image_list(session, project, b["list"])) for b in submitted] == [2000, 200]
    assert htc.read_image_list(session, project, submitted[1]["list"])[0] == "item-02000"

    with caplog.at_level(logging.INFO, logger="htc_helpers"):
        results = htc.complete_work_list(
            session,
            project,
            task_id,
            group,
            items,
            job,
            items_per_job=2,
            max_rounds=8,
            interval=0.5,
            timeout=900,
            progress=False,
        )
    assert htc.missing_results(items, results) == []
    assert results["item"].tolist() == items and (results["status"] == "ok").all()

    batches = htc.group_batches(session, project, task_id, group)
    jobs = htc.get_all_jobs(session, project, task_id, group)
    failed = htc.status_counts(jobs)["FAILED"]
    assert failed > 0 and len(batches) > 2  # some jobs failed, and their items went out again
    assert sum(b["jobs"] for b in batches) == len(jobs) > 1000
    assert set(results["run"]) <= {b["run"] for b in batches}
    assert any("items missing; submitting exactly those again" in r.getMessage() for r in caplog.records)

    # Every item accounted for once: across all the group's manifests, each appears in exactly one record.
    manifests = [k for b in batches for k in htc.list_objects(session, project, task_id, prefix=f"runs/{b['run']}/")]
    local = htc.download_files(session, project, manifests, tmp_path, task_id, progress=False)
    recorded = [json.loads(line)["item"] for path in local for line in path.read_text().splitlines()]
    assert sorted(recorded) == items


def test_a_work_list_goes_out_at_most_100_batches_a_request(session, project):
    task_id = new_task(session, project)
    group = tutorial.unique_name("many-batches")
    seen = record_responses(session)
    submitted = htc.submit_work_list(
        session, project, task_id, group, [f"i{n}" for n in range(150)], NEVER_RUNS, jobs_per_batch=1
    )
    posts = [r for r in seen if r.request.method == "POST" and urlsplit(r.url).path.endswith("/jobs/batch")]
    assert [len(json.loads(r.request.body)) for r in posts] == [100, 50]
    assert len(submitted) == 150 and len({b["run"] for b in submitted}) == 150
    assert len(htc.group_batches(session, project, task_id, group)) == 150


def test_a_work_list_takes_each_item_once_and_refuses_what_a_list_cannot_hold(session, project):
    task_id = new_task(session, project)
    [batch] = htc.submit_work_list(session, project, task_id, "dedup", ["a", "b", "a", "c"], NEVER_RUNS)
    assert htc.read_image_list(session, project, batch["list"]) == ["a", "b", "c"] and batch["jobs"] == 3
    definition = htc.get_all_jobs(session, project, task_id, view_type="FULL")[0]
    envs = {pair["name"]: pair["value"] for pair in definition["envs"]}
    assert envs == {"ITEM_LIST": batch["list"], "BATCH_JOB_ARRAY_SIZE": "3", "HTC_RUN_ID": batch["run"]}
    for bad in (["ok", "two\nlines"], ["ok", " padded"], ["ok", ""]):
        with pytest.raises(ValueError, match="a work list item must be"):
            htc.submit_work_list(session, project, task_id, "refused", bad, NEVER_RUNS)
    assert htc.group_batches(session, project, task_id, "refused") == []
