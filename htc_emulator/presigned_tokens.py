"""Job tokens signed ahead of the attempts that need them, off the attempt's critical path.

An RS256 signature costs a millisecond or two of CPU, as much as the rest of what the emulator
does to start a no-op job; signed by a thread of its own while the job waits in the queue, it is
ready when a job slot takes the job. Only a few jobs ahead (``lookahead``), and a token older than
``FRESH_SECONDS`` when its attempt starts is signed again: the token a job gets is as if signed at
its start (its ``iat`` is in whole seconds). An attempt that starts while the signer is signing its
token waits for that signature instead of signing a second one.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

from .models import TERMINAL, Job

FRESH_SECONDS = 1.0


class PresignedTokens:
    """Signs the tokens of jobs queued for their first attempt, ``lookahead`` of them at a time."""

    def __init__(self, sign: Callable[[Job], str], lookahead: int) -> None:
        self._sign = sign
        self._lookahead = max(1, lookahead)
        self._queued: queue.Queue[Job | None] = queue.Queue()
        self._ready: dict[str, tuple[float, str, Job]] = {}  # job id -> (signed at, token, job)
        self._signing: str | None = None  # the job whose token the signer is signing now
        self._room = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="htc-token-signer", daemon=True)
        self._thread.start()

    def expect(self, job: Job) -> None:
        """The job is queued for its first attempt: sign its token when it comes near the front."""
        self._queued.put(job)

    def take(self, job: Job) -> str:
        """The job's token for the attempt starting now: the one signed ahead if it is fresh, else a new one."""
        with self._room:
            # Its token is being signed: wait for that signature rather than sign a second one.
            while self._signing == job.job_id:
                self._room.wait()
            signed = self._ready.pop(job.job_id, None)
            self._room.notify_all()
        if signed is not None and time.monotonic() - signed[0] <= FRESH_SECONDS:
            return signed[1]
        return self._sign(job)

    def close(self) -> None:
        with self._room:
            self._closed = True
            self._room.notify_all()
        self._queued.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while (job := self._queued.get()) is not None:
            with self._room:
                while not self._closed and len(self._ready) >= self._lookahead:
                    self._drop_unwanted()
                    if len(self._ready) >= self._lookahead:
                        self._room.wait(FRESH_SECONDS)
                if self._closed:
                    return
                if not waiting(job):  # a job slot took it (and signed its token) first, or it was cancelled
                    continue
                self._signing = job.job_id
            token = None
            try:
                token = self._sign(job)
            finally:
                with self._room:
                    if token is not None:
                        self._ready[job.job_id] = (time.monotonic(), token, job)
                    self._signing = None
                    self._room.notify_all()

    def _drop_unwanted(self) -> None:
        """Tokens no attempt will take: those of jobs cancelled or ended meanwhile. A job whose attempt has
        started still takes its token a moment later; a stale one stays until its job's attempt takes it (and
        signs another): the signer then waits instead of signing further and further ahead."""
        for job_id, (_, _, job) in list(self._ready.items()):
            if job.cancel_requested or job.status in TERMINAL:
                del self._ready[job_id]


def waiting(job: Job) -> bool:
    """Queued for its first attempt (read without the backend's lock: a stale answer costs one signature)."""
    return job.attempt == 0 and job.status == "RUNNABLE" and not job.cancel_requested
