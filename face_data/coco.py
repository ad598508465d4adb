"""COCO val2017 (5,000 images, 778 MB), the original tutorial's data set, for those who can download it.

    python -m face_data.coco [--dest data/coco]

The archive is checked against its published SHA-256 before anything is extracted,
and a second run with the images in place downloads nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import zipfile
from pathlib import Path

import requests

URL = "https://images.cocodataset.org/zips/val2017.zip"
SHA256 = "4f7e2ccb2866ec5041993c9cf2a952bbed69647b115d0f74da7ce8f4bef82f05"
SIZE = 815_585_330
IMAGE_COUNT = 5000
CHUNK = 1 << 20


def download(url: str, dest: Path, sha256: str) -> None:
    """Stream ``url`` to ``dest`` and refuse it unless its SHA-256 matches."""
    digest = hashlib.sha256()
    with requests.get(url, stream=True, timeout=(10, 120)) as response:
        response.raise_for_status()
        with open(dest, "wb") as out:
            for block in response.iter_content(CHUNK):
                digest.update(block)
                out.write(block)
    if digest.hexdigest() != sha256:
        dest.unlink()
        raise ValueError(f"{url}: SHA-256 {digest.hexdigest()} does not match the published {sha256}")


def fetch(dest: Path) -> Path:
    """Make sure ``dest/images`` holds the 5,000 val2017 images; return that folder."""
    images = dest / "images"
    if images.is_dir() and len(list(images.glob("*.jpg"))) == IMAGE_COUNT:
        return images
    images.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        archive = Path(tmp) / "val2017.zip"
        print(f"downloading {URL} ({SIZE / 1e6:.0f} MB)", file=sys.stderr)
        download(URL, archive, SHA256)
        with zipfile.ZipFile(archive) as zf:
            for member in zf.infolist():
                if member.filename.endswith(".jpg"):
                    (images / Path(member.filename).name).write_bytes(zf.read(member))
    return images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=Path("data/coco"))
    print(fetch(parser.parse_args().dest))


if __name__ == "__main__":
    main()
