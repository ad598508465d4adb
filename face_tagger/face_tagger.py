"""Detect faces with OpenCV's Haar cascade, on local files or as a Rescale HTC job.

Three modes, chosen from the arguments and the environment:

* local:   ``python face_tagger.py IMAGE...`` tags files on disk;
* single:  ``HTC_INPUT_IMAGE=<key>`` tags one object from project shared storage;
* batch:   no arguments, ``IMG_OBJKEY_LIST`` names an image list in project shared
  storage and ``AWS_BATCH_JOB_ARRAY_INDEX`` / ``BATCH_JOB_ARRAY_SIZE`` pick this
  job's contiguous share of it.

In the HTC modes the worker is a program on the worker layer (``htc_worker.py``, beside
it): the results go to task storage, under ``runs/<run id>/``, the namespace of the
job's batch: ``<image>_tagged.jpg`` and ``<image>_tagged.dat`` for images with faces,
and one JSON-lines manifest per job, ``manifests/chunk-<index>.jsonl``, that accounts
for every image it was given, failures included. A retried attempt of a job skips the
images its manifest already holds as tagged.
"""

from __future__ import annotations

import argparse
import json
import math
import mmap
import os
import re
import signal
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# Images above this many pixels are refused before decoding: a small compressed file can
# declare 30,000 x 30,000 pixels and take gigabytes to decode. The worker checks JPEG and
# PNG headers itself. For the other formats OpenCV's own limit applies, which OpenCV reads
# once when it loads: it is set here, before the import, for a process that loads it here.
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000
_PIXEL_SETTING = os.environ.get("MAX_IMAGE_PIXELS", "").strip()
os.environ.setdefault(
    "OPENCV_IO_MAX_IMAGE_PIXELS",
    _PIXEL_SETTING if re.fullmatch(r"[0-9]{1,10}", _PIXEL_SETTING) else str(DEFAULT_MAX_IMAGE_PIXELS),
)

# A container's first process ignores SIGTERM without a handler: a job stopped while it loads OpenCV exits as
# SIGTERM would, not at SIGKILL after the grace period. htc_worker.main puts its own handler in place.
if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda signum, _: sys.exit(128 + signum))

import cv2  # noqa: E402

try:  # run as a script (/opt/face_tagger.py, a job): the modules beside it
    import haar_cascades  # noqa: E402
    import htc_worker as hw  # noqa: E402
except ImportError:  # imported as face_tagger.face_tagger (the tests, the benchmarks)
    from face_tagger import haar_cascades  # noqa: E402
    from face_tagger import htc_worker as hw  # noqa: E402

DEFAULT_CASCADE = haar_cascades.DEFAULT_CASCADE
DEFAULT_SCALE_FACTOR = 1.2
# Coarser than 3 misses most faces; finer than 1.01 multiplies the pyramid levels without end.
SCALE_FACTOR_RANGE = (1.01, 3.0)
MIN_NEIGHBORS = 5
MIN_SIZE = (30, 30)
MAX_OPENCV_THREADS = 256


class CascadeError(hw.UsageError):
    """The Haar cascade file is missing or is not a cascade."""


class ImageError(hw.ItemError):
    """An input image is missing, unreadable or not an image."""


def scale_factor_setting(raw: str) -> float:
    """``--scale-factor`` / ``SCALE_FACTOR``, as an argparse type: a bad value is a usage error."""
    try:
        return float(
            hw.number_setting(
                "the scale factor (--scale-factor, SCALE_FACTOR)", raw, DEFAULT_SCALE_FACTOR, *SCALE_FACTOR_RANGE
            )
        )
    except hw.UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


@dataclass
class FaceDetector:
    """A Haar cascade loaded once, with the detection parameters that go with it."""

    classifier: cv2.CascadeClassifier
    scale_factor: float = DEFAULT_SCALE_FACTOR
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS

    @classmethod
    def load(
        cls,
        cascade_path: str | None = None,
        scale_factor: float = DEFAULT_SCALE_FACTOR,
        max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    ):
        """The parsed cascade (once per process: see haar_cascades); an empty classifier fails here,
        not deep inside OpenCV."""
        path = cascade_path or haar_cascades.default_path()
        if not os.path.isfile(path):
            raise CascadeError(f"Haar cascade not found: {path}")
        try:
            classifier = haar_cascades.parsed(path)
        except (OSError, cv2.error, SystemError):
            classifier = None
        if classifier is None or classifier.empty():
            raise CascadeError(f"Haar cascade could not be loaded (empty or not a cascade XML): {path}")
        low, high = SCALE_FACTOR_RANGE
        if not (isinstance(scale_factor, (int, float)) and math.isfinite(scale_factor) and low <= scale_factor <= high):
            raise hw.UsageError(f"scaleFactor must be a number from {low} to {high}, got {scale_factor!r}")
        return cls(classifier, scale_factor, max_pixels)

    def detect(self, image) -> list[list[int]]:
        """Return face boxes as [x, y, w, h] for a BGR or greyscale image."""
        grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        faces = self.classifier.detectMultiScale(
            grey, scaleFactor=self.scale_factor, minNeighbors=MIN_NEIGHBORS, minSize=MIN_SIZE
        )
        return [[int(v) for v in box] for box in faces]


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Start-of-frame markers, which carry the image size: C0-CF except DHT (C4), JPG (C8) and DAC (CC).
JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
JPEG_START_OF_SCAN, JPEG_END_OF_IMAGE = 0xDA, b"\xff\xd9"


def check_size(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageError(
            f"image too large: {width} x {height} pixels is over the limit of {max_pixels:,} "
            "(MAX_IMAGE_PIXELS), refused without decoding"
        )


def check_png(data: bytes | mmap.mmap, max_pixels: int) -> None:
    """Size from IHDR, then every chunk's length up to IEND: a PNG cut short has no IEND."""
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind == b"IHDR" and pos + 16 <= len(data):
            check_size(*struct.unpack(">II", data[pos + 8 : pos + 16]), max_pixels)
        if kind == b"IEND":
            return
        pos += 12 + length
    raise ImageError("not a readable image (truncated: the PNG ends before its IEND chunk)")


def check_jpeg(data: bytes | mmap.mmap, max_pixels: int) -> None:
    """Size from the frame header, then an end-of-image marker after the first scan.

    libjpeg decodes a JPEG cut short as if it were whole (grey where the data stopped) and
    only warns, so OpenCV reports no error; the missing end-of-image marker shows it. Marker
    segments are skipped by their length, so a thumbnail inside EXIF cannot stand in for it.
    """
    pos, sized = 2, False
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:  # stray bytes before a marker, which libjpeg also skips
            pos += 1
            continue
        marker = data[pos + 1]
        if marker == 0xFF or 0xD0 <= marker <= 0xD7 or marker == 0x01:  # fill byte or standalone marker
            pos += 1 if marker == 0xFF else 2
            continue
        if marker == JPEG_END_OF_IMAGE[1]:
            break
        if marker in JPEG_FRAME_MARKERS and pos + 9 <= len(data):
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            check_size(width, height, max_pixels)
            sized = True
        if marker == JPEG_START_OF_SCAN and sized:
            if data.find(JPEG_END_OF_IMAGE, pos) < 0:
                raise ImageError("not a readable image (truncated: premature end of JPEG data, no end-of-image marker)")
            return
        pos += 2 + struct.unpack(">H", data[pos + 2 : pos + 4])[0]
    raise ImageError("not a readable image (truncated: the JPEG ends before its image data)")


def check_image_file(path: str | os.PathLike, max_pixels: int) -> None:
    """Refuse, before decoding, a JPEG or PNG too large for memory or cut short.

    Other formats go to OpenCV as they are; its own pixel limit covers their size. The file
    is mapped, not read, so a file of any size costs no memory here.
    """
    with open(path, "rb") as file:
        if os.fstat(file.fileno()).st_size == 0:
            return  # nothing to map; OpenCV reports it unreadable
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            if data[: len(PNG_SIGNATURE)] == PNG_SIGNATURE:
                check_png(data, max_pixels)
            elif data[:2] == b"\xff\xd8":
                check_jpeg(data, max_pixels)


def read_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS):
    """Load an image, turning OpenCV's silent ``None`` into an error that names the file.

    Images over ``max_pixels`` and truncated ones are refused (``ImageError``), not decoded.
    """
    if not os.path.isfile(path):
        raise ImageError(f"image not found: {path}")
    try:
        check_image_file(path, max_pixels)
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    except ImageError as exc:
        raise ImageError(f"{exc}: {path}") from None
    except cv2.error as exc:
        if "CV_IO_MAX_IMAGE_PIXELS" not in str(exc):
            raise
        raise ImageError(
            f"image too large: over OpenCV's pixel limit (OPENCV_IO_MAX_IMAGE_PIXELS="
            f"{os.environ.get('OPENCV_IO_MAX_IMAGE_PIXELS')}), refused without decoding: {path}"
        ) from None
    if image is None:
        raise ImageError(f"not a readable image (corrupt or unsupported format): {path}")
    return image


def write_outputs(path: Path, image, boxes: list[list[int]], out_dir: Path | None = None) -> list[Path]:
    """Write ``<image>_tagged.jpg`` with the boxes drawn and ``<image>_tagged.dat`` with the count.

    They go beside the image unless ``out_dir`` is given.
    """
    for x, y, w, h in boxes:
        cv2.rectangle(image, (x, y), (x + w, y + h), (0, 255, 0), 2)
    folder = out_dir or path.parent
    tagged_jpg = folder / f"{path.name}_tagged.jpg"
    tagged_dat = folder / f"{path.name}_tagged.dat"
    if not cv2.imwrite(str(tagged_jpg), image):
        raise ImageError(f"could not write {tagged_jpg}")
    tagged_dat.write_text(f"face_cnt\n{len(boxes)}\n")
    return [tagged_jpg, tagged_dat]


def new_record(image: str, scale_factor: float, error: str | None = None) -> dict:
    """A manifest record before detection: an error record when ``error`` is given."""
    return {
        "image": image,
        "faces": None,
        "boxes": [],
        "seconds": 0.0,
        "status": "error" if error else "ok",
        "error": error,
        "scale_factor": scale_factor,
    }


def tag_image(
    detector: FaceDetector, path: Path, name: str | None = None, out_dir: Path | None = None
) -> tuple[dict, list[Path]]:
    """Detect faces in one file; return its result record and the output files written.

    A bad image gives a record with ``status: "error"`` instead of an exception, so
    the caller can go on with the rest of its images.
    """
    start = time.perf_counter()
    record = new_record(name or str(path), detector.scale_factor)
    outputs: list[Path] = []
    try:
        image = read_image(path, detector.max_pixels)
        boxes = detector.detect(image)
        record.update(faces=len(boxes), boxes=boxes)
        if boxes:
            outputs = write_outputs(path, image, boxes, out_dir)
    except (ImageError, cv2.error) as exc:
        record.update(status="error", error=str(exc))
    record["seconds"] = round(time.perf_counter() - start, 4)
    return record, outputs


def describe(record: dict) -> str:
    """The one-line report a person reads in a terminal or in the job log."""
    if record["status"] != "ok":
        return f"{record['image']}: ERROR {record['error']}"
    return f"{record['image']}: Found {record['faces']} faces in {record['seconds']:.3f} seconds."


def run_local(detector: FaceDetector, paths: list[str], as_json: bool, out_dir: Path | None = None) -> int:
    """Tag files on disk, one line (or JSON object) per image; exit 1 if any image failed."""
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    failed = 0
    for name in paths:
        record, _ = tag_image(detector, Path(name), name, out_dir)
        failed += record["status"] != "ok"
        if as_json:
            print(json.dumps({k: record[k] for k in ("image", "faces", "boxes", "seconds", "status", "error")}))
        else:
            print(describe(record), flush=True)
    return 1 if failed else 0


def tagging(detector: FaceDetector) -> hw.Handler:
    """The face tagger as the worker layer's handler: tag a downloaded photo; its outputs are named after it."""

    def handle(key: str, local: Path) -> tuple[dict, list[tuple[Path, str]]]:
        record, written = tag_image(detector, local, key)
        return record, [(out, key + out.name[len(local.name) :]) for out in written]

    return handle


def run_htc(
    detector: FaceDetector, keys: list[str], storage: hw.HtcStorage, run: str | None, manifest_name: str, labels: dict
) -> list[dict]:
    """Tag shared-storage keys in a run's namespace, saving as it goes (``htc_worker.process_items``)."""
    defaults = {k: v for k, v in new_record("", detector.scale_factor).items() if k != "image"}
    return hw.process_items(
        storage,
        keys,
        tagging(detector),
        run=run,
        manifest_name=manifest_name,
        labels=labels,
        key_field="image",
        defaults=defaults,
        report=describe,
        noun="images",
    )


def run_batch(detector: FaceDetector) -> int:
    share = hw.job_share("IMG_OBJKEY_LIST", noun="images")
    run_htc(detector, share.items, share.storage, share.run, f"chunk-{share.index:05d}.jsonl", share.labels)
    return 0


def run_single(detector: FaceDetector, args: list[str]) -> int:
    setting = os.environ["HTC_INPUT_IMAGE"].strip()
    # The original tutorial used HTC_INPUT_IMAGE=true with the key as the argument; keep that form working.
    if setting.lower() == "true":
        if len(args) != 1:
            raise hw.UsageError("HTC_INPUT_IMAGE=true needs exactly one argument: the image's object key")
        key = args[0]
    else:
        key = setting
    try:
        hw.safe_key(key)
    except hw.ItemError as exc:
        raise hw.UsageError(f"HTC_INPUT_IMAGE: {exc}") from None
    run = hw.run_id()
    name = f"single-{key.replace('/', '_')}.jsonl"
    records = run_htc(detector, [key], hw.storage_from_env(), run, name, hw.job_labels(run, 0))
    return 0 if records[0]["status"] == "ok" else 1


def opencv_threads(setting: str | None) -> int:
    """``OPENCV_THREADS``, default 1: the ``maxVCpus: 1`` a job asks for; more only fights the other jobs."""
    return int(hw.number_setting("OPENCV_THREADS", setting, 1, 1, MAX_OPENCV_THREADS, integer=True))


def max_image_pixels(setting: str | None) -> int:
    """``MAX_IMAGE_PIXELS``: the largest image the worker decodes (OpenCV's own ceiling is 2**30)."""
    return int(hw.number_setting("MAX_IMAGE_PIXELS", setting, DEFAULT_MAX_IMAGE_PIXELS, 1, 2**30, integer=True))


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="*", help="local image files (local mode)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per image")
    parser.add_argument("--output-dir", type=Path, help="write the tagged files here instead of beside each image")
    # A string default goes through the type too, so a bad SCALE_FACTOR gets argparse's clear error.
    parser.add_argument(
        "--scale-factor",
        type=scale_factor_setting,
        default=os.environ.get("SCALE_FACTOR", str(DEFAULT_SCALE_FACTOR)),
        help="detectMultiScale scaleFactor (env SCALE_FACTOR, default %(default)s)",
    )
    parser.add_argument(
        "--cascade",
        default=os.environ.get("CASCADE_PATH"),
        help="Haar cascade XML (env CASCADE_PATH, default: OpenCV's frontal face cascade)",
    )
    return parser.parse_args(argv)


def run(argv: list[str]) -> int:
    args = parse_args(argv)
    cv2.setNumThreads(opencv_threads(os.environ.get("OPENCV_THREADS")))
    detector = FaceDetector.load(args.cascade, args.scale_factor, max_image_pixels(os.environ.get("MAX_IMAGE_PIXELS")))
    if args.images and not os.environ.get("HTC_INPUT_IMAGE"):
        return run_local(detector, args.images, args.json, args.output_dir)
    if os.environ.get("HTC_INPUT_IMAGE"):
        return run_single(detector, args.images)
    return run_batch(detector)


def main(argv: list[str] | None = None) -> int:
    return hw.main("face_tagger", lambda: run(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
