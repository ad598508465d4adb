"""Profile: where ``make run``'s time goes, per cell and per batch of jobs (prints; records no figure).

Runs the notebook as ``make run`` does (``run_tutorial.emulator_environment``: container mode where
a Docker engine answers, ``HTC_DOCKER=0`` for process mode), then prints the slowest cells and,
for each batch (task and group), its jobs' time in each phase from the emulator's own events:
queued (SUBMITTED to RUNNABLE, waiting for a slot and for a cold instance), starting (STARTING:
the image's pull and the container's create and start) and running (RUNNING to the end). The
phases are summed over the batch's jobs, so divide by the job slots for wall time. It is a
profile of the platform profile's run, not a benchmark: shares count, not seconds.

Usage: .venv/bin/python bench/notebook_phases.py   (or HTC_DOCKER=0 .venv/bin/python bench/notebook_phases.py)
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import run_tutorial  # noqa: E402

SLOWEST_CELLS = 10


def cell_seconds(notebook) -> list[tuple[float, int, str]]:
    """(seconds, index, first line) of every code cell, slowest first."""
    rows = []
    for index, cell in enumerate(notebook.cells):
        timing = cell.metadata.get("execution", {})
        began, ended = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
        if cell.cell_type == "code" and began and ended:
            seconds = (dt.datetime.fromisoformat(ended) - dt.datetime.fromisoformat(began)).total_seconds()
            rows.append((seconds, index, cell.source.splitlines()[0][:70] if cell.source else ""))
    return sorted(rows, reverse=True)


def batch_phases(emulator) -> list[tuple[str, int, float, float, float, float]]:
    """(task/group, jobs, span, queued, starting, running) of every batch, in the order they started."""
    batches = defaultdict(list)
    for job in list(emulator.backend.jobs.values()):
        batches[f"{emulator.backend.tasks[job.task_id].name}/{job.group or ''}"].append(job)
    rows = []
    for name, jobs in batches.items():
        phases = {"queued": 0.0, "STARTING": 0.0, "RUNNING": 0.0}
        for job in jobs:
            for event, following in zip(job.events, job.events[1:], strict=False):
                phase = event.status if event.status in phases else "queued"
                phases[phase] += (following.at - event.at).total_seconds()
        first = min(job.events[0].at for job in jobs)
        span = (max(job.events[-1].at for job in jobs) - first).total_seconds()
        rows.append((first, name, len(jobs), span, phases["queued"], phases["STARTING"], phases["RUNNING"]))
    return [row[1:] for row in sorted(rows)]


def main() -> None:
    notebook, _ = run_tutorial.parameterised("default")
    with run_tutorial.emulator_environment() as emulator:
        os.environ["PLOTLY_RENDERER"] = "plotly_mimetype+notebook"
        start = time.perf_counter()
        run_tutorial.execute(notebook, record_timing=True)
        seconds = time.perf_counter() - start
        mode = "container" if emulator.scheduler.docker is not None else "process"
        print(f"notebook {seconds:.1f} s in {mode} mode, {emulator.scheduler.concurrency} job slots")
        print(f"{'batch (task/group)':60s} {'jobs':>4s} {'span':>6s} {'queued':>7s} {'starting':>8s} {'running':>7s}")
        for name, jobs, span, queued, starting, running in batch_phases(emulator):
            print(f"{name[:60]:60s} {jobs:4d} {span:6.1f} {queued:7.1f} {starting:8.1f} {running:7.1f}")
    for seconds, index, line in cell_seconds(notebook)[:SLOWEST_CELLS]:
        print(f"{seconds:7.2f} s  cell {index:3d}  {line}")


if __name__ == "__main__":
    main()
