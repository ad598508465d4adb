"""Profile: the CPU a ``face_tagger`` job costs in process mode, in its processes and the emulator's (prints only).

``bench/e2e.py``'s batch alone, in a cpuacct cgroup of its own (cgroup v1, needs root): the CPU
time the batch's processes took (the jobs, their supervisors, the template, the emulator) from
submit to all terminal, per job, and the emulator's own process's share. CPU time moves much less
with other programs' load than a batch's wall time or bare detection do, so two versions of the
code can be compared on a shared machine, run after run, alternating. ``--photos 1`` over many
jobs leaves most shares empty: what a job costs beyond its photos (token, client, list, manifest).

Usage: .venv/bin/python bench/job_cpu.py [--images 1000] [--photos N] [--jobs 200]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import htc_helpers as htc  # noqa: E402
from bench.e2e import IMAGE, project_and_task, run_batch, scaled_images, upload_with_list  # noqa: E402
from bench.results import IDEALISED  # noqa: E402
from htc_emulator import running  # noqa: E402

CPUACCT = Path("/sys/fs/cgroup/cpuacct")
# The template imports OpenCV, boto3 and the worker while no job waits: the batch starts once it has.
WARM_UP_SECONDS = 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000, help="derived images (face_data.scale_up), default 1000")
    parser.add_argument("--photos", type=int, default=None, help="list only the first N of them (default: all)")
    parser.add_argument("--jobs", type=int, default=200, help="jobs in the batch (default 200)")
    args = parser.parse_args()
    images = scaled_images(args.images, ROOT / "build" / f"scaled-{args.images}")[: args.photos]
    group = CPUACCT / f"htc-job-cpu-{os.getpid()}"
    group.mkdir()
    try:
        (group / "cgroup.procs").write_text(str(os.getpid()))  # the emulator and every job start below this one
        run(images, args.jobs, group)
    finally:
        (CPUACCT / "cgroup.procs").write_text(str(os.getpid()))
        for _ in range(50):  # a supervisor may still be ending
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def run(images: list[Path], jobs: int, group: Path) -> None:
    def usage() -> float:
        return int((group / "cpuacct.usage").read_text()) / 1e9

    settings = {**IDEALISED, "concurrency": os.cpu_count() or 1, "docker": False}
    with running(images={IMAGE: "docker/Dockerfile"}, **settings) as emu, tempfile.TemporaryDirectory() as tmp:
        os.environ.update(emu.env())
        session = htc.HtcSession(emu.api_url, emu.api_key)
        project_id, task_id = project_and_task(session, "cpu")
        keys, image_list = upload_with_list(session, project_id, images, Path(tmp))
        time.sleep(WARM_UP_SECONDS)
        started, cpu, emulator_cpu = time.perf_counter(), usage(), time.process_time()
        run_batch(session, project_id, task_id, image_list, jobs, "cpu")
        wall, cpu, emulator_cpu = (
            time.perf_counter() - started,
            usage() - cpu,
            time.process_time() - emulator_cpu,
        )
        failed = session.get(f"/htc/projects/{project_id}/tasks/{task_id}/summary-statistics").json()
    print(
        f"{len(keys)} photos over {jobs} jobs: {wall:.1f} s; CPU a job {cpu / jobs * 1000:.1f} ms: the jobs' "
        f"{(cpu - emulator_cpu) / jobs * 1000:.1f} ms, the emulator's {emulator_cpu / jobs * 1000:.1f} ms; "
        f"{failed['jobStatuses']['FAILED']} failed"
    )


if __name__ == "__main__":
    main()
