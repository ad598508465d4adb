"""The Docker engine wrapper: how a job's container is started (the containers themselves: tests/containers/)."""

from __future__ import annotations

from htc_emulator.docker_engine import DockerEngine


def test_docker_run_keeps_secret_values_out_of_the_arguments():
    argv = DockerEngine().run_argv(
        "demo:v1", ["python", "/opt/x.py"], ["RESCALE_HTC_BEARER_TOKEN", "A"], "job-1", vcpus=1, memory_mib=512
    )
    assert argv[argv.index("demo:v1") :] == ["demo:v1", "python", "/opt/x.py"]
    assert ["-e", "RESCALE_HTC_BEARER_TOKEN"] == argv[argv.index("RESCALE_HTC_BEARER_TOKEN") - 1 :][:2]
    assert not any("=" in arg for arg in argv)
