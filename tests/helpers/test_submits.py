"""Submits that can be reconciled: each batch under a run id, and after a lost answer only what did not land is sent.

The API has no idempotency key: a submit whose answer never came may have been carried out.
The emulator's "lost" fault carries a request out and drops its answer, which is the case to test.
"""

import logging
import uuid

import pytest

import htc_helpers as htc
import tutorial_helpers as tutorial
from htc_emulator import running
from tests.helpers.support import fast_session, new_project, new_task

FAILING_JOB = {"imageName": "not-in-the-registry:v1"}  # jobs that exist (and fail at once): only their count matters


@pytest.fixture(scope="module")
def faulty():
    """An emulator whose faults the tests script, with the ideal profile: it takes a batch naming an image it does not
    hold (the platform's check of the image at submit is tests/emulator/test_platform_profile.py's subject), so
    jobs exist and fail at once."""
    with running(faults={"retry_after": 1, "slow_seconds": 1.0}, profile="ideal") as emu:
        yield emu


@pytest.fixture
def faults(faulty):
    faulty.faults.clear()
    faulty.faults.injected.clear()
    yield faulty.faults
    faulty.faults.clear()


def test_with_run_id_names_each_batch_once():
    batch = {"batchSize": 2, "htcJobDefinition": {**FAILING_JOB, "envs": [{"name": "A", "value": "1"}]}}
    named = htc.with_run_id(batch)
    envs = named["htcJobDefinition"]["envs"]
    assert envs[0] == {"name": "A", "value": "1"} and envs[1]["name"] == htc.RUN_ID_ENV
    assert str(uuid.UUID(envs[1]["value"])) == envs[1]["value"]
    assert htc.with_run_id(named) == named  # a batch keeps the run id it has
    assert htc.with_run_id(named, "mine")["htcJobDefinition"]["envs"][1:] == [{"name": "HTC_RUN_ID", "value": "mine"}]
    assert batch["htcJobDefinition"]["envs"] == [{"name": "A", "value": "1"}]  # the original is left alone
    assert htc.with_run_id(batch) != htc.with_run_id(batch)


@pytest.mark.slow
def test_a_submit_whose_answer_was_lost_is_reconciled_without_duplicating_a_job(faulty, faults, caplog):
    session = fast_session(faulty, timeout=(5, 1))
    project_id = new_project(session)
    task_id = new_task(session, project_id)
    batches = [{"batchSize": 3, "htcJobDefinition": FAILING_JOB}, {"batchSize": 2, "htcJobDefinition": FAILING_JOB}]

    # The danger: the request was carried out, its answer never came, so sending it again doubles it.
    naive = tutorial.unique_name("naive")
    faults.script(["lost"], path=r"/jobs/batch$")
    with pytest.raises(htc.HtcNoAnswer, match="may have carried it out"):
        session.post(f"/htc/projects/{project_id}/tasks/{task_id}/jobs/batch", params={"group": naive}, json=batches)
    assert len(htc.get_all_jobs(session, project_id, task_id, naive)) == 5

    group = tutorial.unique_name("reconciled")
    faults.script(["lost"], path=r"/jobs/batch$")
    with caplog.at_level(logging.INFO, logger="htc_helpers"):
        submitted = htc.submit_batches(session, project_id, task_id, group, batches, settle_seconds=0.1)
    assert faults.injected[("api", "lost")] == 2
    jobs = htc.get_all_jobs(session, project_id, task_id, group)
    assert len(jobs) == 5  # once, not twice
    listed = htc.group_batches(session, project_id, task_id, group)
    assert {(b["parentJobId"], b["run"], b["jobs"]) for b in listed} == {
        (s["parentJobId"], s["run"], s["jobs"]) for s in submitted
    }
    assert [s["jobs"] for s in submitted] == [3, 2] and len({s["run"] for s in submitted}) == 2
    assert all(s["group"] == group for s in submitted)
    messages = [r.getMessage() for r in caplog.records]
    assert any("listing the group to see what landed" in m for m in messages)
    assert "2 of the 2 batches had landed; 0 to submit again" in messages


def test_a_submit_refused_before_it_was_carried_out_is_sent_again(faulty, faults):
    """A 503 to a POST is not retried by the session (it might have been carried out); the listing says it was not."""
    session = fast_session(faulty)
    project_id = new_project(session)
    task_id = new_task(session, project_id)
    group = tutorial.unique_name("refused")
    faults.script(["503"], path=r"/jobs/batch$")
    [submitted] = htc.submit_batches(
        session, project_id, task_id, group, [{"batchSize": 4, "htcJobDefinition": FAILING_JOB}], settle_seconds=0
    )
    assert faults.injected[("api", "503")] == 1
    assert [b["parentJobId"] for b in htc.group_batches(session, project_id, task_id, group)] == [
        submitted["parentJobId"]
    ]
    assert len(htc.get_all_jobs(session, project_id, task_id, group)) == 4


def test_a_submit_that_keeps_failing_raises_after_its_attempts(faulty, faults):
    session = fast_session(faulty)
    project_id = new_project(session)
    task_id = new_task(session, project_id)
    faults.script(["503", "503"], path=r"/jobs/batch$")
    with pytest.raises(htc.HtcServerError):
        htc.submit_batches(
            session, project_id, task_id, "g", [{"htcJobDefinition": FAILING_JOB}], settle_seconds=0, attempts=2
        )
    assert htc.get_all_jobs(session, project_id, task_id) == []


def test_submit_batches_refuses_what_a_request_cannot_hold(session):
    with pytest.raises(ValueError, match="1 to 100 batches, not 101"):
        htc.submit_batches(session, "p", "t", "g", [{"htcJobDefinition": FAILING_JOB}] * 101)
    twins = [htc.with_run_id({"htcJobDefinition": FAILING_JOB}, "same")] * 2
    with pytest.raises(ValueError, match="same HTC_RUN_ID"):
        htc.submit_batches(session, "p", "t", "g", twins)
