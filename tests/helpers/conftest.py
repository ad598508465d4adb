"""Fixtures of the client's tests: a session on the session emulator, and emulators with scripted faults."""

from __future__ import annotations

import pytest

import config
import htc_helpers as htc
from htc_emulator import running


@pytest.fixture(scope="module")
def session(emulator):
    # Through config.py, as the notebook does: conftest points the environment at the emulator.
    return htc.HtcSession(config.htc_api_url(), config.get_profile()[1], backoff_factor=0.05)


@pytest.fixture(scope="session")
def faulty():
    """An emulator whose faults the tests script; Retry-After: 1 s, 'slow' waits 1 s (shared by the modules here)."""
    with running(faults={"retry_after": 1, "slow_seconds": 1.0}) as emu:
        yield emu


@pytest.fixture
def faults(faulty):
    faulty.faults.clear()
    faulty.faults.injected.clear()
    yield faulty.faults
    faulty.faults.clear()


@pytest.fixture(scope="module")
def short_tokens():
    with running(token_lifetime=2) as emu:
        yield emu
