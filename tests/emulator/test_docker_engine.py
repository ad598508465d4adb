"""The Docker engine wrapper: how a job's container is made (the containers themselves: tests/containers/)."""

from __future__ import annotations

import socket

import docker

from htc_emulator.docker_engine import DockerEngine


def engine_without_engine() -> DockerEngine:
    """A wrapper whose client knows the API version, so nothing is asked of an engine."""
    return DockerEngine(api=docker.APIClient(base_url="unix:///nonexistent/docker.sock", version="1.41"))


def test_a_jobs_container_keeps_secret_values_in_the_create_request_and_runs_the_jobs_command():
    engine = engine_without_engine()
    env = {"RESCALE_HTC_BEARER_TOKEN": "secret-value", "A": "1"}
    created = engine.create_parameters("demo:v1", ["python", "/opt/x.py"], env, "job-1", vcpus=1, memory_mib=512)
    assert created["image"] == "demo:v1"
    assert created["command"] == ["python", "/opt/x.py"]
    assert created["name"] == "job-1"
    # The values travel in the create request's body to the engine's socket: no process, so no command line.
    assert created["environment"] == env
    assert created["labels"] == {
        f"htc-emulator.{engine.instance}": "",
        "htc-emulator.owner": "",
        f"htc-emulator.owner.{engine.owner}": "",
    }
    host = created["host_config"]
    assert host["NetworkMode"] == "host"
    assert host["Memory"] == host["MemorySwap"] == 512 * 1024 * 1024, "a hard limit without swap: over it is OOM"
    # AWS Batch on EC2: a vCPU is 1,024 CPU shares, a weight against other jobs, not a cap.
    assert host["CpuShares"] == 1024
    assert "NanoCpus" not in host and "CpuQuota" not in host


def test_a_container_without_commands_runs_the_images_cmd_and_vcpus_weigh_at_most_the_kernels_largest_share():
    created = engine_without_engine().create_parameters("demo:v1", [], {}, "job-2", vcpus=1000)
    assert created["command"] is None
    assert created["host_config"]["CpuShares"] == 262_144
    assert "Memory" not in created["host_config"]
    half = engine_without_engine().create_parameters("demo:v1", [], {}, "job-3", vcpus=0.5)
    assert half["host_config"]["CpuShares"] == 512


def test_without_an_engine_where_docker_host_says_none_is_available(monkeypatch):
    with socket.socket() as probe:  # a port nothing listens on: bound, never listening
        probe.bind(("127.0.0.1", 0))
        monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{probe.getsockname()[1]}")
        assert DockerEngine.available() is False
