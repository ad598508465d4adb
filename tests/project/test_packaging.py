"""The project as a package: pinned requirements, and the client importable and working from any folder.

``pyproject.toml`` names the client's dependencies (the base set) and three extras (``emulator``,
``notebook``, ``test``); the Makefile installs the project editable with the extras it needs. The
last test does what a user does in a folder of their own: a fresh virtual environment, ``pip install``
of the project's base set, then a script that reaches the session emulator through the client.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from tests.support.installed import pip_install_a_copy

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==(\S+)$")
CLIENT_MODULES = ["config", "htc_helpers", "quickstart", "tutorial_helpers"]


def pins(text: str) -> dict[str, str]:
    found = (PIN.match(line.split("#")[0].strip()) for line in text.splitlines())
    return {m.group(1).lower().replace("_", "-"): m.group(2) for m in found if m}


def test_every_requirement_is_pinned_and_agrees_with_the_constraints():
    constraints = pins((ROOT / "constraints.txt").read_text())
    project = PYPROJECT["project"]
    named = {"base": project["dependencies"], **project["optional-dependencies"]}
    assert set(named) == {"base", "emulator", "notebook", "test"}
    for where, requirements in named.items():
        unpinned = [r for r in requirements if not PIN.match(r)]
        assert not unpinned, f"{where} has unpinned packages: {unpinned}"
        for package, version in pins("\n".join(requirements)).items():
            assert constraints.get(package) == version, f"{where} pins {package}=={version}, constraints.txt differs"
    build = PYPROJECT["build-system"]["requires"]
    assert build and all(PIN.match(r) for r in build), f"the build backend is not pinned: {build}"


def test_the_client_needs_only_the_base_set():
    """What config and htc_helpers import from outside the standard library is in the base set, and nothing else."""
    base = set(pins("\n".join(PYPROJECT["project"]["dependencies"])))
    imported = set()
    for module in ("config.py", "htc_helpers.py"):
        imported |= set(re.findall(r"^(?:import|from) ([A-Za-z0-9_]+)", (ROOT / module).read_text(), re.MULTILINE))
    third_party = imported - set(sys.stdlib_module_names) - {"__future__"}
    assert third_party == {"boto3", "botocore", "pandas", "requests", "tqdm", "urllib3"}
    assert {name.replace("-", "_") for name in base} == third_party


def test_the_installed_project_imports_from_any_folder(tmp_path):
    """The Makefile's editable install: this interpreter finds the client without the project on sys.path."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    script = (
        "import " + ", ".join(CLIENT_MODULES) + "; print(" + ", ".join(f"{m}.__file__" for m in CLIENT_MODULES) + ")"
    )
    found = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert found.returncode == 0, found.stderr[-2000:]
    assert found.stdout.split() == [str(ROOT / f"{m}.py") for m in CLIENT_MODULES]


USER_SCRIPT = """
import importlib.util
from pathlib import Path

import config
import htc_helpers as htc
import quickstart

print("from", Path(htc.__file__).parent)
print("extras", [m for m in ("fastapi", "plotly", "cv2", "jupyterlab") if importlib.util.find_spec(m)])
session = htc.HtcSession(config.htc_api_url(), config.get_profile()[1])
print("regions", len(session.get("/htc/regions").json()))
project = {"projectName": "mine", "projectDescription": "from my folder"}
project_id = session.post("/htc/projects", json=project).json()["projectId"]
Path("notes.txt").write_text("my own file")
print("uploaded", htc.upload_files(session, project_id, ["notes.txt"], progress=False))
print("listed", htc.list_objects(session, project_id))
projects = len(htc.paginate(session, "/htc/projects"))
try:
    quickstart.ready_task(config.htc_api_url())
except FileNotFoundError as missing:
    print("quickstart", missing)
print("created_by_quickstart", len(htc.paginate(session, "/htc/projects")) - projects)
"""


@pytest.mark.slow
def test_pip_install_in_a_fresh_environment_outside_the_repository(emulator, tmp_path):
    """``pip install`` of the base set into a new venv, then a user's script in a folder of their own.

    The project is installed from a copy of its tracked files (no data set beside it), which is
    removed before the script runs: what the script uses must come from the installed package.
    """
    python = pip_install_a_copy(tmp_path)
    venv = python.parents[1]

    mine = tmp_path / "my-folder"
    mine.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HTC_TUTORIAL_IMAGES")}
    run = run_python(python, textwrap.dedent(USER_SCRIPT), mine, env)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in run.stdout.splitlines())
    assert Path(lines["from"]).is_relative_to(venv)
    assert lines["extras"] == "[]"  # the base set is the client's alone
    assert int(lines["regions"]) > 0
    assert lines["uploaded"] == "['notes.txt']" and lines["listed"] == "['notes.txt']"
    assert "no photos in" in lines["quickstart"] and "HTC_TUTORIAL_IMAGES" in lines["quickstart"]
    assert lines["created_by_quickstart"] == "0"

    # The README's own example, as printed there.
    (mine / "my-photos").mkdir()
    (mine / "my-photos" / "photo.jpg").write_bytes(b"\xff\xd8 not really")
    readme = run_python(python, readme_example(), mine, env)
    assert readme.returncode == 0, readme.stdout[-2000:] + readme.stderr[-3000:]
    assert readme.stdout.strip().splitlines()[-1] == "['photo.jpg']"


def readme_example() -> str:
    section = (ROOT / "README.md").read_text().split("### Using the helpers in your own code", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def run_python(python: Path, script: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
