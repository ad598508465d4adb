"""Profile: what one container-mode job pays before its work, step by step (prints; records no figure).

A container job is a fresh container and a fresh interpreter, where a process-mode job forks a
template that has OpenCV, boto3 and botocore's S3 model loaded already. Two parts, each the
median of ``--runs``:

- the engine: the container's create, attach and start, its exit until the wait returns, the
  inspect and the remove, through the engine's API as the emulator makes them
  (:class:`htc_emulator.docker_engine.DockerEngine`) for a container running ``true``; beside it
  a bare ``docker run --rm`` of ``true`` with host networking (the job's) and on the default bridge;
- the interpreter inside the image: the CPU each step of the worker's start-up takes (``import cv2``,
  ``import boto3``, the worker's own modules, the S3 client), in one container, one fresh
  interpreter per run.

Every container it makes is removed. Run it while the machine is quiet, or read the shares.

Usage: .venv/bin/python bench/container_startup.py [--runs 15]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from htc_emulator.docker_engine import DockerEngine  # noqa: E402
from tools import container_build  # noqa: E402

IMAGE = "opencv-htc-tutorial:v1"
# Run inside the image by one interpreter: starts one fresh interpreter per run and times its steps.
STEPS = r"""
import json, statistics, subprocess, sys
step = '''
import json, sys, time
sys.path.insert(0, "/opt")
clock = time.process_time
marks = [clock()]
import cv2; marks.append(clock())
import boto3; marks.append(clock())
import haar_cascades, htc_worker; marks.append(clock())
boto3.client("s3", region_name="us-east-1", aws_access_key_id="a", aws_secret_access_key="b"); marks.append(clock())
print(json.dumps(marks))
'''
runs = [json.loads(subprocess.run([sys.executable, "-c", step], capture_output=True, text=True, check=True).stdout)
        for _ in range(int(sys.argv[1]))]
names = ["interpreter start", "import cv2 (and numpy)", "import boto3", "the worker's modules", "the S3 client"]
print(json.dumps({name: statistics.median((run[0] if i == 0 else run[i] - run[i - 1]) for run in runs)
                  for i, name in enumerate(names)}))
"""


def median_ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:6.0f} ms"


def engine_steps(engine: DockerEngine, runs: int) -> dict[str, list[float]]:
    """Wall time of each API step of a container that runs ``true``, as the emulator makes a job's."""
    steps: dict[str, list[float]] = {
        name: [] for name in ("create", "attach and start", "exit until wait returns", "inspect", "remove", "all")
    }
    for run in range(runs):
        parameters = engine.create_parameters(IMAGE, ["true"], {}, f"startup-{engine.instance}-{run}", vcpus=1)
        marks = [time.perf_counter()]
        container = engine.api.create_container(**parameters)["Id"]
        marks.append(time.perf_counter())
        attached = engine.api.attach_socket(container, params={"stdout": 1, "stderr": 1, "stream": 1})
        engine.api.start(container)
        marks.append(time.perf_counter())
        engine.api.wait(container)
        marks.append(time.perf_counter())
        engine.api.inspect_container(container)
        marks.append(time.perf_counter())
        engine.api.remove_container(container, force=True)
        marks.append(time.perf_counter())
        getattr(attached, "_response", attached).close()
        for name, began, ended in zip(steps, marks, marks[1:], strict=False):
            steps[name].append(ended - began)
        steps["all"].append(marks[-1] - marks[0])
    return steps


def bare_run_seconds(options: list[str], runs: int) -> list[float]:
    seconds = []
    for _ in range(runs):
        began = time.perf_counter()
        subprocess.run(["docker", "run", "--rm", *options, IMAGE, "true"], capture_output=True, check=True)
        seconds.append(time.perf_counter() - began)
    return seconds


def interpreter_steps(runs: int) -> dict[str, float]:
    """CPU seconds of each step of the worker's start-up inside the image (medians)."""
    result = subprocess.run(
        ["docker", "run", "--rm", "--network", "host", IMAGE, "python", "-c", STEPS, str(runs)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    container_build.ensure_image(IMAGE)
    engine = DockerEngine()
    try:
        steps = engine_steps(engine, args.runs)
    finally:
        engine.remove_all()
        engine.close()
    print(f"the engine, a container running `true` through its API (median of {args.runs}, wall time):")
    for name, seconds in steps.items():
        print(f"  {name:26s} {median_ms(seconds)}")
    print(f"  {'docker run --rm, host net':26s} {median_ms(bare_run_seconds(['--network', 'host'], args.runs))}")
    print(f"  {'docker run --rm, bridge':26s} {median_ms(bare_run_seconds([], args.runs))}")
    print(f"the worker's start-up inside the image (median of {args.runs}, CPU time):")
    interpreter = interpreter_steps(args.runs)
    for name, seconds in interpreter.items():
        print(f"  {name:26s} {seconds * 1000:6.0f} ms")
    print(f"  {'all':26s} {sum(interpreter.values()) * 1000:6.0f} ms")


if __name__ == "__main__":
    main()
