"""Fixtures of the emulator's tests: places in the session emulator to work in, and a no-op image."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def place(api):
    """A project and a task of the session emulator, shared by one test module."""
    project_id = api.new_project()
    return project_id, api.new_task(project_id)


@pytest.fixture(scope="module")
def runnable_place(api):
    """A project with the tutorial image's repository, the image READY, and a task: jobs submitted there run."""
    project_id = api.new_project(repositories=["opencv-htc-tutorial"])
    api.wait_image_ready(project_id, "opencv-htc-tutorial:v1")
    return project_id, api.new_task(project_id)


@pytest.fixture(scope="module")
def noop_image(emulator, tmp_path_factory):
    """``noop:v1`` registered in the session emulator (jobs need the ``noop`` repository in their project)."""
    dockerfile = tmp_path_factory.mktemp("noop") / "Dockerfile"
    dockerfile.write_text('FROM python:3.12-slim\nCMD ["python", "-c", "pass"]\n')
    emulator.register_image("noop:v1", dockerfile)
    return "noop:v1"
