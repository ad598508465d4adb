"""Benchmark: the HTC emulator's job throughput and API latency.

1. Submits one batch of 1,000 no-op jobs and times it from the submit call
   until every job is SUCCEEDED or FAILED (polling summary-statistics every
   0.1 s, as a client would); per-job overhead = that time x slots / jobs; and the
   CPU a job cost in the emulator's process and in its job process and supervisor
   (what the machine's cores must find room for, whatever the wall time).
2. Brings the task to 10,000 jobs (nine more batches, all finished), then
   times the list and statistics calls a client makes: p50 and p99 over
   ``--calls`` requests each, over real HTTP on loopback.

Usage: .venv/bin/python bench/emulator.py [--jobs 1000] [--total 10000] [--calls 200]
       [--concurrency N] [--command true]
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.results import IDEALISED, Figure, OtherWork, process_times, record  # noqa: E402
from htc_emulator import running  # noqa: E402


class Client:
    def __init__(self, emu) -> None:
        self.api = emu.api_url
        self.http = requests.Session()
        token = self.http.get(emu.root_url + "/auth/token", headers={"Authorization": f"Token {emu.api_key}"})
        token.raise_for_status()
        self.http.headers["Authorization"] = f"Bearer {token.json()['tokenValue']}"

    def call(self, method: str, path: str, **kwargs):
        response = self.http.request(method, self.api + path, timeout=120, **kwargs)
        response.raise_for_status()
        return response.json() if response.content else None


def submit(client: Client, task_path: str, jobs: int, command: list[str], group: str) -> None:
    body = [
        {
            "jobName": "noop",
            "batchSize": jobs,
            "htcJobDefinition": {"imageName": "noop:v1", "commands": command, "execTimeoutSeconds": 600},
        }
    ]
    client.call("POST", f"{task_path}/jobs/batch", json=body, params={"group": group})


def wait_terminal(client: Client, task_path: str, total: int) -> None:
    while True:
        counts = client.call("GET", f"{task_path}/summary-statistics")["jobStatuses"]
        if counts["SUCCEEDED"] + counts["FAILED"] >= total:
            return
        time.sleep(0.1)


def children_cpu_seconds() -> float:
    """CPU time of this process's children and everything they reaped: the job slots' supervisors and, in their
    reaped children's time, the job processes (the supervisors stay, so they are read from /proc)."""
    reaped = os.times()
    total = reaped.children_user + reaped.children_system
    for task in Path("/proc/self/task").iterdir():
        for child in (task / "children").read_text().split():
            times = process_times(child)
            if times is not None:  # else it ended meanwhile, and was reaped into the total above
                total += times[2] + times[3]
    return total


def latency(client: Client, path: str, params: dict, calls: int) -> tuple[float, float]:
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        client.call("GET", path, params=params)
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.99))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000, help="jobs in the timed batch (max 1000)")
    parser.add_argument("--total", type=int, default=10000, help="jobs in the task for the latency part")
    parser.add_argument("--calls", type=int, default=200, help="requests per measured call")
    parser.add_argument("--concurrency", type=int, default=None, help="job slots (default: CPU count)")
    parser.add_argument("--command", default="true", help="the no-op job command (default: true)")
    args = parser.parse_args()
    command = shlex.split(args.command)
    other_work = OtherWork()
    settings = {**IDEALISED, "concurrency": args.concurrency or os.cpu_count(), "docker": False}

    with tempfile.TemporaryDirectory() as tmp:
        dockerfile = Path(tmp) / "Dockerfile"
        dockerfile.write_text('FROM busybox\nCMD ["true"]\n')
        with running(images={"noop:v1": dockerfile}, **settings) as emu:
            slots = emu.scheduler.concurrency
            client = Client(emu)
            project = client.call("POST", "/htc/projects", json={"projectName": "bench", "projectDescription": "b"})
            project_id = project["projectId"]
            client.call("POST", f"/htc/projects/{project_id}/container-registry/repo/noop")
            task_id = client.call(
                "POST", f"/htc/projects/{project_id}/tasks", json={"taskName": "bench", "taskDescription": "b"}
            )["taskId"]
            task_path = f"/htc/projects/{project_id}/tasks/{task_id}"

            started, emulator_cpu, jobs_cpu = time.perf_counter(), time.process_time(), children_cpu_seconds()
            submit(client, task_path, args.jobs, command, "timed")
            wait_terminal(client, task_path, args.jobs)
            elapsed = time.perf_counter() - started
            # This process is the emulator (API, scheduler) and the poller; the jobs and their supervisors are not.
            emulator_cpu = time.process_time() - emulator_cpu
            jobs_cpu = children_cpu_seconds() - jobs_cpu
            failed = client.call("GET", f"{task_path}/summary-statistics")["jobStatuses"]["FAILED"]

            print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {slots} job slots, job command {command}")
            print(
                f"batch of {args.jobs} no-op jobs: {elapsed:.2f} s from submit to all terminal "
                f"({args.jobs / elapsed:.0f} jobs/s, {failed} failed)"
            )
            print(
                f"per-job overhead: {elapsed * slots / args.jobs * 1000:.1f} ms of a job slot "
                f"({elapsed / args.jobs * 1000:.1f} ms of wall time per job); "
                f"{emulator_cpu / args.jobs * 1000:.1f} ms CPU a job in the emulator's process, "
                f"{jobs_cpu / args.jobs * 1000:.1f} ms in the job processes and their supervisors"
            )
            figures = [
                Figure(f"{args.jobs} no-op jobs, submit to all terminal", elapsed, "s"),
                Figure("emulator CPU per job", emulator_cpu / args.jobs * 1000, "ms"),
                Figure("job process and supervisor CPU per job", jobs_cpu / args.jobs * 1000, "ms"),
            ]

            done = args.jobs
            while done < args.total:
                size = min(1000, args.total - done)
                submit(client, task_path, size, command, f"fill-{done}")
                done += size
            wait_terminal(client, task_path, args.total)

            last_page = str((args.total // 100 - 1) * 100)
            measured = [
                ("jobs list, first page (100)", f"{task_path}/jobs", {}),
                ("jobs list, SIMPLE, group filter", f"{task_path}/jobs", {"group": "timed", "viewType": "SIMPLE"}),
                ("jobs list, status filter", f"{task_path}/jobs", {"status": "SUCCEEDED"}),
                (f"jobs list, page at {last_page}", f"{task_path}/jobs", {"pageIndex": last_page}),
                ("summary-statistics", f"{task_path}/summary-statistics", {}),
                ("group-summary-statistics (1 group)", f"{task_path}/group-summary-statistics", {"group": "timed"}),
                ("group-summary-statistics (all)", f"{task_path}/group-summary-statistics", {}),
            ]
            print(f"latency with {args.total} jobs in the task, {args.calls} calls each:")
            for label, path, params in measured:
                p50, p99 = latency(client, path, params, args.calls)
                print(f"  {label:38s} p50 {p50:7.1f} ms   p99 {p99:7.1f} ms")
                figures.append(Figure(f"{label}, p50 ({args.total} jobs)", p50, "ms"))
    record("emulator", figures, settings={**settings, "command": command}, others=other_work)


if __name__ == "__main__":
    main()
