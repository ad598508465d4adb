"""Deterministic augmentation (crop, horizontal flip, scale, brightness/contrast) that carries face boxes along.

Free of file IO, so the geometry can be tested on synthetic images. Operations run in
a fixed order, crop -> flip -> scale -> brightness, and boxes follow the same order.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

CROP_PROBABILITY = 0.5  # half the images stay whole, so counts without boxes survive in half the output
CROP_FRACTION = (0.6, 1.0)  # kept share of each side
SCALE = (0.6, 1.4)
# Bounds on the longest output side: never upscale past the largest real photo (1920 px), never shrink to a thumbnail.
MAX_SIDE, MIN_SIDE = 1920, 96
CONTRAST = (0.75, 1.25)
BRIGHTNESS = (-40.0, 40.0)
JPEG_QUALITY = (50, 95)
# A cropped box is kept only if its centre stays inside and at least this share of its area is visible.
MIN_VISIBLE = 0.5


@dataclass(frozen=True)
class Params:
    """One augmentation.

    `crop` is (x, y, w, h) in source pixels, None for the whole image; `size` is the output (w, h).
    """

    crop: tuple[int, int, int, int] | None
    flip: bool
    size: tuple[int, int]
    contrast: float
    brightness: float
    quality: int


def draw(rng: np.random.Generator, width: int, height: int) -> Params:
    """Random parameters for one derived image of a `width` x `height` source."""
    crop = None
    cw, ch = width, height
    if rng.random() < CROP_PROBABILITY:
        fw, fh = rng.uniform(*CROP_FRACTION, size=2)
        cw, ch = max(1, round(width * fw)), max(1, round(height * fh))
        crop = (int(rng.integers(0, width - cw + 1)), int(rng.integers(0, height - ch + 1)), cw, ch)
    flip = bool(rng.random() < 0.5)
    longest = max(cw, ch)
    scale = min(max(rng.uniform(*SCALE), MIN_SIDE / longest), max(1.0, MAX_SIDE / longest))
    size = (max(1, round(cw * scale)), max(1, round(ch * scale)))
    return Params(
        crop=crop,
        flip=flip,
        size=size,
        contrast=float(rng.uniform(*CONTRAST)),
        brightness=float(rng.uniform(*BRIGHTNESS)),
        quality=int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1)),
    )


def apply_image(image: np.ndarray, p: Params) -> np.ndarray:
    """The augmented pixels (before JPEG encoding, which the caller does with `p.quality`)."""
    if p.crop is not None:
        x, y, w, h = p.crop
        image = image[y : y + h, x : x + w]
    if p.flip:
        image = cv2.flip(image, 1)
    if (image.shape[1], image.shape[0]) != p.size:
        shrinking = p.size[0] < image.shape[1]
        image = cv2.resize(image, p.size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return cv2.convertScaleAbs(image, alpha=p.contrast, beta=p.brightness)


def _crop_box(box: list[int], crop: tuple[int, int, int, int]) -> list[int] | None:
    """The box in crop coordinates, clipped to the crop; None when it mostly leaves it."""
    x, y, w, h = box
    cx, cy, cw, ch = crop
    centre_x, centre_y = x + w / 2, y + h / 2
    if not (cx <= centre_x < cx + cw and cy <= centre_y < cy + ch):
        return None
    x0, y0 = max(x, cx), max(y, cy)
    x1, y1 = min(x + w, cx + cw), min(y + h, cy + ch)
    if (x1 - x0) * (y1 - y0) < MIN_VISIBLE * w * h:
        return None
    return [x0 - cx, y0 - cy, x1 - x0, y1 - y0]


def apply_boxes(boxes: list[list[int]], source_size: tuple[int, int], p: Params) -> list[list[int]]:
    """Move [x, y, w, h] boxes exactly as `apply_image` moves the pixels; boxes that leave the crop are dropped."""
    width, height = source_size
    if p.crop is not None:
        boxes = [b for b in (_crop_box(b, p.crop) for b in boxes) if b is not None]
        width, height = p.crop[2], p.crop[3]
    if p.flip:
        boxes = [[width - (x + w), y, w, h] for x, y, w, h in boxes]
    sx, sy = p.size[0] / width, p.size[1] / height
    moved = []
    for x, y, w, h in boxes:
        # Scale the corners rather than the size, so neighbouring boxes stay consistent after rounding.
        x0, y0 = round(x * sx), round(y * sy)
        x1, y1 = min(round((x + w) * sx), p.size[0]), min(round((y + h) * sy), p.size[1])
        if x1 > x0 and y1 > y0:
            moved.append([x0, y0, x1 - x0, y1 - y0])
    return moved


def apply_truth(
    faces: int | None, boxes: list[list[int]] | None, source_size: tuple[int, int], p: Params
) -> tuple[int | None, list[list[int]] | None]:
    """The derived image's (faces, boxes).

    Known boxes are moved and recounted. A count without boxes survives only uncropped:
    a crop may cut faces nobody has located, so the count becomes unknown (None).
    """
    if boxes is not None:
        moved = apply_boxes(boxes, source_size, p)
        return len(moved), moved
    if faces is not None and p.crop is None:
        return faces, None
    return None, None
