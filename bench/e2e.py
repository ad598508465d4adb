"""Benchmark: the seed's scale end to end through the emulator, against bare detection of the same images.

In one run, over the same N images (derived by ``face_data.scale_up``):

* bare:  the Haar detection loop alone (read, detect; one OpenCV thread), in this process;
* bare on every core: the same loop in one process per core at once, each over its share of the
  images: what the cores deliver together (shared caches, memory and the host's scheduling make it
  slower than one core's time divided by the cores);
* batch: the tutorial's way, with the project's helpers and worker: upload the images and the
  image list to project shared storage, submit one batch of B ``face_tagger`` jobs to the emulator
  (process mode, as many job slots as cores), wait until every job is terminal, collect the results.

It prints the batch time against its limit (bare time / cores), the ratio, the batch against bare
detection on every core at once, the per-job overhead
(a job slot's time per job minus the job's share of bare detection), where the batch's CPU went
(the jobs, the emulator's process, idle cores), the upload and collect times, and checks from the
raw manifests that every image is accounted for exactly once.

Usage: .venv/bin/python bench/e2e.py [--images 5000] [--jobs 1000] [--concurrency N]
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import htc_helpers as htc  # noqa: E402
from bench.results import IDEALISED, Figure, OtherWork, ratio, record  # noqa: E402
from face_data import scale_up  # noqa: E402
from face_tagger import face_tagger as ft  # noqa: E402
from htc_emulator import running  # noqa: E402

IMAGE = "opencv-htc-tutorial:v1"


def scaled_images(count: int, dest: Path) -> list[Path]:
    """``count`` derived images in ``dest``, derived again only when they are not all there."""
    images = sorted((dest / "images").glob("*.jpg"))
    if len(images) != count or not (dest / "ground_truth.json").is_file():
        scale_up.derive(ROOT / "data", dest, count)
        images = sorted((dest / "images").glob("*.jpg"))
    return images


def bare_detection(images: list[Path]) -> float:
    """Seconds to read and detect every image, one after another, with the worker's detector."""
    cv2.setNumThreads(1)
    detector = ft.FaceDetector.load()
    started = time.perf_counter()
    for path in images:
        detector.detect(ft.read_image(path))
    return time.perf_counter() - started


def _detect_share(paths: list[Path], ready, spans) -> None:
    """Detect faces in ``paths`` once every process is ready; put (start, end) on the monotonic clock."""
    cv2.setNumThreads(1)
    detector = ft.FaceDetector.load()
    ready.wait()  # every process has loaded its detector: they start together
    started = time.monotonic()
    for path in paths:
        detector.detect(ft.read_image(path))
    spans.put((started, time.monotonic()))


def parallel_detection(images: list[Path], processes: int) -> float:
    """Seconds from the first start to the last end of ``processes`` processes detecting their shares at once."""
    context = multiprocessing.get_context("fork")
    ready, spans = context.Barrier(processes), context.SimpleQueue()
    workers = [
        context.Process(target=_detect_share, args=(images[i::processes], ready, spans)) for i in range(processes)
    ]
    for worker in workers:
        worker.start()
    finished = [spans.get() for _ in workers]
    for worker in workers:
        worker.join()
    return max(end for _, end in finished) - min(start for start, _ in finished)


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, all) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as stat:
        ticks = [int(field) for field in stat.readline().split()[1:9]]
    idle = ticks[3] + ticks[4]  # idle and iowait
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK"), sum(ticks) / os.sysconf("SC_CLK_TCK")


def batch_definition(image_list: str, jobs: int) -> dict:
    return {
        "jobName": "e2e",
        "batchSize": jobs,
        "htcJobDefinition": {
            "imageName": IMAGE,
            "maxVCpus": 1,
            "maxMemory": 512,
            "commands": ["python", "/opt/face_tagger.py"],
            "execTimeoutSeconds": 3600,
            "envs": [
                {"name": "IMG_OBJKEY_LIST", "value": image_list},
                {"name": "BATCH_JOB_ARRAY_SIZE", "value": str(jobs)},
            ],
        },
    }


def project_and_task(session, name: str) -> tuple[str, str]:
    """A project holding the worker image's repository, and a task in it: their ids."""
    project_id = session.post("/htc/projects", json={"projectName": name, "projectDescription": "bench"}).json()[
        "projectId"
    ]
    session.post(f"/htc/projects/{project_id}/container-registry/repo/{IMAGE.split(':')[0]}")
    task = session.post(f"/htc/projects/{project_id}/tasks", json={"taskName": name, "taskDescription": "bench"})
    return project_id, task.json()["taskId"]


def upload_with_list(session, project_id: str, images: list[Path], workdir: Path) -> tuple[list[str], str]:
    """The images in shared storage, then the list of their keys that the jobs share out: (keys, the list's name)."""
    keys = htc.upload_files(session, project_id, images, progress=False)
    image_list = workdir / "image_list.dat"
    image_list.write_text("\n".join(keys) + "\n")
    htc.upload_files(session, project_id, [image_list], progress=False)
    return keys, image_list.name


def run_batch(session, project_id: str, task_id: str, image_list: str, jobs: int, group: str) -> None:
    """Submit a batch of ``jobs`` face_tagger jobs over ``image_list`` and wait until every one has ended."""
    session.post(
        f"/htc/projects/{project_id}/tasks/{task_id}/jobs/batch",
        params={"group": group},
        json=[batch_definition(image_list, jobs)],
    )
    htc.monitor_group(session, project_id, task_id, group, expected_jobs=jobs, interval=0.2, progress=False)


def manifest_counts(session, project_id: str, task_id: str, workdir: Path) -> collections.Counter:
    """How many times each image appears across the raw manifests (no de-duplication)."""
    # The batch's namespace: runs/<its run id>/manifests/ (htc_worker).
    listed = htc.list_objects(session, project_id, task_id, prefix="runs/")
    keys = [k for k in listed if "/manifests/" in k and k.endswith(".jsonl")]
    counts: collections.Counter = collections.Counter()
    for path in htc.download_files(session, project_id, keys, workdir, task_id, progress=False):
        counts.update(json.loads(line)["image"] for line in path.read_text().splitlines() if line.strip())
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000, help="images, from face_data.scale_up (default 5000)")
    parser.add_argument("--jobs", type=int, default=1000, help="jobs in the batch (default 1000, at most 1000)")
    parser.add_argument("--concurrency", type=int, default=None, help="job slots (default: CPU count)")
    parser.add_argument(
        "--scaled", type=Path, default=None, help="where the derived images go (default build/scaled-N)"
    )
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    images = scaled_images(args.images, args.scaled or ROOT / "build" / f"scaled-{args.images}")
    print(
        f"{len(images)} images over {args.jobs} jobs, {cores} cores, python {sys.version.split()[0]}, "
        f"OpenCV {cv2.__version__}"
    )

    other_work = OtherWork()
    settings = {**IDEALISED, "concurrency": args.concurrency or cores, "docker": False}
    bare = bare_detection(images)
    limit = bare / cores
    together = parallel_detection(images, cores)
    with (
        running(images={IMAGE: "docker/Dockerfile"}, **settings) as emu,
        tempfile.TemporaryDirectory() as tmp,
    ):
        slots = emu.scheduler.concurrency
        os.environ.update(emu.env())  # the helpers find the S3 endpoint there, as the notebook's do
        session = htc.HtcSession(emu.api_url, emu.api_key)
        project_id, task_id = project_and_task(session, "e2e")

        started = time.perf_counter()
        keys, image_list = upload_with_list(session, project_id, images, Path(tmp))
        upload = time.perf_counter() - started

        started, emulator_cpu, (machine_busy, machine_all) = (
            time.perf_counter(),
            time.process_time(),
            machine_cpu_seconds(),
        )
        run_batch(session, project_id, task_id, image_list, args.jobs, "e2e")
        batch = time.perf_counter() - started
        # This process is the emulator (API, S3 server, scheduler) and the poller; the jobs run outside it.
        emulator_cpu = time.process_time() - emulator_cpu
        machine_busy, machine_all = (
            now - then for now, then in zip(machine_cpu_seconds(), (machine_busy, machine_all), strict=True)
        )

        started = time.perf_counter()
        results = htc.collect_results(session, project_id, task_id)
        collect = time.perf_counter() - started
        seen = manifest_counts(session, project_id, task_id, Path(tmp) / "manifests")
        statistics = session.get(f"/htc/projects/{project_id}/tasks/{task_id}/summary-statistics").json()

    failed = statistics["jobStatuses"]["FAILED"]
    slot_per_job = batch * slots / args.jobs
    overhead = slot_per_job - bare / args.jobs
    missing = htc.missing_results(keys, results)
    twice = sorted(k for k, n in seen.items() if n > 1)
    strangers = sorted(set(seen) - set(keys))
    print(f"bare detection:  {bare:8.1f} s in one process; limit = bare / {cores} cores = {limit:.1f} s")
    print(
        f"batch:           {batch:8.1f} s from submit to all {args.jobs} jobs terminal ({failed} failed), "
        f"{slots} job slots"
    )
    print(f"ratio:           {batch / limit:8.2f}x the limit")
    print(
        f"every core:      {together:8.1f} s of bare detection in {cores} processes at once "
        f"({together / limit:.2f}x the limit): the batch is {batch / together:.2f}x that"
    )
    print(
        f"per-job overhead:{overhead:8.3f} s of a job slot ({slot_per_job:.3f} s a job, "
        f"{bare / args.jobs:.3f} s of it detection: overhead = {overhead / (bare / args.jobs):.2f}x "
        f"a job's bare detection)"
    )
    others = machine_busy - emulator_cpu
    print(
        f"where it went:   {others:8.1f} s CPU in the jobs (and anything else running), {bare:.1f} s of it "
        f"bare detection; {emulator_cpu:.1f} s CPU in the emulator ({emulator_cpu / args.jobs * 1000:.0f} ms a job); "
        f"{machine_all - machine_busy:.1f} s of the {cores} cores idle"
    )
    print(f"upload:          {upload:8.1f} s ({len(keys)} images and the image list to shared storage)")
    print(f"collect:         {collect:8.1f} s (collect_results, {len(results)} rows)")
    accounted = not missing and not twice and not strangers and len(seen) == len(keys)
    print(
        f"accounted for:   {len(seen)} of {len(keys)} images, each exactly once: {'yes' if accounted else 'NO'}"
        f" ({len(missing)} without a result, {len(twice)} more than once, {len(strangers)} unknown)"
    )
    figures = [
        ratio(f"{len(keys)} photos over {args.jobs} jobs, batch / limit", batch / limit, "bare detection / cores"),
        ratio("batch / bare detection on every core at once", batch / together, "the cores' own parallel limit"),
        Figure("batch, submit to all terminal", batch, "s"),
        Figure("per-job overhead (a slot's time beyond detection)", overhead, "s"),
        Figure("emulator CPU per job", emulator_cpu / args.jobs * 1000, "ms"),
        Figure("every photo accounted for once", float(accounted and not failed), "", better="higher", noise=0),
    ]
    record(f"e2e-{len(keys)}x{args.jobs}", figures, settings=settings, others=other_work)
    if not accounted or failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
