"""bench/containers.py: its baseline, a bare ``docker run``, makes its container as the emulator makes a job's."""

from __future__ import annotations

import sys
from pathlib import Path

import docker

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from bench import containers  # noqa: E402
from htc_emulator.docker_engine import DockerEngine  # noqa: E402


def test_the_bare_docker_run_has_the_job_containers_network_mode_and_limits():
    # A client that knows its API version asks nothing of an engine.
    engine = DockerEngine(api=docker.APIClient(base_url="unix:///nonexistent/docker.sock", version="1.41"))
    command = containers.bare_docker_run(["true"], engine)
    options = dict(zip(command[3:-2:2], command[4:-2:2], strict=True))
    job = engine.create_parameters(
        containers.IMAGE, ["true"], {}, "job", vcpus=containers.JOB["maxVCpus"], memory_mib=containers.JOB["maxMemory"]
    )["host_config"]
    assert command[:3] == ["docker", "run", "--rm"] and command[-2:] == [containers.IMAGE, "true"]
    # Host networking skips the bridge's network namespace and veth pair: a bare run without it pays for them.
    assert options["--network"] == job["NetworkMode"] == "host"
    assert options["--memory"] == options["--memory-swap"] == f"{job['Memory']}b"
    assert int(options["--cpu-shares"]) == job["CpuShares"]
