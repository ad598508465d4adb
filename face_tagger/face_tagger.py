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
import os
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import cv2

DEFAULT_API_URL = "https://htc.rescale.com/api/v1"
DEFAULT_CASCADE = "haarcascade_frontalface_default.xml"
DEFAULT_SCALE_FACTOR = 1.2
MIN_NEIGHBORS = 5
MIN_SIZE = (30, 30)
# "true" fails about a third of the jobs, as the original tutorial's random draw did.
DEFAULT_FAILURE_RATE = 1 / 3
TRANSFER_THREADS = 8
EXIT_USAGE = 2


class UsageError(Exception):
    """The job was started with missing or inconsistent settings."""


class CascadeError(UsageError):
    """The Haar cascade file is missing or is not a cascade."""


class ImageError(Exception):
    """An input image is missing, unreadable or not an image."""


@dataclass
class FaceDetector:
    """A Haar cascade loaded once, with the detection parameters that go with it."""

    classifier: cv2.CascadeClassifier
    scale_factor: float = DEFAULT_SCALE_FACTOR

    @classmethod
    def load(cls, cascade_path: str | None = None, scale_factor: float = DEFAULT_SCALE_FACTOR):
        """Parse the cascade XML once; an empty classifier fails here, not deep inside OpenCV."""
        path = cascade_path or os.path.join(cv2.data.haarcascades, DEFAULT_CASCADE)
        if not os.path.isfile(path):
            raise CascadeError(f"Haar cascade not found: {path}")
        try:
            classifier = cv2.CascadeClassifier(path)
        except (cv2.error, SystemError):
            classifier = None
        if classifier is None or classifier.empty():
            raise CascadeError(f"Haar cascade could not be loaded (empty or not a cascade XML): {path}")
        if scale_factor <= 1.0:
            raise UsageError(f"scaleFactor must be greater than 1.0, got {scale_factor}")
        return cls(classifier, scale_factor)

    def detect(self, image) -> list[list[int]]:
        """Return face boxes as [x, y, w, h] for a BGR or greyscale image."""
        grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        faces = self.classifier.detectMultiScale(
            grey, scaleFactor=self.scale_factor, minNeighbors=MIN_NEIGHBORS, minSize=MIN_SIZE
        )
        return [[int(v) for v in box] for box in faces]


def read_image(path: str | os.PathLike):
    """Load an image, turning OpenCV's silent ``None`` into an error that names the file."""
    if not os.path.isfile(path):
        raise ImageError(f"image not found: {path}")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
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
    return {"image": image, "faces": None, "boxes": [], "seconds": 0.0, "status": "error" if error else "ok",
            "error": error, "scale_factor": scale_factor}


def tag_image(detector: FaceDetector, path: Path, name: str | None = None,
              out_dir: Path | None = None) -> tuple[dict, list[Path]]:
    """Detect faces in one file; return its result record and the output files written.

    A bad image gives a record with ``status: "error"`` instead of an exception, so
    the caller can go on with the rest of its images.
    """
    start = time.perf_counter()
    record = new_record(name or str(path), detector.scale_factor)
    outputs: list[Path] = []
    try:
        image = read_image(path)
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
    """Object keys from an image list: one a line, blank lines and surrounding spaces ignored."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def failure_rate(setting: str | None) -> float:
    """Read ``SIMULATE_FAILURES``: unset/false/0 disables, true means the default rate, or a rate in [0, 1]."""
    value = (setting or "").strip().lower()
    if value in ("", "false", "no", "off", "0"):
        return 0.0
    if value in ("true", "yes", "on"):
        return DEFAULT_FAILURE_RATE
    try:
        rate = float(value)
    except ValueError:
        raise UsageError(f"SIMULATE_FAILURES must be true, false or a rate in [0, 1], got {setting!r}") from None
    if not 0.0 <= rate <= 1.0:
        raise UsageError(f"SIMULATE_FAILURES rate must be within [0, 1], got {rate}")
    return rate


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
    mode = simulated_failure(failure_rate(os.environ.get("SIMULATE_FAILURES")), index,
                             os.environ.get("SIMULATE_FAILURES_SEED", "0"))
    if mode == "raise":
        raise RuntimeError(f"simulated failure for array index {index}")
    if mode == "hang":
        print(f"simulated hang for array index {index}: sleeping past the job timeout", flush=True)
        time.sleep(float(os.environ.get("SIMULATE_HANG_SECONDS", "86400")))
        # A timeout longer than the sleep must still see this job fail, not succeed late.
        raise RuntimeError(f"simulated hang for array index {index} outlived the job timeout")


def safe_key(key: str) -> str:
    """Refuse object keys that would escape a storage prefix or the local work directory."""
    parts = PurePosixPath(key).parts
    if not key or key.startswith("/") or ".." in parts or "\\" in key:
        raise ImageError(f"unsafe object key: {key!r}")
    return key


def aws_region(rescale_region: str | None) -> str:
    """Map a Rescale region such as ``AWS_EU_WEST_1`` to boto's ``eu-west-1``."""
    if rescale_region and rescale_region.startswith("AWS_"):
        return rescale_region[4:].lower().replace("_", "-")
    return "us-east-1"


class Location(NamedTuple):
    """Where one storage area lives: an S3 client with its credentials, a bucket and a key prefix."""

    client: object
    bucket: str
    prefix: str


def s3_client(credentials: dict, region: str | None = None):
    """One S3 client for a chunk's transfers, with retries and enough connections for the thread pool."""
    import boto3
    from botocore.config import Config

    # From boto3's default session, so that the S3 model is parsed once, not once per client.
    return boto3.client("s3", aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"],
                        aws_session_token=credentials.get("AWS_SESSION_TOKEN"), region_name=aws_region(region),
                        config=Config(retries={"max_attempts": 6, "mode": "standard"},
                                      max_pool_connections=TRANSFER_THREADS))


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


def location(token: dict, path: str) -> Location:
    """A Location for an ``s3://bucket/prefix/`` path, on the token's credentials."""
    bucket, _, prefix = path.removeprefix("s3://").partition("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return Location(s3_client(token["credentials"], token.get("region")), bucket, prefix)


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
    def from_api(cls, api_url: str, token: str, project_id: str, task_id: str, http=None) -> "HtcStorage":
        """Reach storage the way a job container can.

        The job's bearer token buys short-lived storage credentials from the HTC API;
        boto3 then moves the objects (and honours ``AWS_ENDPOINT_URL_S3`` when set).
        """
        import requests
        from requests.adapters import HTTPAdapter
        from urllib3.util.retry import Retry

        http = http or requests.Session()
        retry = Retry(total=5, backoff_factor=0.5, backoff_jitter=0.5,
                      status_forcelist=(429, 500, 502, 503, 504), respect_retry_after_header=True)
        adapter = HTTPAdapter(max_retries=retry)
        http.mount("http://", adapter)
        http.mount("https://", adapter)
        http.headers["Authorization"] = f"Bearer {token}"
        base = f"{api_url.rstrip('/')}/htc/projects/{project_id}"
        with http:
            shared = storage_token(http, f"{base}/storage/token")
            task = storage_token(http, f"{base}/tasks/{task_id}/storage/token")
            shared_path = shared["projectSharedStoragePath"]
            task_path = task.get("storagePath") or regional_task_path(
                http, f"{base}/tasks/{task_id}/storage/regional-storage", task.get("region"), shared_path)
            return cls(location(shared, shared_path), location(task, task_path))

    def read_shared_text(self, key: str) -> str:
        client, bucket, prefix = self.shared
        try:
            return client.get_object(Bucket=bucket, Key=prefix + safe_key(key))["Body"].read().decode()
        except client.exceptions.NoSuchKey:
            raise UsageError(f"{key!r} not found in project shared storage") from None

    def download_shared(self, keys: list[str], workdir: Path) -> dict[str, Path | Exception]:
        """Fetch many objects concurrently; each key maps to its local path or to the error it met."""
        client, bucket, prefix = self.shared

        def fetch(key: str) -> Path | Exception:
            try:
                local = workdir / safe_key(key)
                local.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(bucket, prefix + key, str(local))
                return local
            except Exception as exc:  # recorded per image; the chunk goes on
                return ImageError(f"download of {key!r} failed: {exc}")

        with ThreadPoolExecutor(TRANSFER_THREADS) as pool:
            return dict(zip(keys, pool.map(fetch, keys)))

    def upload_task(self, files: list[tuple[Path, str]]) -> None:
        """Upload (local path, key) pairs to task storage concurrently; the first failure is raised."""
        client, bucket, prefix = self.task
        with ThreadPoolExecutor(TRANSFER_THREADS) as pool:
            list(pool.map(lambda pair: client.upload_file(str(pair[0]), bucket, prefix + pair[1]), files))


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
    """Download, tag and upload a list of shared-storage keys; write the job's manifest last."""
    with tempfile.TemporaryDirectory(prefix="face_tagger_") as tmp:
        workdir = Path(tmp)
        fetched = storage.download_shared(keys, workdir)
        records, uploads = [], []
        for key in keys:
            local = fetched[key]
            if isinstance(local, Exception):
                record = new_record(key, detector.scale_factor, error=str(local))
            else:
                record, outputs = tag_image(detector, local, key)
                uploads += [(out, key + out.name[len(local.name):]) for out in outputs]
            record["job"] = os.environ.get("AWS_BATCH_JOB_ID")
            print(describe(record), flush=True)
            records.append(record)
        manifest = workdir / "manifest.jsonl"
        manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
        storage.upload_task(uploads)
        storage.upload_task([(manifest, manifest_key)])
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
    return HtcStorage.from_api(os.environ.get("RESCALE_HTC_API_URL") or DEFAULT_API_URL,
                      env["RESCALE_HTC_BEARER_TOKEN"], env["RESCALE_HTC_PROJECT_ID"], env["RESCALE_HTC_TASK_ID"])


def array_index(batch_size: int) -> int:
    """This job's array index; a batch of one may run without one, as AWS Batch does."""
    raw = os.environ.get("AWS_BATCH_JOB_ARRAY_INDEX")
    if raw is None and batch_size == 1:
        return 0
    try:
        return int(required_env("AWS_BATCH_JOB_ARRAY_INDEX")["AWS_BATCH_JOB_ARRAY_INDEX"])
    except ValueError:
        raise UsageError(f"AWS_BATCH_JOB_ARRAY_INDEX must be an integer, got {raw!r}") from None


def run_batch(detector: FaceDetector) -> int:
    env = required_env("IMG_OBJKEY_LIST", "BATCH_JOB_ARRAY_SIZE")
    try:
        batch_size = int(env["BATCH_JOB_ARRAY_SIZE"])
    except ValueError:
        raise UsageError(f"BATCH_JOB_ARRAY_SIZE must be an integer, got {env['BATCH_JOB_ARRAY_SIZE']!r}") from None
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
    try:
        threads = int(setting or "1")
    except ValueError:
        raise UsageError(f"OPENCV_THREADS must be a whole number, got {setting!r}") from None
    if threads < 1:
        raise UsageError(f"OPENCV_THREADS must be at least 1, got {threads}")
    return threads


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="*", help="local image files (local mode)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per image")
    parser.add_argument("--output-dir", type=Path, help="write the tagged files here instead of beside each image")
    # A string default goes through type=float too, so a bad SCALE_FACTOR gets argparse's clear error.
    parser.add_argument("--scale-factor", type=float,
                        default=os.environ.get("SCALE_FACTOR", str(DEFAULT_SCALE_FACTOR)),
                        help="detectMultiScale scaleFactor (env SCALE_FACTOR, default %(default)s)")
    parser.add_argument("--cascade", default=os.environ.get("CASCADE_PATH"),
                        help="Haar cascade XML (env CASCADE_PATH, default: OpenCV's frontal face cascade)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        cv2.setNumThreads(opencv_threads(os.environ.get("OPENCV_THREADS")))
        detector = FaceDetector.load(args.cascade, args.scale_factor)
        if os.environ.get("HTC_INPUT_IMAGE"):
            return run_single(detector, args.images)
        if args.images:
            return run_local(detector, args.images, args.json, args.output_dir)
        return run_batch(detector)
    except UsageError as exc:
        print(f"face_tagger: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
