"""tutorial_helpers' Docker steps: each failure ends in Docker's own reason and the way out.

Every failure here is real: the docker CLI without its buildx plugin, a login the emulator's
registry refuses, a base image that no registry serves. Docker's clients keep their state in a
private ``DOCKER_CONFIG``, so nothing here touches the user's logins or plugins.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid

import pytest

import htc_helpers as htc
import tutorial_helpers as tutorial
from tests.helpers.support import ROOT, new_project


@pytest.fixture
def docker_cli(monkeypatch, tmp_path, containers_or_skip):
    """The real docker command with a private, empty client configuration (no logins, no user plugins)."""
    if shutil.which("docker") is None:
        containers_or_skip("no docker command on PATH")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    return tmp_path


@pytest.fixture
def docker_engine(docker_cli, containers_or_skip):
    if tutorial.docker_unavailable() is not None:
        containers_or_skip(tutorial.docker_unavailable())
    return docker_cli


def test_docker_unavailable_says_why(monkeypatch, tmp_path):
    monkeypatch.setenv("HTC_DOCKER", "0")
    assert tutorial.docker_unavailable() == "HTC_DOCKER=0 is set"
    monkeypatch.delenv("HTC_DOCKER")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert tutorial.docker_unavailable() == "no docker command on PATH"


def test_a_missing_buildx_names_the_plugin_and_how_to_get_it(docker_cli):
    if subprocess.run(["docker", "buildx", "version"], capture_output=True).returncode == 0:
        pytest.skip("this machine has buildx in a system plugin folder, which no DOCKER_CONFIG hides")
    with pytest.raises(tutorial.DockerError) as err:
        tutorial.require_buildx()
    message = str(err.value)
    first, way_out = message.split("\n")
    # Docker's own words: "unknown command: docker buildx" (CLI 28) or "'buildx' is not a docker command".
    assert first.startswith("docker buildx is not installed: docker: ") and "buildx" in first[40:]
    assert "docker-buildx" in way_out and "docker manifest create" in way_out
    with pytest.raises(tutorial.DockerError, match="docker buildx is not installed"):
        tutorial.docker_buildx_push("127.0.0.1:1/never:v1")
    with pytest.raises(tutorial.DockerError, match="docker buildx is not installed"):
        tutorial.docker_publish("127.0.0.1:1/never:v1", "never:v1", "linux/amd64,linux/arm64")


def test_a_refused_docker_login_shows_dockers_reason_and_never_the_password(emulator, session, docker_engine):
    registry = emulator.scheduler.container_registry
    if registry is None:
        pytest.skip("the session emulator runs jobs as processes: it has no registry")
    project_id = new_project(session, "opencv-htc-tutorial")
    uri = session.get(f"/htc/projects/{project_id}").json()["containerRegistry"]
    host = uri.split("/")[0]
    wrong = "wrong-" + uuid.uuid4().hex
    with pytest.raises(tutorial.DockerError) as err:
        tutorial.docker_login(host, wrong)
    message = str(err.value)
    assert message.startswith(f"docker login to {host} was refused: ")
    assert "unauthorized" in message.lower() and "container-registry/token" in message
    assert wrong not in message
    token = session.get(f"/htc/projects/{project_id}/container-registry/token").text
    tutorial.docker_login(host, token)  # the project's own token logs in


def test_a_base_image_that_cannot_be_pulled_says_how_to_choose_another(docker_engine, monkeypatch):
    monkeypatch.chdir(ROOT)
    base = "127.0.0.1:1/no-such-base:v1"  # a registry where nothing listens
    with pytest.raises(tutorial.DockerError) as err:
        tutorial.docker_build(f"learner-probe-{uuid.uuid4().hex[:8]}:v1", base_image=base)
    message = str(err.value)
    assert message.startswith(f"docker build could not get the base image {base}: ")
    assert "connection refused" in message.lower()
    assert "DOCKER_BASE_IMAGE" in message and "HTC_DOCKER=0" in message
    assert "legacy builder" not in message


def test_publishing_for_this_machine_alone_pushes_the_image_built_here(emulator, session, docker_engine, worker_image):
    """No buildx needed for one platform, this machine's: the registry then lists the image READY."""
    if emulator.scheduler.container_registry is None:
        pytest.skip("the session emulator runs jobs as processes: it has no registry")
    project_id = new_project(session, "opencv-htc-tutorial")
    uri = session.get(f"/htc/projects/{project_id}").json()["containerRegistry"]
    tutorial.docker_login(uri.split("/")[0], session.get(f"/htc/projects/{project_id}/container-registry/token").text)
    tutorial.docker_publish(f"{uri}opencv-htc-tutorial:v1", worker_image, tutorial.host_platform())
    htc.wait_for_image(session, project_id, "opencv-htc-tutorial:v1")  # replicated, as on the platform
    status = session.get(f"/htc/projects/{project_id}/container-registry/images/opencv-htc-tutorial:v1").json()
    assert status["status"] == "READY"
    subprocess.run(["docker", "rmi", f"{uri}opencv-htc-tutorial:v1"], capture_output=True)


def test_a_build_prints_its_steps_as_they_start(docker_engine, monkeypatch, tmp_path, capsys):
    """A first build takes minutes: each step shows up as it starts, not all at the end."""
    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "Dockerfile").write_text("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nENV A=1\nENV B=2\n")
    monkeypatch.chdir(tmp_path)
    base = subprocess.run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"], capture_output=True, text=True)
    local = [name for name in base.stdout.split() if not name.endswith(":<none>")]
    if not local:
        pytest.skip("no local image to build on")
    image = f"learner-probe-{uuid.uuid4().hex[:8]}:v1"
    assert tutorial.docker_build(image, base_image=local[0]) == local[0]
    steps = [line for line in capsys.readouterr().out.splitlines() if "ENV" in line]
    subprocess.run(["docker", "rmi", image], capture_output=True)
    assert len(steps) == 2 and steps[0].endswith("ENV A=1")
