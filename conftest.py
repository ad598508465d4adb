"""One HTC emulator for the whole test session, notebook included.

nbval's cells are not pytest functions, so fixtures never run for them:
the emulator starts in ``pytest_sessionstart`` and its settings go into
``os.environ``, which the notebook's kernel inherits when nbval starts it.
This file sits at the project root so that ``pytest tutorial.ipynb`` alone
gets the emulator too. It is the emulator ``make run`` uses, with the same
settings (``run_tutorial.emulator_environment``). Tests reach it through the
``emulator`` fixture; tests that need other settings (short tokens, faults,
time scale) start their own with ``htc_emulator.running(...)``.
"""

from __future__ import annotations

import pytest

from htc_emulator import ExchangeRecorder
from run_tutorial import emulator_environment

_session: dict = {}


def pytest_sessionstart(session: pytest.Session) -> None:
    # Every exchange is kept for tests/test_contract_audit.py, which checks them all against the spec.
    context = emulator_environment(recorder=ExchangeRecorder())
    _session.update(emulator=context.__enter__(), context=context)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list) -> None:
    """Run the session audit after everything else, the notebook included."""
    items.sort(key=lambda item: item.get_closest_marker("session_audit") is not None)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if "context" in _session:
        _session.pop("context").__exit__(None, None, None)


@pytest.fixture(scope="session")
def emulator():
    """The session's running emulator (the one the environment points at)."""
    return _session["emulator"]
