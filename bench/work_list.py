"""Benchmark: a work list of 100,000 items through the whole path, toward the seed's 5 million images.

The helpers' path, as a user runs it: ``submit_work_list`` (split into batches of at most 1,000
jobs and requests of at most 100 batches, one list per batch in shared storage, submitted under
one group) then ``complete_work_list`` (monitor the group, list its batches, collect every
result, find the missing items, resubmit exactly those; again until none is missing). The jobs
run the worker layer's command worker without a command (each item only accounted for), in
process mode, with simulated failures so that the resubmission happens. What is measured is the
path, not the work: for each step, its calls, wall time, the client's API calls and S3 requests,
and the client's peak Python memory (tracemalloc); for the run, the requests the emulator served
(the jobs' included). At the end every item must be accounted for exactly once, counted from the
raw manifests of the group's batches.

The client runs in a process of its own (``--client``), so that its memory is its own: the
emulator (API, S3 server, scheduler) runs in this one, with the idealised behaviour
(``bench.results.IDEALISED``: statuses change at once, no refresh ticks, no injected faults).

Usage: .venv/bin/python bench/work_list.py [--items 100000] [--items-per-job 40] [--failure-rate 0.02]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import htc_helpers as htc  # noqa: E402
from bench.results import IDEALISED, Figure, OtherWork, record  # noqa: E402

IMAGE = "opencv-htc-tutorial:v1"
# The steps complete_work_list and submit_work_list take, by the helper that does each.
STEPS = {
    "submit_work_list": "split and submit",
    "monitor_group": "monitor",
    "group_batches": "list the group's batches",
    "collect_results": "collect",
    "missing_results": "find the missing",
}


class StepMeter:
    """Wraps the helpers the path calls: per step, its calls, time, API calls, S3 requests and peak memory."""

    def __init__(self, session: htc.HtcSession) -> None:
        self.api_calls = 0
        self.s3_requests = 0
        self.depth = 0
        self.submits = 0
        self.steps: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        session.hooks["response"].append(self._count_api_call)
        original_s3 = htc._s3

        def counted_s3(*args, **kwargs):
            client, bucket, prefix = original_s3(*args, **kwargs)
            client.meta.events.register("before-send.s3", self._count_s3_request)
            return client, bucket, prefix

        htc._s3 = counted_s3
        for name in STEPS:
            setattr(htc, name, self._measured(name, getattr(htc, name)))

    def _count_api_call(self, response, *args, **kwargs) -> None:
        self.api_calls += 1

    def _count_s3_request(self, **kwargs) -> None:
        self.s3_requests += 1

    def _measured(self, name: str, helper):
        def measured(*args, **kwargs):
            if self.depth:  # inside another measured step: counted there
                return helper(*args, **kwargs)
            step = STEPS[name]
            if name == "submit_work_list":
                self.submits += 1
                step = "split and submit" if self.submits == 1 else "resubmit the missing"
            api, s3 = self.api_calls, self.s3_requests
            tracemalloc.reset_peak()
            started = time.perf_counter()
            self.depth += 1
            try:
                return helper(*args, **kwargs)
            finally:
                self.depth -= 1
                seconds = time.perf_counter() - started
                counts = self.steps[step]
                counts["calls"] += 1
                counts["seconds"] += seconds
                counts["api_calls"] += self.api_calls - api
                counts["s3_requests"] += self.s3_requests - s3
                counts["peak_mb"] = max(counts["peak_mb"], tracemalloc.get_traced_memory()[1] / 2**20)

        return measured


def raw_manifest_counts(session, project_id: str, task_id: str, runs: list[str], workdir: Path) -> collections.Counter:
    """How many records each item has across the raw manifests of the given runs (no de-duplication)."""
    counts: collections.Counter = collections.Counter()
    for run in runs:
        keys = htc.list_objects(session, project_id, task_id, prefix=f"runs/{run}/manifests/")
        for path in htc.download_files(session, project_id, keys, workdir, task_id, progress=False):
            counts.update(json.loads(line)["item"] for line in path.read_text().splitlines() if line.strip())
    return counts


def client(args: argparse.Namespace) -> dict:
    """The path, as a user runs it against the emulator the environment names; what each step took."""
    session = htc.HtcSession(os.environ["RESCALE_HTC_API_URL"], os.environ["RESCALE_API_KEY"])
    project_id = session.post(
        "/htc/projects", json={"projectName": "work-list", "projectDescription": "bench/work_list.py"}
    ).json()["projectId"]
    session.post(f"/htc/projects/{project_id}/container-registry/repo/{IMAGE.split(':')[0]}")
    task_id = session.post(
        f"/htc/projects/{project_id}/tasks", json={"taskName": "work-list", "taskDescription": "bench"}
    ).json()["taskId"]
    items = [f"item-{n:07d}" for n in range(args.items)]
    job = {
        "imageName": IMAGE,
        "maxVCpus": 1,
        "maxMemory": 256,
        "execTimeoutSeconds": 3600,
        "commands": ["python", "/opt/command_worker.py"],
        "envs": [
            {"name": "SIMULATE_FAILURES", "value": str(args.failure_rate)},
            {"name": "SIMULATE_HANG_SECONDS", "value": "0"},
        ],
    }
    options = {"items_per_job": args.items_per_job, "jobs_per_batch": args.jobs_per_batch}
    group = "work-list"

    tracemalloc.start()
    meter = StepMeter(session)
    started = time.perf_counter()
    submitted = htc.submit_work_list(session, project_id, task_id, group, items, job, **options)
    results = htc.complete_work_list(
        session,
        project_id,
        task_id,
        group,
        items,
        job,
        max_rounds=args.max_rounds,
        interval=args.interval,
        progress=False,
        **options,
    )
    total = time.perf_counter() - started
    tracemalloc.stop()

    missing = htc.missing_results(items, results)
    batches = htc.group_batches(session, project_id, task_id, group)
    statuses = htc.status_counts(htc.get_all_jobs(session, project_id, task_id, group))
    with tempfile.TemporaryDirectory() as tmp:
        counts = raw_manifest_counts(session, project_id, task_id, [b["run"] for b in batches], Path(tmp))
    return {
        "items": len(items),
        "first_batches": [b["jobs"] for b in submitted],
        "batches": len(batches),
        "jobs": sum(b["jobs"] for b in batches),
        "failed_jobs": statuses["FAILED"],
        "rounds": meter.submits,
        "seconds": total,
        "missing": len(missing),
        "recorded_once": sum(1 for item in items if counts[item] == 1),
        "recorded_more": sum(1 for n in counts.values() if n > 1),
        "unknown": len(set(counts) - set(items)),
        "steps": {step: dict(counts) for step, counts in meter.steps.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000, help="items in the work list (default 100,000)")
    parser.add_argument("--items-per-job", type=int, default=40, help="items a job takes (default 40)")
    parser.add_argument("--jobs-per-batch", type=int, default=1000, help="jobs a batch holds (default 1,000)")
    parser.add_argument("--failure-rate", type=float, default=0.02, help="share of jobs failing (default 0.02)")
    parser.add_argument("--max-rounds", type=int, default=6, help="resubmissions at most (default 6)")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between polls (default 0.5)")
    parser.add_argument("--concurrency", type=int, default=None, help="job slots (default: CPU count)")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        print(json.dumps(client(args)))
        return

    from htc_emulator import running

    other_work = OtherWork()
    cores = os.cpu_count() or 1
    settings = {**IDEALISED, "concurrency": args.concurrency or cores, "docker": False}
    served: collections.Counter = collections.Counter()
    with running(images={IMAGE: "docker/Dockerfile"}, **settings) as emu:
        pick = emu.faults.pick

        def counting_pick(target: str, path: str):
            served[target] += 1
            return pick(target, path)

        emu.faults.pick = counting_pick  # every API and S3 request passes here; none is faulted
        command = [sys.executable, __file__, "--client", *sys.argv[1:]]
        done = subprocess.run(command, env={**os.environ, **emu.env()}, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"the client failed:\n{done.stderr[-3000:]}")
        run = json.loads(done.stdout.splitlines()[-1])

    print(
        f"{run['items']:,} items, {args.items_per_job} a job, first submit {run['first_batches']} jobs; "
        f"{run['batches']} batches and {run['jobs']:,} jobs in all, {run['failed_jobs']} failed on purpose "
        f"({args.failure_rate:.0%}), {run['rounds'] - 1} resubmission(s); {settings['concurrency']} job slots"
    )
    print(f"{'step':28s} {'calls':>5s} {'seconds':>8s} {'API calls':>9s} {'S3 requests':>11s} {'peak MB':>8s}")
    for step, counts in run["steps"].items():
        print(
            f"{step:28s} {counts['calls']:5d} {counts['seconds']:8.2f} {counts['api_calls']:9d} "
            f"{counts['s3_requests']:11d} {counts['peak_mb']:8.1f}"
        )
    print(f"{'whole path':28s} {'':5s} {run['seconds']:8.2f}")
    print(
        f"served by the emulator, jobs included: {served['api']:,} API requests "
        f"({served['api'] / run['jobs']:.1f} a job), {served['storage']:,} S3 requests "
        f"({served['storage'] / run['jobs']:.1f} a job)"
    )
    accounted = run["missing"] == 0 and run["recorded_once"] == run["items"] and not run["recorded_more"]
    print(
        f"accounted for: {run['recorded_once']:,} of {run['items']:,} items exactly once: "
        f"{'yes' if accounted else 'NO'} ({run['missing']} missing, {run['recorded_more']} more than once, "
        f"{run['unknown']} unknown)"
    )
    steps = run["steps"]
    figures = [
        Figure("whole path, submit to complete", run["seconds"], "s"),
        Figure("jobs", run["jobs"], "", better="higher", noise=0.5),
        *(
            Figure(f"{step}: seconds", counts["seconds"], "s")
            for step, counts in steps.items()
            if step != "monitor"  # the monitor waits for the jobs: the whole path's time says it
        ),
        *(Figure(f"{step}: API calls", counts["api_calls"], "", noise=0.5) for step, counts in steps.items()),
        *(Figure(f"{step}: S3 requests", counts["s3_requests"], "", noise=0.5) for step, counts in steps.items()),
        *(Figure(f"{step}: peak MB", counts["peak_mb"], "MB") for step, counts in steps.items()),
        Figure("API requests served per job", served["api"] / run["jobs"], "", noise=0.25),
        Figure("S3 requests served per job", served["storage"] / run["jobs"], "", noise=0.25),
        Figure("every item accounted for once", float(accounted), "", better="higher", noise=0),
    ]
    record(f"work-list-{run['items']}", figures, settings=settings, others=other_work)
    if not accounted:
        sys.exit(1)


if __name__ == "__main__":
    main()
