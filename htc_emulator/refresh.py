"""The platform's refresh tick: a thread that applies, at each tick, what the platform does only then.

Statuses are seen as of the last tick by construction
(:meth:`htc_emulator.models.Backend.visible_time`); this thread applies the cancels
accepted since the last tick (:meth:`~htc_emulator.models.Backend.apply_pending_cancels`)
and deletes the jobs that ended longer ago than the profile keeps them
(:meth:`~htc_emulator.models.Backend.delete_ended_jobs`). Without a refresh period it
does both every :data:`SWEEP_SECONDS`.
"""

from __future__ import annotations

import threading

from .models import Backend, now

SWEEP_SECONDS = 0.2
# However fast the clock, the thread does not spin: at most a hundred rounds a second.
MIN_PAUSE_SECONDS = 0.01


class RefreshTicker:
    """Runs the backend's refresh-time work at every refresh tick, until stopped."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="htc-refresh", daemon=True)
        self._thread.start()

    @staticmethod
    def needed(backend: Backend) -> bool:
        """Whether the backend's profile has anything to apply at refresh ticks."""
        profile = backend.profile
        return profile.best_effort_cancel or profile.job_retention_seconds > 0

    def _pause(self) -> float:
        if self._backend.refresh_delay <= 0:
            return SWEEP_SECONDS
        return max(self._backend.seconds_to_next_tick(), MIN_PAUSE_SECONDS)

    def _run(self) -> None:
        while not self._stop.wait(self._pause()):
            self._backend.apply_pending_cancels()
            if self._backend.profile.job_retention_seconds:
                self._backend.delete_ended_jobs(now())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
