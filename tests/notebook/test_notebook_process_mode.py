"""The whole notebook under nbval in process mode as well, where the session's own nbval run is container mode.

The session's emulator runs jobs as containers wherever a Docker engine answers (always in CI),
so the notebook it checks is the container path. Here a second pytest checks it the way a
machine without Docker runs it (``HTC_DOCKER=0``): its own session emulator, in process mode,
with the platform's profile on. It costs a second run of the notebook, one to two and a half
minutes on this project's 2-core machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
# The session's settings stay out: the second session starts an emulator of its own and sets its own.
SESSION_SETTINGS = ("RESCALE_HTC_API_URL", "RESCALE_API_KEY", "AWS_ENDPOINT_URL_S3", "RESCALE_APICONFIG")


def test_the_notebook_passes_nbval_in_process_mode(emulator):
    if emulator.scheduler.docker is None:
        pytest.skip("the session's own nbval run is in process mode already (no Docker engine, or HTC_DOCKER=0)")
    env = {name: value for name, value in os.environ.items() if name not in SESSION_SETTINGS}
    env.pop("HTC_REQUIRE_DOCKER", None)  # it would turn HTC_DOCKER=0 back into container mode
    env.pop("DOCKER_BASE_IMAGE", None)
    env["HTC_DOCKER"] = "0"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "tutorial.ipynb", "-q"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "no job ran as a container" in done.stdout  # it was process mode
