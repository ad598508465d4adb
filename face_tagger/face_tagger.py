"""Detect faces with OpenCV's Haar cascade, on local files or as a Rescale HTC job.

Three modes, chosen from the arguments and the environment:

* local:   ``python face_tagger.py IMAGE...`` tags files on disk;
* single:  ``HTC_INPUT_IMAGE=<key>`` tags one object from project shared storage;
* batch:   no arguments, ``IMG_OBJKEY_LIST`` names an image list in project shared
  storage and ``AWS_BATCH_JOB_ARRAY_INDEX`` / ``BATCH_JOB_ARRAY_SIZE`` pick this
  job's contiguous share of it.

In the HTC modes the results go to task storage: ``<image>_tagged.jpg`` and
``<image>_tagged.dat`` for images with faces, and one JSON-lines manifest per job
that accounts for every image it was given, failures included.
"""

from __future__ import annotations

import argparse
import json
import math
import mmap
import os
import random
import re
import shutil
import signal
import struct
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import NamedTuple

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

import cv2  # noqa: E402

try:  # run as a script (/opt/face_tagger.py, a job): the module beside it
    import haar_cascades  # noqa: E402
except ImportError:  # imported as face_tagger.face_tagger (the tests, the benchmarks)
    from face_tagger import haar_cascades  # noqa: E402

DEFAULT_API_URL = "https://htc.rescale.com/api/v1"
DEFAULT_CASCADE = haar_cascades.DEFAULT_CASCADE
DEFAULT_SCALE_FACTOR = 1.2
# Coarser than 3 misses most faces; finer than 1.01 multiplies the pyramid levels without end.
SCALE_FACTOR_RANGE = (1.01, 3.0)
MIN_NEIGHBORS = 5
MIN_SIZE = (30, 30)
# "true" fails about a third of the jobs, as the original tutorial's random draw did.
DEFAULT_FAILURE_RATE = 1 / 3
TRANSFER_THREADS = 8
# Results and the manifest go to task storage after this many images or seconds, whichever
# comes first, so a job that dies without warning loses at most that much work.
FLUSH_EVERY_IMAGES = 20
FLUSH_EVERY_SECONDS = 5.0
MAX_ARRAY_SIZE = 10_000  # AWS Batch's largest array job
MAX_OPENCV_THREADS = 256
EXIT_USAGE = 2
# What a process killed by SIGTERM reports; the worker exits with it after saving its results.
EXIT_STOPPED = 128 + signal.SIGTERM


class UsageError(Exception):
    """The job was started with missing or inconsistent settings."""


class CascadeError(UsageError):
    """The Haar cascade file is missing or is not a cascade."""


class ImageError(Exception):
    """An input image is missing, unreadable or not an image."""


class JobStopped(BaseException):
    """SIGTERM arrived: the platform is stopping the job (timeout, cancellation).

    A BaseException, like KeyboardInterrupt, so that no per-image ``except Exception`` swallows it.
    """


def number_setting(
    name: str, raw: str | None, default: float, low: float, high: float, integer: bool = False
) -> float | int:
    """A numeric setting: plain ASCII decimal, finite, within ``[low, high]``; else a UsageError naming it.

    ``float()`` alone would take ``inf``, ``nan``, ``1e308`` and non-ASCII digits, each of
    which hangs the worker or fails on every image instead of at start-up.
    """
    text = (raw or "").strip() or str(default)
    pattern = r"[+-]?[0-9]+" if integer else r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]{1,3})?"
    kind = "a whole number" if integer else "a number"
    if len(text) > 40 or not re.fullmatch(pattern, text):
        raise UsageError(f"{name} must be {kind} from {low:g} to {high:g}, got {raw!r}")
    value = int(text) if integer else float(text)
    if not (math.isfinite(value) and low <= value <= high):
        raise UsageError(f"{name} must be {kind} from {low:g} to {high:g}, got {raw!r}")
    return value


def scale_factor_setting(raw: str) -> float:
    """``--scale-factor`` / ``SCALE_FACTOR``, as an argparse type: a bad value is a usage error."""
    try:
        return float(
            number_setting(
                "the scale factor (--scale-factor, SCALE_FACTOR)", raw, DEFAULT_SCALE_FACTOR, *SCALE_FACTOR_RANGE
            )
        )
    except UsageError as exc:
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
            raise UsageError(f"scaleFactor must be a number from {low} to {high}, got {scale_factor!r}")
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


def chunk_bounds(total: int, batch_size: int, index: int) -> tuple[int, int]:
    """Job ``index``'s contiguous share ``[start, end)`` of ``total`` items split over ``batch_size`` jobs.

    Shares differ in size by at most one, every item lands in exactly one share,
    and jobs beyond the item count get empty shares.
    """
    if batch_size < 1:
        raise UsageError(f"BATCH_JOB_ARRAY_SIZE must be at least 1, got {batch_size}")
    if not 0 <= index < batch_size:
        raise UsageError(f"AWS_BATCH_JOB_ARRAY_INDEX {index} is outside 0..{batch_size - 1}")
    return index * total // batch_size, (index + 1) * total // batch_size


def parse_image_list(text: str) -> list[str]:
    """Object keys from an image list: one a line, blank lines and surrounding ASCII blanks ignored.

    Lines end at ``\\n`` (or ``\\r\\n``) only: U+2028, ``\\x1c``, ``\\x85`` and the other breaks that
    ``str.splitlines`` knows may be part of a file name.
    """
    return [key for key in (line.strip(" \t\r\f\v") for line in text.split("\n")) if key]


def failure_rate(setting: str | None) -> float:
    """Read ``SIMULATE_FAILURES``: unset/false/0 disables, true means the default rate, or a rate in [0, 1]."""
    value = (setting or "").strip().lower()
    if value in ("", "false", "no", "off", "0"):
        return 0.0
    if value in ("true", "yes", "on"):
        return DEFAULT_FAILURE_RATE
    try:
        return float(number_setting("SIMULATE_FAILURES", value, 0, 0.0, 1.0))
    except UsageError:
        raise UsageError(f"SIMULATE_FAILURES must be true, false or a rate in [0, 1], got {setting!r}") from None


def simulated_failure(rate: float, index: int, seed: str = "0") -> str | None:
    """The failure this array index is assigned: ``"raise"``, ``"hang"`` or ``None``.

    Seeded by the index, so a batch fails the same jobs on every run.
    """
    draw = random.Random(f"{seed}:{index}")
    if draw.random() >= rate:
        return None
    return "raise" if draw.random() < 1 / 3 else "hang"


def apply_simulated_failure(index: int) -> None:
    """Fail this job on purpose when ``SIMULATE_FAILURES`` says so."""
    rate = failure_rate(os.environ.get("SIMULATE_FAILURES"))
    hang_seconds = number_setting("SIMULATE_HANG_SECONDS", os.environ.get("SIMULATE_HANG_SECONDS"), 86400, 0, 10**6)
    mode = simulated_failure(rate, index, os.environ.get("SIMULATE_FAILURES_SEED", "0"))
    if mode == "raise":
        raise RuntimeError(f"simulated failure for array index {index}")
    if mode == "hang":
        print(f"simulated hang for array index {index}: sleeping past the job timeout", flush=True)
        time.sleep(hang_seconds)
        # A timeout longer than the sleep must still see this job fail, not succeed late.
        raise RuntimeError(f"simulated hang for array index {index} outlived the job timeout")


def safe_key(key: str) -> str:
    """Refuse object keys that would escape a storage prefix or the local work directory.

    Refused: an empty, ``.`` or ``..`` segment (so also an empty key, a leading or trailing ``/``,
    ``a//b``), a backslash, a NUL. The client and the emulator keep copies of this rule (and of
    ``parse_image_list`` and ``aws_region``); the project's tests hold them all to one table.
    """
    if "\\" in key or "\x00" in key or any(segment in ("", ".", "..") for segment in key.split("/")):
        raise ImageError(f"unsafe object key: {key!r}")
    return key


def aws_region(rescale_region: str | None) -> str:
    """Map a Rescale region such as ``AWS_EU_WEST_1`` to boto's ``eu-west-1``; anything else to ``us-east-1``."""
    name = (rescale_region or "").removeprefix("AWS_")
    if rescale_region and rescale_region.startswith("AWS_") and name:
        return name.lower().replace("_", "-")
    return "us-east-1"


class Location(NamedTuple):
    """Where one storage area lives: an S3 client with its credentials, a bucket and a key prefix."""

    client: object
    bucket: str
    prefix: str


def s3_client(credentials: dict, region: str | None = None):
    """One S3 client for a chunk's transfers, with retries and enough connections for both thread pools."""
    import boto3
    from botocore.config import Config

    # From boto3's default session, so that the S3 model is parsed once, not once per client.
    return boto3.client(
        "s3",
        aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=credentials.get("AWS_SESSION_TOKEN"),
        region_name=aws_region(region),
        config=Config(retries={"max_attempts": 6, "mode": "standard"}, max_pool_connections=2 * TRANSFER_THREADS),
    )


def storage_token(http, url: str) -> dict:
    """One storage-token answer, checked for what the worker needs."""
    response = http.get(url, timeout=30)
    if not response.ok:
        raise UsageError(f"storage token request failed: HTTP {response.status_code} for {url}")
    body = response.json()
    if body.get("provider", "AWS") != "AWS":
        raise UsageError(f"only AWS storage is supported, the token is for {body['provider']}")
    if not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(body.get("credentials") or {}):
        raise UsageError(f"the storage token from {url} carries no AWS credentials")
    if not body.get("projectSharedStoragePath"):
        raise UsageError(f"the storage token from {url} has no projectSharedStoragePath")
    return body


def location(client, path: str) -> Location:
    """A Location for an ``s3://bucket/prefix/`` path, reached with ``client``."""
    bucket, _, prefix = path.removeprefix("s3://").partition("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return Location(client, bucket, prefix)


def regional_task_path(http, url: str, region: str | None, shared_path: str) -> str:
    """The task's storage path from ``regional-storage``, for tokens without ``storagePath``.

    The spec's storage token documents only ``projectSharedStoragePath``; the task
    path it documents is the ``taskPath`` of each regional store.
    """
    response = http.get(url, timeout=30)
    if not response.ok:
        raise UsageError(f"regional storage request failed: HTTP {response.status_code} for {url}")
    for store in response.json().get("regionalStores") or []:
        if store.get("region") == region and store.get("taskPath"):
            path = store["taskPath"]
            if path.startswith("s3://"):
                return path
            bucket = shared_path.removeprefix("s3://").partition("/")[0]
            return f"s3://{bucket}/{path.lstrip('/')}"
    raise UsageError(f"no task storage path for region {region} in {url}")


class HtcStorage:
    """Project shared storage (inputs) and task storage (results) for one job."""

    def __init__(self, shared: Location, task: Location):
        self.shared, self.task = shared, task

    @classmethod
    def from_api(cls, api_url: str, token: str, project_id: str, task_id: str, http=None) -> HtcStorage:
        """Reach storage the way a job container can.

        The job's bearer token buys short-lived storage credentials from the HTC API;
        boto3 then moves the objects (and honours ``AWS_ENDPOINT_URL_S3`` when set).
        The task's token reads the project's shared files and writes the task's folder,
        so one token and one S3 client serve both.
        """
        import requests
        from requests.adapters import HTTPAdapter
        from urllib3.util.retry import Retry

        http = http or requests.Session()
        retry = Retry(
            total=5,
            backoff_factor=0.5,
            backoff_jitter=0.5,
            status_forcelist=(429, 500, 502, 503, 504),
            respect_retry_after_header=True,
        )
        adapter = HTTPAdapter(max_retries=retry)
        http.mount("http://", adapter)
        http.mount("https://", adapter)
        http.headers["Authorization"] = f"Bearer {token}"
        base = f"{api_url.rstrip('/')}/htc/projects/{project_id}"
        with http:
            token = storage_token(http, f"{base}/tasks/{task_id}/storage/token")
            shared_path = token["projectSharedStoragePath"]
            task_path = token.get("storagePath") or regional_task_path(
                http, f"{base}/tasks/{task_id}/storage/regional-storage", token.get("region"), shared_path
            )
        client = s3_client(token["credentials"], token.get("region"))
        return cls(location(client, shared_path), location(client, task_path))

    def read_shared_text(self, key: str) -> str:
        client, bucket, prefix = self.shared
        try:
            return client.get_object(Bucket=bucket, Key=prefix + safe_key(key))["Body"].read().decode()
        except client.exceptions.NoSuchKey:
            raise UsageError(f"{key!r} not found in project shared storage") from None

    def fetch_shared(
        self, keys: list[str], workdir: Path, pool: ThreadPoolExecutor, ahead: int = 2 * TRANSFER_THREADS
    ) -> Iterator[tuple[str, Path | Exception]]:
        """Yield each key, in order, with its local path or the error it met, downloading ``ahead`` keys ahead.

        The window bounds the disk a chunk uses; closing the generator cancels what has not started.
        """
        client, bucket, prefix = self.shared

        def fetch(key: str) -> Path | Exception:
            try:
                local = workdir / safe_key(key)
                local.parent.mkdir(parents=True, exist_ok=True)
                # One GET; download_file adds a HEAD and a transfer manager, which pay only for large files.
                with local.open("wb") as out:
                    shutil.copyfileobj(client.get_object(Bucket=bucket, Key=prefix + key)["Body"], out)
                return local
            except Exception as exc:  # recorded per image; the chunk goes on
                return ImageError(f"download of {key!r} failed: {exc}")

        remaining, window = iter(keys), deque()
        try:
            while True:
                window.extend((key, pool.submit(fetch, key)) for key in islice(remaining, ahead - len(window)))
                if not window:
                    return
                key, future = window.popleft()
                yield key, future.result()
        finally:
            for _, future in window:
                future.cancel()

    def put_task(self, local: Path, key: str) -> None:
        client, bucket, prefix = self.task
        with local.open("rb") as body:  # one PUT; upload_file's transfer manager pays only for large files
            client.put_object(Bucket=bucket, Key=prefix + key, Body=body)

    def upload_task(self, files: list[tuple[Path, str]]) -> None:
        """Upload (local path, key) pairs to task storage concurrently; the first failure is raised."""
        with ThreadPoolExecutor(TRANSFER_THREADS) as pool:
            list(pool.map(lambda pair: self.put_task(*pair), files))


class SigtermGuard:
    """Turns SIGTERM into ``JobStopped``, except inside ``deferred()``, which finishes first.

    The platform stops a job (timeout, cancellation) with SIGTERM and kills it after a grace
    period; the worker uses that time to save what it has done.
    """

    def __init__(self):
        self.deferring, self.requested = 0, False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self.handle)

    def handle(self, signum, frame) -> None:
        if self.deferring:
            self.requested = True
        else:
            raise JobStopped()

    @contextmanager
    def deferred(self):
        self.deferring += 1
        try:
            yield
        finally:
            self.deferring -= 1
        if self.requested and not self.deferring:
            raise JobStopped()


SIGTERM_GUARD = SigtermGuard()


class ChunkResults:
    """A job's results, saved as they come: outputs upload in the background, the manifest every few images.

    The manifest is rewritten whole at each flush and lists only images whose outputs are
    stored, so whenever the job stops, task storage accounts for exactly what it finished.
    """

    def __init__(self, storage: HtcStorage, manifest_key: str, workdir: Path, uploads: ThreadPoolExecutor):
        self.storage, self.manifest_key, self.uploads = storage, manifest_key, uploads
        self.manifest = workdir / "manifest.jsonl"
        self.saved: list[dict] = []
        self.pending: list[tuple[dict, list[Future], list[Path]]] = []
        self.flushed_at = time.monotonic()

    def add(self, record: dict, outputs: list[tuple[Path, str]]) -> None:
        futures = [self.uploads.submit(self.storage.put_task, local, key) for local, key in outputs]
        self.pending.append((record, futures, [local for local, _ in outputs]))
        if len(self.pending) >= FLUSH_EVERY_IMAGES or time.monotonic() - self.flushed_at >= FLUSH_EVERY_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Wait for the pending outputs, then upload the manifest; a SIGTERM meanwhile waits for it."""
        with SIGTERM_GUARD.deferred():
            for record, futures, paths in self.pending:
                failed = next((f.exception() for f in futures if f.exception()), None)
                if failed:
                    record.update(status="error", error=f"upload of the results failed: {failed}")
                for path in paths:
                    path.unlink(missing_ok=True)
                self.saved.append(record)
            self.pending = []
            self.manifest.write_text("".join(json.dumps(r) + "\n" for r in self.saved))
            self.storage.put_task(self.manifest, self.manifest_key)
            self.flushed_at = time.monotonic()


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


def run_htc(detector: FaceDetector, keys: list[str], manifest_key: str, storage: HtcStorage) -> list[dict]:
    """Download, tag and upload a list of shared-storage keys, saving results and manifest as it goes.

    Whatever ends the loop (the last image, SIGTERM, an error), what was finished is saved first.
    """
    with (
        tempfile.TemporaryDirectory(prefix="face_tagger_") as tmp,
        ThreadPoolExecutor(TRANSFER_THREADS) as downloads,
        ThreadPoolExecutor(TRANSFER_THREADS) as uploads,
    ):
        workdir = Path(tmp)
        results = ChunkResults(storage, manifest_key, workdir, uploads)
        try:
            with closing(storage.fetch_shared(keys, workdir, downloads)) as fetched:
                for key, local in fetched:
                    if isinstance(local, Exception):
                        record, outputs = new_record(key, detector.scale_factor, error=str(local)), []
                    else:
                        record, written = tag_image(detector, local, key)
                        outputs = [(out, key + out.name[len(local.name) :]) for out in written]
                        local.unlink()
                    record["job"] = os.environ.get("AWS_BATCH_JOB_ID")
                    results.add(record, outputs)
                    print(describe(record), flush=True)
        finally:
            results.flush()
    records = results.saved
    ok = sum(r["status"] == "ok" for r in records)
    print(f"{ok} of {len(records)} images tagged; manifest {manifest_key}", flush=True)
    return records


def required_env(*names: str) -> dict[str, str]:
    """The named environment variables, or one error listing every missing one."""
    missing = [n for n in names if not os.environ.get(n)]
    if missing:
        raise UsageError("missing environment variable(s): " + ", ".join(missing))
    return {n: os.environ[n] for n in names}


def storage_from_env() -> HtcStorage:
    env = required_env("RESCALE_HTC_BEARER_TOKEN", "RESCALE_HTC_PROJECT_ID", "RESCALE_HTC_TASK_ID")
    return HtcStorage.from_api(
        os.environ.get("RESCALE_HTC_API_URL") or DEFAULT_API_URL,
        env["RESCALE_HTC_BEARER_TOKEN"],
        env["RESCALE_HTC_PROJECT_ID"],
        env["RESCALE_HTC_TASK_ID"],
    )


def array_index(batch_size: int) -> int:
    """This job's array index; a batch of one may run without one, as AWS Batch does."""
    raw = os.environ.get("AWS_BATCH_JOB_ARRAY_INDEX")
    if raw is None and batch_size == 1:
        return 0
    required_env("AWS_BATCH_JOB_ARRAY_INDEX")
    return int(number_setting("AWS_BATCH_JOB_ARRAY_INDEX", raw, 0, 0, MAX_ARRAY_SIZE - 1, integer=True))


def run_batch(detector: FaceDetector) -> int:
    env = required_env("IMG_OBJKEY_LIST", "BATCH_JOB_ARRAY_SIZE")
    batch_size = int(
        number_setting("BATCH_JOB_ARRAY_SIZE", env["BATCH_JOB_ARRAY_SIZE"], 1, 1, MAX_ARRAY_SIZE, integer=True)
    )
    index = array_index(batch_size)
    apply_simulated_failure(index)
    storage = storage_from_env()
    keys = parse_image_list(storage.read_shared_text(env["IMG_OBJKEY_LIST"]))
    start, end = chunk_bounds(len(keys), batch_size, index)
    print(f"array index {index} of {batch_size}: images {start}..{end - 1} of {len(keys)}", flush=True)
    run_htc(detector, keys[start:end], f"manifests/chunk-{index:05d}.jsonl", storage)
    return 0


def run_single(detector: FaceDetector, args: list[str]) -> int:
    setting = os.environ["HTC_INPUT_IMAGE"].strip()
    # The original tutorial used HTC_INPUT_IMAGE=true with the key as the argument; keep that form working.
    if setting.lower() == "true":
        if len(args) != 1:
            raise UsageError("HTC_INPUT_IMAGE=true needs exactly one argument: the image's object key")
        key = args[0]
    else:
        key = setting
    try:
        safe_key(key)
    except ImageError as exc:
        raise UsageError(f"HTC_INPUT_IMAGE: {exc}") from None
    records = run_htc(detector, [key], f"manifests/single-{key.replace('/', '_')}.jsonl", storage_from_env())
    return 0 if records[0]["status"] == "ok" else 1


def opencv_threads(setting: str | None) -> int:
    """``OPENCV_THREADS``, default 1: the ``maxVCpus: 1`` a job asks for; more only fights the other jobs."""
    return int(number_setting("OPENCV_THREADS", setting, 1, 1, MAX_OPENCV_THREADS, integer=True))


def max_image_pixels(setting: str | None) -> int:
    """``MAX_IMAGE_PIXELS``: the largest image the worker decodes (OpenCV's own ceiling is 2**30)."""
    return int(number_setting("MAX_IMAGE_PIXELS", setting, DEFAULT_MAX_IMAGE_PIXELS, 1, 2**30, integer=True))


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


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        cv2.setNumThreads(opencv_threads(os.environ.get("OPENCV_THREADS")))
        detector = FaceDetector.load(
            args.cascade, args.scale_factor, max_image_pixels(os.environ.get("MAX_IMAGE_PIXELS"))
        )
        if args.images and not os.environ.get("HTC_INPUT_IMAGE"):
            return run_local(detector, args.images, args.json, args.output_dir)
        SIGTERM_GUARD.install()
        if os.environ.get("HTC_INPUT_IMAGE"):
            return run_single(detector, args.images)
        return run_batch(detector)
    except UsageError as exc:
        print(f"face_tagger: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except JobStopped:
        print(
            "face_tagger: stopped by SIGTERM; the results of the images finished are in task storage",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_STOPPED


if __name__ == "__main__":
    sys.exit(main())
