"""The session emulator (the root conftest.py) starts only when a collected test needs it.

Each check runs pytest in a fresh interpreter with a probe plugin that reports, at the end
of the session, whether the environment points at an emulator (the session emulator puts
its settings there), and which collected items ask for one. A run that starts none never
asks for a Docker engine either: the emulator is what looks for one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Each check starts pytest in a fresh interpreter (about 2 minutes here).
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK, NEEDS_IT, NEEDS_NOTHING = "tutorial.ipynb", "tests/emulator/test_regions.py", "tests/face_data/test_coco.py"
PROBE = r"""
import json, os, sys
import pytest

class Probe:
    needs, at_first_test = {}, None

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(self, session, config, items):
        root_conftest = next(p for p in config.pluginmanager.get_plugins() if hasattr(p, "needs_session_emulator"))
        self.needs.update({item.nodeid: root_conftest.needs_session_emulator(item) for item in items})

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item):
        if self.at_first_test is None:
            self.at_first_test = "RESCALE_HTC_API_URL" in os.environ

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session):
        running = "RESCALE_HTC_API_URL" in os.environ
        report = {"running": running, "at_first_test": self.at_first_test, "needs": self.needs}
        print("\nPROBE " + json.dumps(report))

code = pytest.main(sys.argv[1:], plugins=[Probe()])
sys.exit(int(code))
"""


def probe(*args: str) -> dict:
    """Run pytest with ``args`` under the probe; what it reported."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("RESCALE_", "AWS_", "PYTEST_"))}
    run = subprocess.run(
        [sys.executable, "-c", PROBE, "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        env={**env, "HTC_DOCKER": "0"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    lines = [line for line in run.stdout.splitlines() if line.startswith("PROBE ")]
    assert len(lines) == 1, run.stdout[-3000:]
    return json.loads(lines[0].removeprefix("PROBE "))


def test_collect_only_starts_no_emulator_though_the_items_need_one():
    report = probe("--collect-only", "-q", NOTEBOOK, NEEDS_IT, NEEDS_NOTHING)
    assert report["running"] is False
    needs = report["needs"]
    notebook_cells = [nodeid for nodeid in needs if nodeid.startswith(NOTEBOOK)]
    assert notebook_cells and all(needs[nodeid] for nodeid in notebook_cells)
    # test_regions.py asks for `api`, which asks for `emulator`: needed through another fixture.
    regions = [needs[nodeid] for nodeid in needs if nodeid.startswith(NEEDS_IT)]
    assert regions and all(regions)
    assert [needs[nodeid] for nodeid in needs if nodeid.startswith(NEEDS_NOTHING)] == [False, False]


def test_a_run_whose_selected_tests_need_none_starts_none():
    # The notebook and test_regions.py are collected, then deselected: only the coco tests run.
    report = probe("-q", "-k", "test_download", NOTEBOOK, NEEDS_IT, NEEDS_NOTHING)
    assert report["running"] is False
    assert len(report["needs"]) > 3


def test_a_run_with_a_test_that_needs_it_starts_it_before_the_first_test():
    # The coco tests run first and need nothing; the environment is set before them all the same, as
    # it must be for nbval, whose kernel inherits os.environ when the notebook's first cell starts it.
    report = probe("-q", NEEDS_NOTHING, NEEDS_IT)
    assert report["at_first_test"] is True
    assert report["running"] is True
