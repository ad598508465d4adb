"""One HTC emulator for the whole test session, notebook included, started only when a collected test needs it.

nbval's cells are not pytest functions, so fixtures never run for them: when the
collected items include a notebook cell, or a test that uses the ``emulator`` fixture
(directly or through other fixtures), the emulator starts once collection is done,
before any test runs, and its settings go into ``os.environ``, which the notebook's
kernel inherits when nbval starts it. A run that needs none of it (``--collect-only``,
the worker's or the data's tests alone) starts nothing and never asks for a Docker
engine. This file sits at the project root so that ``pytest tutorial.ipynb`` alone
gets the emulator too. It is the emulator ``make run`` uses, with the same settings
(``run_tutorial.emulator_environment``). Tests reach it through the ``emulator``
fixture; tests that need other settings (short tokens, faults, time scale) start
their own with ``htc_emulator.running(...)``.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict

import pytest

from htc_emulator import Emulator, ExchangeRecorder
from htc_emulator.platform_profile import PLATFORM
from run_tutorial import emulator_environment

_session: dict = {}
# The platform's profile, with one exception: the session's tests share this emulator and run the worker on
# the registered image, so with a Docker engine its registry holds that image too (without an engine, where
# registered images stand for pushed ones, this changes nothing). The notebook pushes its own image, and
# tests/containers/test_container_audit.py checks that its batch ran from that push.
SESSION_PROFILE = dataclasses.replace(PLATFORM, registry_holds_pushed_images_only=False)
# The run's summary repeats what the notebook's cells with this tag printed: the container path's evidence.
SUMMARY_TAG = "test-summary"


def needs_session_emulator(item: pytest.Item) -> bool:
    """A notebook cell (its kernel reads the emulator's settings from the environment), or a test using ``emulator``."""
    return item.path.suffix == ".ipynb" or "emulator" in getattr(item, "fixturenames", ())


def start_session_emulator() -> Emulator:
    """Start the session emulator once, and put its settings into ``os.environ``."""
    if "emulator" not in _session:
        # Every exchange is kept for tests/emulator/test_contract_audit.py, which checks them all against the spec.
        context = emulator_environment(recorder=ExchangeRecorder(), profile=SESSION_PROFILE)
        _session.update(emulator=context.__enter__(), context=context)
    return _session["emulator"]


def pytest_collection_finish(session: pytest.Session) -> None:
    # Before the first test, not at its first use: a test's own emulator_environment restores os.environ as it
    # found it, so the session's settings set inside one would be gone for every later test and the notebook.
    if not session.config.option.collectonly and any(needs_session_emulator(item) for item in session.items):
        start_session_emulator()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list) -> None:
    """Run the session audit after everything else, the notebook included; the notebook's cells are ``slow``."""
    for item in items:
        if item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: item.get_closest_marker("session_audit") is not None)


def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> None:
    """Keep what the notebook's tagged cells printed (nbval keeps a cell's outputs in ``test_outputs``)."""
    cell = getattr(item, "cell", None)
    if call.when == "call" and cell is not None and SUMMARY_TAG in cell.get("metadata", {}).get("tags", []):
        text = "".join(
            out.get("text", "")
            for out in getattr(item, "test_outputs", None) or []
            if out.get("output_type") == "stream"
        )
        _session.setdefault("notebook_lines", []).extend(line for line in text.splitlines() if line.strip())


def container_jobs_by_task(emulator) -> list[str]:
    """One line per task whose jobs ran as containers: how many, how they ended, from which image."""
    scheduler, backend = emulator.scheduler, emulator.backend
    statuses: dict[str, Counter] = defaultdict(Counter)
    references: dict[str, set] = defaultdict(set)
    for job_id, reference in list(scheduler.container_jobs.items()):
        job = backend.jobs.get(job_id)
        if job is None:  # deleted after its retention period
            continue
        statuses[job.task_id][job.status] += 1
        references[job.task_id].add(reference)
    return [
        f"task {backend.tasks[task_id].name!r}: {sum(counts.values())} jobs as containers "
        f"({', '.join(f'{n} {status}' for status, n in sorted(counts.items()))}) "
        f"from {', '.join(sorted(references[task_id]))}"
        for task_id, counts in statuses.items()
    ]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if "context" in _session:
        _session["container_lines"] = container_jobs_by_task(_session["emulator"])
        _session.pop("context").__exit__(None, None, None)


def pytest_terminal_summary(terminalreporter) -> None:
    """The container half of the tutorial as this run did it: the notebook's build, push and batch,
    and every job the session emulator ran as a container."""
    notebook, containers = _session.get("notebook_lines", []), _session.get("container_lines", [])
    if not (notebook or containers):
        return
    terminalreporter.section("the tutorial's container path")
    for line in notebook:
        terminalreporter.write_line(f"notebook: {line}")
    for line in containers or ["no job ran as a container (no Docker engine answered, or HTC_DOCKER=0)"]:
        terminalreporter.write_line(f"session emulator: {line}")


@pytest.fixture(scope="session")
def emulator():
    """The session's running emulator (the one the environment points at)."""
    return start_session_emulator()
