"""Job tokens signed ahead of their attempts (:mod:`htc_emulator.presigned_tokens`): signed while the job
waits, a few jobs ahead, taken once, and never older than :data:`FRESH_SECONDS` when the attempt starts.

A job's token as it reaches a job that waited in the queue is in ``test_job_lifecycle.py``.
"""

from __future__ import annotations

import datetime as dt
import itertools
import threading
import time

import pytest

from htc_emulator import presigned_tokens
from htc_emulator.models import Job, JobEvent
from htc_emulator.presigned_tokens import PresignedTokens


class Signer:
    """Signs a distinct token per call and keeps count of what it signed for which job."""

    def __init__(self) -> None:
        self.signed: list[str] = []
        self._numbers = itertools.count()
        self._lock = threading.Lock()

    def __call__(self, job: Job) -> str:
        with self._lock:
            self.signed.append(job.job_id)
            return f"token-{next(self._numbers)}-for-{job.job_id}"


def queued_job(index: int) -> Job:
    at = dt.datetime.now(dt.UTC)
    return Job(
        job_id=f"parent:{index}",
        parent_job_id="parent",
        index=index,
        batch_size=10,
        project_id="p",
        task_id="t",
        group=None,
        job_name=None,
        region="AWS_EU_WEST_1",
        definition={},
        tags=[],
        max_retries=0,
        claims={},
        created_at=at,
        events=[JobEvent(event_id=str(index), at=at, status="RUNNABLE")],
    )


def wait_for(predicate, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


@pytest.fixture
def signer():
    return Signer()


@pytest.fixture
def presigned(signer):
    tokens = PresignedTokens(signer, lookahead=2)
    yield tokens
    tokens.close()


def test_a_queued_jobs_token_is_signed_before_its_attempt_takes_it(presigned, signer):
    job = queued_job(0)
    presigned.expect(job)
    wait_for(lambda: signer.signed == [job.job_id])
    assert presigned.take(job) == f"token-0-for-{job.job_id}"
    assert signer.signed == [job.job_id]  # nothing signed on the attempt's path
    assert presigned.take(job) == f"token-1-for-{job.job_id}"  # taken once: another attempt signs its own


def test_tokens_are_signed_only_a_few_jobs_ahead(presigned, signer):
    jobs = [queued_job(index) for index in range(5)]
    for job in jobs:
        presigned.expect(job)
    wait_for(lambda: len(signer.signed) == 2)
    time.sleep(0.2)  # the signer waits for room: two jobs ahead, no more
    assert signer.signed == [jobs[0].job_id, jobs[1].job_id]
    presigned.take(jobs[0])
    wait_for(lambda: len(signer.signed) == 3)
    assert signer.signed[2] == jobs[2].job_id


def test_a_job_that_started_or_was_cancelled_before_the_signer_reached_it_gets_no_token_ahead(presigned, signer):
    started, cancelled, queued = queued_job(0), queued_job(1), queued_job(2)
    started.attempt = 1
    cancelled.cancel_requested = True
    for job in (started, cancelled, queued):
        presigned.expect(job)
    wait_for(lambda: signer.signed)  # in the order they were queued: the first two were passed over
    assert signer.signed == [queued.job_id]


def test_a_token_signed_too_long_before_its_attempt_is_signed_again(presigned, signer, monkeypatch):
    monkeypatch.setattr(presigned_tokens, "FRESH_SECONDS", 0.05)
    job = queued_job(0)
    presigned.expect(job)
    wait_for(lambda: len(signer.signed) == 1)
    time.sleep(0.1)
    assert presigned.take(job) == f"token-1-for-{job.job_id}" and signer.signed == [job.job_id] * 2


def test_an_attempt_that_starts_while_its_token_is_being_signed_waits_for_that_signature(signer):
    """One signature per job: an attempt that takes its token while the signer is signing it gets that
    token, where it signed a second one itself (a millisecond of CPU, on a no-op job's path)."""
    signing, release, signed = threading.Event(), threading.Event(), threading.Event()

    def slow_first_signature(job: Job) -> str:
        if signing.is_set():
            return signer(job)
        signing.set()
        release.wait(30)
        token = signer(job)
        signed.set()
        return token

    tokens = PresignedTokens(slow_first_signature, lookahead=2)
    try:
        job = queued_job(0)
        tokens.expect(job)
        assert signing.wait(30)
        job.attempt = 1  # its attempt starts (claimed by a job slot) while the signer signs its token
        taken: list[str] = []
        attempt = threading.Thread(target=lambda: taken.append(tokens.take(job)))
        attempt.start()
        time.sleep(0.1)  # the attempt asks for its token before the signature is done
        release.set()
        attempt.join(30)
        assert signed.wait(30)
        assert taken == [f"token-0-for-{job.job_id}"] and signer.signed == [job.job_id]
    finally:
        release.set()
        tokens.close()


def test_a_job_whose_attempt_started_keeps_its_token_until_the_attempt_takes_it(signer):
    """A job slot claims a job (its attempt starts) a moment before it takes the token: meanwhile the token is
    still wanted, where the signer dropped it to make room and the attempt signed a second one."""
    tokens = PresignedTokens(signer, lookahead=1)
    try:
        first, second = queued_job(0), queued_job(1)
        tokens.expect(first)
        tokens.expect(second)
        wait_for(lambda: signer.signed == [first.job_id])
        first.attempt = 1
        first.events.append(JobEvent(event_id="started", at=first.created_at, status="STARTING"))
        tokens.take(queued_job(9))  # another attempt takes its token: the signer looks for room again
        time.sleep(0.2)
        assert signer.signed == [first.job_id, "parent:9"]  # no room yet: the first job's token is still wanted
        assert tokens.take(first) == f"token-0-for-{first.job_id}"
        wait_for(lambda: signer.signed == [first.job_id, "parent:9", second.job_id])
    finally:
        tokens.close()
