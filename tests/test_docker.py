"""No Docker engine runs here, so check the image definition against the project instead."""

import re
from pathlib import Path

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


def test_image_is_slim_runs_as_non_root_and_uses_no_plain_http_index():
    assert re.search(r"^FROM python:3\.12-slim\b", DOCKERFILE, re.MULTILINE)
    users = re.findall(r"^USER\s+(\S+)", DOCKERFILE, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    assert "http://" not in DOCKERFILE and "--trusted-host" not in DOCKERFILE
