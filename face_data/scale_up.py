"""Derive N images for benchmarks.

`python -m face_data.scale_up --count 5000 [--src data] [--dest build/scaled] [--seed 0]`.


Output image i comes from real photo i mod (number of photos), in name order, augmented
with a generator seeded by (seed, i) alone, so the same arguments give byte-identical
files whatever the processing order. Each real photo is decoded once and its derived
images streamed to disk, so memory holds one photo at a time. Writes
<dest>/images/*.jpg and <dest>/ground_truth.json (same format, boxes moved along).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from face_data import augment, ground_truth


def derive(src: Path, dest: Path, count: int, seed: int = 0) -> dict:
    """Write `count` derived images and their ground truth into `dest`; returns the images mapping."""
    if dest.resolve() == src.resolve():
        # Writing into the source would delete its photos as stale and overwrite its ground truth.
        raise ValueError(f"--dest {dest} is the source data set; choose another folder")
    truth = ground_truth.load(src / "ground_truth.json")["images"]
    if not truth:
        raise ValueError(f"{src}: no images to derive from")
    names = sorted(truth)
    out_dir = dest / "images"
    out_dir.mkdir(parents=True, exist_ok=True)
    digits = max(5, len(str(count - 1)))
    derived = {}
    for k, name in enumerate(names):
        indices = range(k, count, len(names))
        if not indices:
            break
        image = cv2.imread(str(src / "images" / name), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"{src / 'images' / name}: cannot be read as an image")
        size = (image.shape[1], image.shape[0])
        entry = truth[name]
        for i in indices:
            params = augment.draw(np.random.default_rng([seed, i]), *size)
            ok, encoded = cv2.imencode(
                ".jpg", augment.apply_image(image, params), [cv2.IMWRITE_JPEG_QUALITY, params.quality]
            )
            if not ok:
                raise RuntimeError(f"JPEG encoding failed for derived image {i} of {name}")
            data = encoded.tobytes()
            out_name = f"{i:0{digits}d}_{Path(name).stem}.jpg"
            (out_dir / out_name).write_bytes(data)
            faces, boxes = augment.apply_truth(entry["faces"], entry["boxes"], size, params)
            derived[out_name] = {
                "source": f"scale_up:{name}",
                "sha256": hashlib.sha256(data).hexdigest(),
                "faces": faces,
                "boxes": boxes,
            }
    # A smaller rerun into the same directory must not leave the larger run's images behind.
    for stale in out_dir.glob("*.jpg"):
        if stale.name not in derived:
            stale.unlink()
    ground_truth.save(derived, dest / "ground_truth.json")
    return derived


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m face_data.scale_up", description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, required=True, help="number of images to derive")
    parser.add_argument("--src", type=Path, default=Path("data"), help="fetched data set (default: data)")
    parser.add_argument("--dest", type=Path, default=Path("build/scaled"), help="output (default: build/scaled)")
    parser.add_argument("--seed", type=int, default=0, help="augmentation seed (default: 0)")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    start = time.perf_counter()
    try:
        derived = derive(args.src, args.dest, args.count, args.seed)
    except ValueError as exc:
        parser.error(str(exc))
    known = sum(e["faces"] is not None for e in derived.values())
    labelled = [e for e in derived.values() if e["boxes"]]
    print(
        f"{args.dest}: {len(derived)} images in {time.perf_counter() - start:.1f} s; "
        f"{known} with a known face count, {len(labelled)} with {sum(len(e['boxes']) for e in labelled)} boxes"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
