"""A worker layer for Rescale HTC array jobs, for any program: its share, storage, manifests, SIGTERM.

No OpenCV here (requests and boto3 only): the face tagger (``face_tagger.py``) is one program on
it, ``command_worker.py`` another, which runs any command on each item; a program of your own
can be a third. It ships beside them, in the container (``/opt/htc_worker.py``).

A job of a batch:

* finds its **share**: the batch's list of items (one a line, in project shared storage, named
  by ``ITEM_LIST`` or the variable the program chooses), ``BATCH_JOB_ARRAY_SIZE`` jobs share it,
  and ``AWS_BATCH_JOB_ARRAY_INDEX`` picks this job's contiguous part (:func:`job_share`);
* writes under its **batch's namespace** in task storage, ``runs/<run id>/``, which no other
  batch of the task writes: the run id is ``HTC_RUN_ID``, which the submitting side sets
  (``htc_helpers.with_run_id``), else the batch part of ``AWS_BATCH_JOB_ID`` (:func:`run_id`);
* **saves as it goes**: each item's record and outputs, and a manifest
  ``runs/<run id>/manifests/chunk-<index>.jsonl`` that accounts for every item it finished,
  failures included, rewritten every few items and when SIGTERM stops the job
  (:func:`process_items`); a **retried attempt** skips the items the manifest holds as done (a
  first attempt in its batch's namespace does not look: nothing else writes its manifest).

A program on it is a function ``handle(item, local_path) -> (fields, outputs)`` and one call::

    sys.exit(htc_worker.main("my-program", lambda: htc_worker.run_share(handle)))

``htc_helpers.submit_work_list`` submits such jobs over any number of items, and
``htc_helpers.collect_results(..., columns=htc_helpers.ITEM_COLUMNS)`` gathers their records.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import NamedTuple

DEFAULT_API_URL = "https://htc.rescale.com/api/v1"
ITEM_LIST_ENV = "ITEM_LIST"
# "true" fails about a third of the jobs, as the original tutorial's random draw did.
DEFAULT_FAILURE_RATE = 1 / 3
TRANSFER_THREADS = 8
# Results and the manifest go to task storage after this many items or seconds, whichever
# comes first, so a job that dies without warning loses at most that much work.
FLUSH_EVERY_ITEMS = 20
FLUSH_EVERY_SECONDS = 5.0
MAX_ARRAY_SIZE = 10_000  # AWS Batch's largest array job
# The submitting side names each batch with this variable (htc_helpers.with_run_id); its jobs write under
# runs/<run id>/ of task storage, where no other batch of the task writes.
RUN_ID_ENV = "HTC_RUN_ID"
RUNS_PREFIX = "runs/"
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
EXIT_USAGE = 2
# What a process killed by SIGTERM reports; the worker exits with it after saving its results.
EXIT_STOPPED = 128 + signal.SIGTERM


class UsageError(Exception):
    """The job was started with missing or inconsistent settings."""


class ItemError(Exception):
    """An item is missing, unreadable or unusable: recorded as its error, and the share goes on."""


class JobStopped(BaseException):
    """SIGTERM arrived: the platform is stopping the job (timeout, cancellation).

    A BaseException, like KeyboardInterrupt, so that no per-item ``except Exception`` swallows it.
    """


# --- settings ------------------------------------------------------------------------------


def number_setting(
    name: str, raw: str | None, default: float, low: float, high: float, integer: bool = False
) -> float | int:
    """A numeric setting: plain ASCII decimal, finite, within ``[low, high]``; else a UsageError naming it.

    ``float()`` alone would take ``inf``, ``nan``, ``1e308`` and non-ASCII digits, each of
    which hangs the worker or fails on every item instead of at start-up.
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


def required_env(*names: str) -> dict[str, str]:
    """The named environment variables, or one error listing every missing one."""
    missing = [n for n in names if not os.environ.get(n)]
    if missing:
        raise UsageError("missing environment variable(s): " + ", ".join(missing))
    return {n: os.environ[n] for n in names}


def array_index(batch_size: int) -> int:
    """This job's array index; a batch of one may run without one, as AWS Batch does."""
    raw = os.environ.get("AWS_BATCH_JOB_ARRAY_INDEX")
    if raw is None and batch_size == 1:
        return 0
    required_env("AWS_BATCH_JOB_ARRAY_INDEX")
    return int(number_setting("AWS_BATCH_JOB_ARRAY_INDEX", raw, 0, 0, MAX_ARRAY_SIZE - 1, integer=True))


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


def parse_item_list(text: str) -> list[str]:
    """The items of a list, such as object keys: one a line, blank lines and surrounding ASCII blanks ignored.

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

    Drawn from the seed and the index: a seed fails the same jobs every time.
    """
    draw = random.Random(f"{seed}:{index}")
    if draw.random() >= rate:
        return None
    return "raise" if draw.random() < 1 / 3 else "hang"


def apply_simulated_failure(index: int) -> None:
    """Fail this job on purpose when ``SIMULATE_FAILURES`` says so.

    The draw's seed is ``SIMULATE_FAILURES_SEED``, else the batch's ``HTC_RUN_ID`` (each batch
    fails jobs of its own, as real failures do, so a resubmission can succeed), else ``"0"``.
    """
    rate = failure_rate(os.environ.get("SIMULATE_FAILURES"))
    hang_seconds = number_setting("SIMULATE_HANG_SECONDS", os.environ.get("SIMULATE_HANG_SECONDS"), 86400, 0, 10**6)
    seed = os.environ.get("SIMULATE_FAILURES_SEED") or os.environ.get(RUN_ID_ENV) or "0"
    mode = simulated_failure(rate, index, seed)
    if mode == "raise":
        raise RuntimeError(f"simulated failure for array index {index}")
    if mode == "hang":
        print(f"simulated hang for array index {index}: sleeping past the job timeout", flush=True)
        time.sleep(hang_seconds)
        # A timeout longer than the sleep must still see this job fail, not succeed late.
        raise RuntimeError(f"simulated hang for array index {index} outlived the job timeout")


# --- the batch's namespace ------------------------------------------------------------------


def run_id() -> str | None:
    """The name of this job's batch in task storage: ``HTC_RUN_ID``, else the batch part of ``AWS_BATCH_JOB_ID``.

    The submitting side sets ``HTC_RUN_ID`` (the portable way: the platform promises no variable
    that names the batch). Without it, AWS Batch's ``<array job id>:<index>`` (and the emulator's
    ``<parentJobId>:<index>``) still name one batch. None outside any batch: results then go to
    the task's root, where another such run can overwrite them.
    """
    given = os.environ.get(RUN_ID_ENV, "").strip()
    if given:
        if not RUN_ID_PATTERN.fullmatch(given):
            raise UsageError(f"{RUN_ID_ENV} must be 1 to 128 letters, digits, '.', '_' or '-', got {given!r}")
        return given
    batch = os.environ.get("AWS_BATCH_JOB_ID", "").strip().partition(":")[0]
    return batch if RUN_ID_PATTERN.fullmatch(batch) else None


def namespace(run: str | None) -> str:
    """The key prefix of a run's results in task storage (``runs/<run id>/``; the root without a run)."""
    return f"{RUNS_PREFIX}{run}/" if run else ""


def job_labels(run: str | None, index: int) -> dict:
    """What each record says about the job that made it: run, array index, attempt and job id."""
    attempt = os.environ.get("AWS_BATCH_JOB_ATTEMPT", "").strip()
    return {
        "run": run,
        "index": index,
        "attempt": int(attempt) if attempt.isdigit() else None,
        "job": os.environ.get("AWS_BATCH_JOB_ID"),
    }


# --- storage ------------------------------------------------------------------------------


def safe_key(key: str) -> str:
    """Refuse object keys that would escape a storage prefix or the local work directory.

    Refused: an empty, ``.`` or ``..`` segment (so also an empty key, a leading or trailing ``/``,
    ``a//b``), a backslash, a NUL. The client and the emulator keep copies of this rule (and of
    ``parse_item_list`` and ``aws_region``); the project's tests hold them all to one table.
    """
    if "\\" in key or "\x00" in key or any(segment in ("", ".", "..") for segment in key.split("/")):
        raise ItemError(f"unsafe object key: {key!r}")
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

    def read_task_text(self, key: str) -> str | None:
        """An object of task storage as text; None when there is none."""
        client, bucket, prefix = self.task
        try:
            return client.get_object(Bucket=bucket, Key=prefix + safe_key(key))["Body"].read().decode()
        except client.exceptions.NoSuchKey:
            return None

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
            except Exception as exc:  # recorded per item; the share goes on
                return ItemError(f"download of {key!r} failed: {exc}")

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


def storage_from_env() -> HtcStorage:
    env = required_env("RESCALE_HTC_BEARER_TOKEN", "RESCALE_HTC_PROJECT_ID", "RESCALE_HTC_TASK_ID")
    return HtcStorage.from_api(
        os.environ.get("RESCALE_HTC_API_URL") or DEFAULT_API_URL,
        env["RESCALE_HTC_BEARER_TOKEN"],
        env["RESCALE_HTC_PROJECT_ID"],
        env["RESCALE_HTC_TASK_ID"],
    )


# --- saving as it goes, and on SIGTERM -------------------------------------------------------


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
    """A job's results, saved as they come: outputs upload in the background, the manifest every few items.

    The manifest is rewritten whole at each flush and lists only items whose outputs are
    stored, so whenever the job stops, task storage accounts for exactly what it finished.
    """

    def __init__(
        self, storage: HtcStorage, manifest_key: str, workdir: Path, uploads: ThreadPoolExecutor, saved: list[dict]
    ):
        self.storage, self.manifest_key, self.uploads = storage, manifest_key, uploads
        self.manifest = workdir / "manifest.jsonl"
        self.saved = list(saved)  # what an earlier attempt of the job finished
        self.pending: list[tuple[dict, list[Future], list[Path]]] = []
        self.flushed_at = time.monotonic()

    def add(self, record: dict, outputs: list[tuple[Path, str]]) -> None:
        futures = [self.uploads.submit(self.storage.put_task, local, key) for local, key in outputs]
        self.pending.append((record, futures, [local for local, _ in outputs]))
        if len(self.pending) >= FLUSH_EVERY_ITEMS or time.monotonic() - self.flushed_at >= FLUSH_EVERY_SECONDS:
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


def finished_records(storage: HtcStorage, manifest_key: str) -> list[dict]:
    """The records an earlier attempt of this job saved as done; nothing for a first attempt."""
    text = storage.read_task_text(manifest_key) or ""
    records = []
    for line in text.split("\n"):
        try:
            record = json.loads(line) if line.strip() else None
        except ValueError:
            continue  # a manifest cut short: its last line is redone
        if isinstance(record, dict) and record.get("status") == "ok":
            records.append(record)
    return records


# --- a job's work ---------------------------------------------------------------------------


@dataclass
class Share:
    """This job's part of its batch's work: which run and index it is, and its items."""

    storage: HtcStorage
    run: str | None
    index: int
    batch_size: int
    items: list[str]
    labels: dict = field(default_factory=dict)


def job_share(list_env: str = ITEM_LIST_ENV, noun: str = "items") -> Share:
    """Read the job's settings, fail on purpose if told to, reach storage and take this job's share of the list.

    ``list_env`` names the variable that holds the batch's list (a key in project shared storage).
    """
    env = required_env(list_env, "BATCH_JOB_ARRAY_SIZE")
    batch_size = int(
        number_setting("BATCH_JOB_ARRAY_SIZE", env["BATCH_JOB_ARRAY_SIZE"], 1, 1, MAX_ARRAY_SIZE, integer=True)
    )
    index = array_index(batch_size)
    run = run_id()
    apply_simulated_failure(index)
    storage = storage_from_env()
    items = parse_item_list(storage.read_shared_text(env[list_env]))
    start, end = chunk_bounds(len(items), batch_size, index)
    print(f"array index {index} of {batch_size}: {noun} {start}..{end - 1} of {len(items)}", flush=True)
    return Share(storage, run, index, batch_size, items[start:end], job_labels(run, index))


def describe_item(record: dict, key_field: str = "item") -> str:
    """The line a job's log shows for an item."""
    if record["status"] != "ok":
        return f"{record[key_field]}: ERROR {record['error']}"
    return f"{record[key_field]}: ok in {record['seconds']:.3f} seconds"


Handler = Callable[[str, Path | None], tuple[dict, list[tuple[Path, str]]]]


def process_items(
    storage: HtcStorage,
    items: list[str],
    handle: Handler,
    *,
    run: str | None,
    manifest_name: str,
    labels: dict,
    key_field: str = "item",
    defaults: dict | None = None,
    download: bool = True,
    report: Callable[[dict], str] | None = None,
    noun: str = "items",
) -> list[dict]:
    """Each item through ``handle``, its record and outputs saved in the run's namespace as it goes.

    With ``download``, an item is a key of project shared storage, fetched ahead and handed to
    ``handle`` as a local file; without, ``handle`` gets None. ``handle(item, local)`` returns the
    item's fields (``status`` ``"ok"`` unless it says otherwise) and its outputs as (local file,
    name in the run's namespace). A record is ``{key_field: item, **defaults, "status", "error",
    "seconds", **fields, **labels, "outputs"}``. Items an earlier attempt of the job saved as done are
    skipped. Whatever ends the loop (the last item, SIGTERM, an error), what was finished is
    saved first: SIGTERM, from here on, raises ``JobStopped`` once the save is done. Returns every
    record of the manifest.
    """
    SIGTERM_GUARD.install()
    prefix = namespace(run)
    manifest_key = f"{prefix}manifests/{manifest_name}"
    # A batch's namespace is its own: on a job's first attempt nothing has written its manifest yet, and not
    # asking spares a request a job (of about nine). Elsewhere (no run, no attempt number) an earlier one may have.
    first_attempt = run is not None and labels.get("attempt") == 1
    finished = [] if first_attempt else finished_records(storage, manifest_key)
    done = {record.get(key_field) for record in finished}
    if done:
        print(f"{len(done)} {noun} already done by an earlier attempt ({manifest_key}): skipped", flush=True)
    items = [item for item in items if item not in done]
    report = report or (lambda record: describe_item(record, key_field))
    with (
        tempfile.TemporaryDirectory(prefix="htc_worker_") as tmp,
        ThreadPoolExecutor(TRANSFER_THREADS) as downloads,
        ThreadPoolExecutor(TRANSFER_THREADS) as uploads,
    ):
        workdir = Path(tmp)
        results = ChunkResults(storage, manifest_key, workdir, uploads, finished)
        fetched = storage.fetch_shared(items, workdir, downloads) if download else ((item, None) for item in items)
        try:
            with closing(fetched):
                for item, local in fetched:
                    started = time.perf_counter()
                    record = {key_field: item, **(defaults or {}), "status": "ok", "error": None}
                    if isinstance(local, Exception):
                        fields, outputs = {"status": "error", "error": str(local)}, []
                    else:
                        fields, outputs = handle(item, local)
                        if local is not None:
                            local.unlink(missing_ok=True)
                    record.update(fields)
                    record.setdefault("seconds", round(time.perf_counter() - started, 4))
                    stored = [(path, prefix + name) for path, name in outputs]
                    record.update(labels, outputs=[key for _, key in stored])
                    results.add(record, stored)
                    print(report(record), flush=True)
        finally:
            results.flush()
    records = results.saved
    ok = sum(r["status"] == "ok" for r in records)
    print(f"{ok} of {len(records)} {noun} done; manifest {manifest_key}", flush=True)
    return records


def run_share(
    handle: Handler,
    *,
    list_env: str = ITEM_LIST_ENV,
    key_field: str = "item",
    download: bool = True,
    report: Callable[[dict], str] | None = None,
) -> int:
    """A batch job's whole work: its share of the batch's list (:func:`job_share`), each item through ``handle``
    (:func:`process_items`). Returns the exit code: 0 once every item has its record, failed or not."""
    share = job_share(list_env)
    process_items(
        share.storage,
        share.items,
        handle,
        run=share.run,
        manifest_name=f"chunk-{share.index:05d}.jsonl",
        labels=share.labels,
        key_field=key_field,
        download=download,
        report=report,
    )
    return 0


def main(program: str, work: Callable[[], int]) -> int:
    """Run a job's ``work``, which returns its exit code: bad settings are one line and exit 2, not a traceback;
    a SIGTERM that stopped :func:`process_items` (which saved what was finished) exits as SIGTERM would."""
    # From the start, not only from process_items on: a container's first process ignores a signal it has no
    # handler for (the kernel's rule for a PID namespace's init), so a job stopped while it reads its settings or
    # hangs on purpose would wait out the grace period for SIGKILL.
    SIGTERM_GUARD.install()
    try:
        return work()
    except UsageError as exc:
        print(f"{program}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except JobStopped:
        print(
            f"{program}: stopped by SIGTERM; the results of the items finished are in task storage",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_STOPPED
