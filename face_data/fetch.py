"""`python -m face_data.fetch [--dest data]`: real face photos into <dest>/images/ and <dest>/ground_truth.json.

Each source is handled on its own. A source whose files are all present with their
recorded sha256 is only verified, so a second run is fast and needs no network. A
missing or damaged source is downloaded into a temporary directory, which is then
removed. A source that can't be fetched gets a one-line notice on stderr and is skipped.
Exit code 1 only when there are no images at all.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from xml.etree.ElementTree import ParseError

from face_data import ground_truth
from face_data.registries import FetchError
from face_data.sources import Photo, Source, all_sources

# Everything that means "this source's archive is unavailable or not as expected", as opposed to a bug.
SOURCE_ERRORS = (FetchError, OSError, ParseError, zipfile.BadZipFile, tarfile.TarError)


def notice(message: str) -> None:
    print(f"face_data.fetch: {message}", file=sys.stderr)


def _owned(images: dict, source: Source) -> dict:
    return {name: entry for name, entry in images.items() if entry["source"].startswith(source.key)}


def _intact(images_dir: Path, name: str, entry: dict) -> bool:
    path = images_dir / name
    return path.is_file() and ground_truth.sha256_file(path) == entry["sha256"]


def _store(images_dir: Path, label: str, photos: list[Photo]) -> dict:
    """Write the photos (original bytes) and return their ground-truth entries."""
    entries = {}
    for photo in photos:
        path = images_dir / photo.name
        # Write-then-rename, so an interrupted run never leaves a truncated image under a real name.
        partial = path.with_name(path.name + ".partial")
        partial.write_bytes(photo.data)
        partial.replace(path)
        entries[photo.name] = {
            "source": label,
            "sha256": hashlib.sha256(photo.data).hexdigest(),
            "faces": photo.faces,
            "boxes": photo.boxes,
        }
    return entries


def update(dest: Path, sources: list[Source]) -> tuple[dict, dict[str, list[str]]]:
    """Verify or (re)fetch every source into `dest`; returns the images mapping and source keys by outcome."""
    images_dir = dest / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    manifest = dest / "ground_truth.json"
    images: dict = {}
    if manifest.exists():
        try:
            images = ground_truth.load(manifest)["images"]
        except (ValueError, OSError) as exc:
            notice(f"ignoring unreadable {manifest}: {exc}")
    before = dict(images)  # entries are replaced, never mutated, so a shallow copy suffices
    outcome: dict[str, list[str]] = {"verified": [], "fetched": [], "skipped": []}

    for source in sources:
        mine = _owned(images, source)
        damaged = [name for name, entry in mine.items() if not _intact(images_dir, name, entry)]
        if mine and not damaged:
            outcome["verified"].append(source.key)
            continue
        try:
            with tempfile.TemporaryDirectory(prefix="face_data_") as tmp:
                label, photos = source.fetch(Path(tmp))
        except SOURCE_ERRORS as exc:
            notice(f"skipped {source.key}: {exc}")
            outcome["skipped"].append(source.key)
            for name in damaged:  # keep the intact files of a partly damaged source, forget the rest
                notice(f"dropped {name}: missing or checksum mismatch, and {source.key} could not be re-fetched")
                del images[name]
            continue
        new_names = {photo.name for photo in photos}
        clashes = new_names & (images.keys() - mine.keys())
        if clashes:
            raise ValueError(f"{label}: file names already used by another source: {sorted(clashes)}")
        for name in mine.keys() - new_names:
            (images_dir / name).unlink(missing_ok=True)
        for name in mine:
            del images[name]
        images.update(_store(images_dir, label, photos))
        outcome["fetched"].append(label)

    if not images:
        # No manifest rather than an empty one, so `make data` tries again next time.
        manifest.unlink(missing_ok=True)
    elif images != before:
        ground_truth.save(images, manifest)
    return images, outcome


def summary(images: dict) -> str:
    """One line of totals, so a run's result is visible at a glance."""
    known = [e for e in images.values() if e["faces"] is not None]
    with_boxes = [e for e in images.values() if e["boxes"] is not None]
    labelled = [e for e in with_boxes if e["boxes"]]
    return (
        f"{len(images)} images: {len(known)} with a known face count ({sum(e['faces'] for e in known)} faces), "
        f"{len(with_boxes)} with known boxes ({len(labelled)} labelled, "
        f"{sum(len(e['boxes']) for e in labelled)} boxes; the rest negatives)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m face_data.fetch", description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=Path("data"), help="output directory (default: data)")
    args = parser.parse_args(argv)
    images, outcome = update(args.dest, all_sources())
    for state, keys in outcome.items():
        if keys:
            print(f"{state}: {', '.join(keys)}")
    if not images:
        notice("nothing could be fetched")
        return 1
    print(f"{args.dest / 'ground_truth.json'}: {summary(images)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
