"""The project needs nothing outside its own folder: a stranger's fresh clone has nothing beside it.

Our own machines keep reference material in a folder beside the checkout; a user's do not.
These tests make sure nothing in the project depends on it, by reading the
tracked files and by running the project's entry points from a copy of the
repository placed in a folder of its own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Spelled in parts, so that this file does not name the folder it looks for.
OUTSIDE_REFERENCES = tuple(prefix + "shared" for prefix in ("../", "/work/"))


def tracked_files() -> list[Path]:
    """The repository's files as a clone has them (what ``git ls-files`` lists)."""
    listing = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [ROOT / name for name in listing.decode().split("\0") if name and (ROOT / name).is_file()]


def test_no_tracked_file_points_outside_the_repository():
    offenders = []
    for path in tracked_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        offenders += [f"{path.relative_to(ROOT)}: {ref}" for ref in OUTSIDE_REFERENCES if ref in text]
    assert not offenders, f"files that point outside the repository: {offenders}"


def run_in(copy: Path, *command: str, timeout: float) -> subprocess.CompletedProcess:
    # The copy uses this interpreter (the project's .venv) but none of the original folder's files.
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("RESCALE_", "AWS_", "HTC_", "PYTEST_"))
    }
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return subprocess.run(
        [sys.executable, *command], cwd=copy, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
def test_a_copy_with_nothing_beside_it_runs(tmp_path):
    """Spec loading, the emulator the suite and ``make run`` start, and the contract tests' fixtures."""
    copy = tmp_path / "alone" / "project"
    for path in tracked_files():
        target = copy / path.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    assert sorted(p.name for p in copy.parent.iterdir()) == ["project"]

    started = run_in(
        copy,
        "-c",
        """
import requests
from tests.support.spec import ContractValidator, load_spec
from run_tutorial import emulator_environment
spec = load_spec()
with emulator_environment() as emu:
    ContractValidator(emu.api_url, spec)
    token = requests.get(emu.root_url + "/auth/token", headers={"Authorization": f"Token {emu.api_key}"},
                         timeout=30).json()["tokenValue"]
    regions = requests.get(emu.api_url + "/htc/regions", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    regions.raise_for_status()
print(len(spec["paths"]), "paths;", len(regions.json()), "regions")
""",
        timeout=300,
    )
    assert started.returncode == 0, started.stderr[-3000:]
    assert started.stdout.strip().endswith("regions"), started.stdout

    contract = run_in(
        copy,
        "-m",
        "pytest",
        "-q",
        "-x",
        "-p",
        "no:cacheprovider",
        "tests/emulator/test_projects.py::test_project_create_get_list",
        "tests/emulator/test_storage.py::test_storage_tokens_and_paths",
        timeout=600,
    )
    assert contract.returncode == 0, contract.stdout[-3000:] + contract.stderr[-3000:]
    assert "2 passed" in contract.stdout, contract.stdout[-1000:]
