"""The worker image: its definition against the project, then (where an engine answers) the built image itself."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "docker" / "Dockerfile").read_text()


def pins(text: str) -> dict[str, str]:
    return {name.lower(): version for name, version in re.findall(r"([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s\\]+)", text)}


def test_every_docker_pin_matches_requirements():
    image_pins = pins(DOCKERFILE)
    project_pins = pins((ROOT / "constraints.txt").read_text()) | pins((ROOT / "requirements.txt").read_text())
    assert image_pins, "the Dockerfile pins nothing"
    for name in ("opencv-python-headless", "boto3", "requests", "numpy"):
        assert name in image_pins, f"{name} is not pinned in the Dockerfile"
    mismatched = {n: (v, project_pins.get(n)) for n, v in image_pins.items() if project_pins.get(n) != v}
    assert not mismatched, f"Dockerfile pins differ from requirements.txt and constraints.txt: {mismatched}"


def test_every_requirement_is_pinned_and_agrees_with_the_constraints():
    constraints = pins((ROOT / "constraints.txt").read_text())
    for name in ("requirements.txt", "requirements-dev.txt"):
        lines = [line.split("#")[0].strip() for line in (ROOT / name).read_text().splitlines()]
        packages = [line for line in lines if line and not line.startswith("-")]
        unpinned = [line for line in packages if "==" not in line]
        assert not unpinned, f"{name} has unpinned packages: {unpinned}"
        for package, version in pins("\n".join(packages)).items():
            assert constraints.get(package) == version, f"{name} pins {package}=={version}, constraints.txt differs"


def test_every_copy_source_exists():
    copies = re.findall(r"^COPY\s+(?:--\S+\s+)*(\S+)\s+(\S+)", DOCKERFILE, re.MULTILINE)
    assert ("face_tagger/face_tagger.py", "/opt/face_tagger.py") in copies
    for source, _ in copies:
        assert (ROOT / source).exists(), f"COPY source {source} does not exist"


def test_image_is_slim_by_default_runs_as_non_root_and_uses_no_plain_http_index():
    assert re.search(r"^ARG BASE_IMAGE=python:3\.12-slim$", DOCKERFILE, re.MULTILINE)
    assert re.findall(r"^FROM\s+(.+)$", DOCKERFILE, re.MULTILINE) == ["${BASE_IMAGE}"]
    users = re.findall(r"^USER\s+(\S+)", DOCKERFILE, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    assert "http://" not in DOCKERFILE and "--trusted-host" not in DOCKERFILE


# --- the built image (needs a Docker engine: skipped without one, a failure under HTC_REQUIRE_DOCKER=1) ---

def docker(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=600, **kwargs)


def test_image_runs_as_its_non_root_user(worker_image):
    result = docker("run", "--rm", worker_image, "id", "-un")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "tagger"


def test_image_has_exactly_the_pinned_packages(worker_image):
    frozen = docker("run", "--rm", worker_image, "pip", "freeze")
    assert frozen.returncode == 0, frozen.stderr
    assert pins(frozen.stdout) == pins(DOCKERFILE)


def test_build_context_holds_only_what_the_image_needs(worker_image):
    """.dockerignore: without it every build sends .venv and data/ (hundreds of MB)."""
    probe = f"FROM {worker_image}\nCOPY . /tmp/context\n"
    built = docker("build", "--quiet", "-t", "htc-context-probe", "-f", "-", str(ROOT), input=probe)
    assert built.returncode == 0, built.stderr
    try:
        listed = docker("run", "--rm", "htc-context-probe", "find", "/tmp/context", "-type", "f")
        assert sorted(listed.stdout.split()) == ["/tmp/context/face_tagger/face_tagger.py"]
    finally:
        docker("rmi", "htc-context-probe")


def test_worker_in_the_image_counts_the_same_faces_as_on_the_host(worker_image, tmp_path):
    truth = json.loads((ROOT / "data" / "ground_truth.json").read_text())["images"]
    labelled = sorted(name for name, entry in truth.items() if entry.get("boxes"))
    assert len(labelled) == 9
    images = ROOT / "data" / "images"
    host = subprocess.run([sys.executable, str(ROOT / "face_tagger" / "face_tagger.py"), "--json",
                           "--output-dir", str(tmp_path), *(str(images / n) for n in labelled)],
                          capture_output=True, text=True, timeout=600)
    inside = docker("run", "--rm", "--network", "none", "-v", f"{images}:/data:ro", worker_image,
                    "python", "/opt/face_tagger.py", "--json", "--output-dir", "/tmp",
                    *(f"/data/{n}" for n in labelled))
    assert host.returncode == 0 and inside.returncode == 0, (host.stderr, inside.stderr)

    def counts(stdout):
        return {Path(r["image"]).name: r["faces"] for r in map(json.loads, stdout.splitlines())}

    assert counts(inside.stdout) == counts(host.stdout)
    assert sum(counts(host.stdout).values()) > 0
