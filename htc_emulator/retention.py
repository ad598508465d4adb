"""Task retention: archive idle tasks and delete archived ones after their grace periods.

The policy of a task's project applies, else the workspace's. Hours are on
the emulator's clock: ``time_scale`` shortens them as it shortens job
timeouts (0.001 makes an hour 3.6 s). Deleting a task deletes its storage,
as ``DELETE .../tasks/{taskId}`` does.
"""

from __future__ import annotations

import datetime as dt
import threading

from .models import TERMINAL, Backend, now

SWEEP_SECONDS = 0.2


def sweep(backend: Backend, at: dt.datetime, hour: dt.timedelta) -> None:
    """Archive and delete whatever the policies say is due at ``at``."""
    to_delete = []
    with backend.lock:
        for task in list(backend.tasks.values()):
            policy = backend.policies.retention_for(task.project_id)
            if policy is None or task.lifecycle_status == "DELETED":
                continue
            if (
                task.lifecycle_status == "ACTIVE"
                and policy.archive_after
                and task.last_active_at + policy.archive_after * hour <= at
                and all(job.status in TERMINAL for job in backend.task_jobs(task.project_id, task.task_id))
            ):
                backend.update_task(task.project_id, task.task_id, "ARCHIVED")
            elif (
                task.lifecycle_status == "ARCHIVED"
                and policy.delete_after
                and task.archived_at + policy.delete_after * hour <= at
            ):
                to_delete.append(task)
    for task in to_delete:
        # Storage first, so that a task seen DELETED has none left (an archived task runs no jobs).
        backend.storage.delete_prefix(task.folder_path)
        backend.delete_task(task.project_id, task.task_id)


class RetentionSweeper:
    """A thread that runs :func:`sweep` every ``SWEEP_SECONDS``."""

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
            sweep(self._backend, now(), self._hour)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
