"""Task retention: a thread that applies the retention policies every ``SWEEP_SECONDS``.

The rule (archive idle tasks, delete archived ones after their grace periods)
is the model's, :meth:`htc_emulator.models.Backend.apply_retention`. Hours are
on the emulator's clock: ``time_scale`` shortens them as it shortens job
timeouts (0.001 makes an hour 3.6 s).
"""

from __future__ import annotations

import datetime as dt
import threading

from .models import Backend, now

SWEEP_SECONDS = 0.2


class RetentionSweeper:
    """A thread that runs :meth:`Backend.apply_retention` every ``SWEEP_SECONDS``."""

    def __init__(self, backend: Backend, time_scale: float = 1.0) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        self._backend = backend
        self._hour = dt.timedelta(hours=1) * time_scale
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="htc-retention", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(SWEEP_SECONDS):
            self._backend.apply_retention(now(), self._hour)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
