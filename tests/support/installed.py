"""The project as a user installs it: ``pip install`` into a fresh virtual environment, from a copy.

The copy holds the repository's tracked files only (no data set, no ``.venv``) and is removed once
installed, so whatever runs afterwards comes from the installed package, not from a checkout.
Used by the packaging test (the client's base set) and the section test (the notebook extra).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def pip_install_a_copy(place: Path, extras: str = "") -> Path:
    """Install the project (``extras`` such as ``"notebook"``) into ``place/venv``; its Python."""
    assert ROOT not in place.parents, f"{place} is inside the repository"
    source = place / "source"
    listing = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, listing.decode().split("\0")):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    venv = place / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        + ["-c", str(source / "constraints.txt"), f"{source}[{extras}]" if extras else str(source)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-3000:]
    shutil.rmtree(source)
    return python
