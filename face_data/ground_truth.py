"""The ground_truth.json format and scoring of detections against it.

File format (version 1), shared by the fetched set and the scaled-up sets:

    {"version": 1,
     "images": {"<file name>": {"source": str, "sha256": str,
                                "faces": int | null,        # expected count, null if unknown
                                "boxes": [[x, y, w, h], ...] | null}}}   # null if not labelled

A box list, when present, is complete: `faces == len(boxes)`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

VERSION = 1

Box = Sequence[float]


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in chunks so large images don't load at once."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load(path: str | os.PathLike) -> dict:
    """Read a ground_truth.json and return the whole document (`doc["images"]` maps file name to entry)."""
    doc = json.loads(Path(path).read_text())
    if doc.get("version") != VERSION or not isinstance(doc.get("images"), dict):
        raise ValueError(f"{path}: not a version {VERSION} ground-truth file")
    return doc


def save(images: Mapping[str, dict], path: str | os.PathLike) -> None:
    """Write the document atomically, one image per line in name order: identical content, identical bytes."""
    path = Path(path)
    lines = [f"  {json.dumps(name)}: {json.dumps(images[name], sort_keys=True)}" for name in sorted(images)]
    text = f'{{"version": {VERSION},\n "images": {{\n' + ",\n".join(lines) + "\n }}\n"
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    partial.replace(path)


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two [x, y, w, h] boxes; 0.0 when either is empty."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return float(inter / union) if union > 0 else 0.0


def match(detected_boxes: Iterable[Box], truth_boxes: Iterable[Box], threshold: float = 0.5) -> tuple[int, int, int]:
    """Greedy one-to-one matching, best IoU first; returns (true positives, false positives, false negatives).

    Greedy-by-IoU rather than per-detection order, so the result doesn't depend on
    the order a detector happens to list its boxes in.
    """
    detected = [tuple(map(float, d)) for d in detected_boxes]
    truth = [tuple(map(float, t)) for t in truth_boxes]
    pairs = sorted(
        ((iou(d, t), i, j) for i, d in enumerate(detected) for j, t in enumerate(truth)),
        key=lambda p: (-p[0], p[1], p[2]),
    )
    used_d, used_t = set(), set()
    for score, i, j in pairs:
        if score < threshold:
            break
        if i not in used_d and j not in used_t:
            used_d.add(i)
            used_t.add(j)
    tp = len(used_d)
    return tp, len(detected) - tp, len(truth) - tp


class Score(NamedTuple):
    """Totals over a set of images; precision/recall are 1.0 when their denominator is 0 (nothing to get wrong)."""

    images: int
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float


def precision_recall(
    detections: Mapping[str, Iterable[Box]], truth: Mapping[str, dict], threshold: float = 0.5
) -> Score:
    """Score detections ({file name: boxes}) against `truth` (a doc's "images" mapping).

    Only images with known boxes that also appear in `detections` count; `Score.images`
    says how many did, so a partial run can't pass silently as a complete one.
    """
    images = tp = fp = fn = 0
    for name, entry in truth.items():
        if entry.get("boxes") is None or name not in detections:
            continue
        t, f, n = match(detections[name], entry["boxes"], threshold)
        images, tp, fp, fn = images + 1, tp + t, fp + f, fn + n
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    return Score(images, tp, fp, fn, precision, recall)
