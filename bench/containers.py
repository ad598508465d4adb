"""Benchmark: the same batch as containers and as processes, beside bare ``docker run``, in one run.

One emulator with the Docker engine (``docker=True``) and the tutorial's image
registered from docker/Dockerfile. Project "process" creates the repository but
pushes nothing, so its jobs run as processes; project "container" pushes the
image built from docker/Dockerfile to the emulator's registry, so its jobs run as
containers of it. Both submit the same batch of jobs that start the worker's
interpreter and import its packages (``cv2``, ``boto3``), and wait until every
job is terminal. Beside them, as many bare ``docker run --rm IMAGE true`` and
``docker run --rm IMAGE python -c 'import cv2, boto3'`` as there are jobs, as
many at a time as there are job slots, with the job container's network mode and
limits (host networking, whose run skips the bridge's network setup, about 0.2 s a
run here): what Docker itself costs. It prints each
one's time per slot per job, the container job against the bare ``docker run``
of the same command (the figure to keep near 1), and the size of the image.

Usage: .venv/bin/python bench/containers.py [--jobs 20] [--concurrency 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.results import IDEALISED, Figure, OtherWork, ratio, record  # noqa: E402
from htc_emulator import running  # noqa: E402
from htc_emulator.docker_engine import DockerEngine  # noqa: E402
from tools import container_build  # noqa: E402

IMAGE = "opencv-htc-tutorial:v1"
JOB = {
    "imageName": IMAGE,
    "maxVCpus": 1,
    "maxMemory": 512,
    "execTimeoutSeconds": 600,
    "commands": ["python", "-c", "import cv2, boto3"],
}


def project(http: requests.Session, api: str, name: str) -> tuple[str, str]:
    """A project with the image's repository; returns (project id, registry URI)."""
    project_id = http.post(
        f"{api}/htc/projects", json={"projectName": name, "projectDescription": "bench", "regions": ["AWS_EU_WEST_1"]}
    ).json()["projectId"]
    repo = http.post(f"{api}/htc/projects/{project_id}/container-registry/repo/{IMAGE.split(':')[0]}").json()
    return project_id, repo["registryURI"]


def push(http: requests.Session, api: str, project_id: str, uri: str) -> None:
    password = http.get(f"{api}/htc/projects/{project_id}/container-registry/token").text
    with tempfile.TemporaryDirectory() as config:
        env = {**os.environ, "DOCKER_CONFIG": config}
        subprocess.run(
            ["docker", "login", "-u", "AWS", "--password-stdin", uri.split("/")[0]],
            input=password,
            text=True,
            capture_output=True,
            check=True,
            env=env,
        )
        subprocess.run(["docker", "tag", IMAGE, f"{uri}{IMAGE}"], check=True)
        subprocess.run(["docker", "push", f"{uri}{IMAGE}"], capture_output=True, check=True, env=env)


def batch_seconds(http: requests.Session, api: str, project_id: str, jobs: int) -> float:
    """Submit ``jobs`` jobs and wait until all are terminal; every one must succeed."""
    task_id = http.post(
        f"{api}/htc/projects/{project_id}/tasks", json={"taskName": "bench", "taskDescription": "bench"}
    ).json()["taskId"]
    start = time.perf_counter()
    http.post(
        f"{api}/htc/projects/{project_id}/tasks/{task_id}/jobs/batch",
        json=[{"jobName": "bench", "batchSize": jobs, "htcJobDefinition": JOB}],
    ).raise_for_status()
    while True:
        stats = http.get(f"{api}/htc/projects/{project_id}/tasks/{task_id}/summary-statistics").json()["jobStatuses"]
        if stats["SUCCEEDED"] + stats["FAILED"] >= jobs:
            break
        time.sleep(0.1)
    elapsed = time.perf_counter() - start
    if stats["FAILED"]:
        raise SystemExit(f"{stats['FAILED']} of {jobs} jobs failed in project {project_id}")
    return elapsed


def bare_docker_run(argv: list[str], engine: DockerEngine) -> list[str]:
    """``docker run --rm`` of ``argv`` in a container made as a job's is: the same network mode and limits."""
    job_container = engine.create_parameters(
        IMAGE, argv, {}, "bare", vcpus=JOB["maxVCpus"], memory_mib=JOB["maxMemory"]
    )
    host = job_container["host_config"]
    options = ["--network", host["NetworkMode"]]
    if "CpuShares" in host:
        options += ["--cpu-shares", str(host["CpuShares"])]
    if "Memory" in host:
        options += ["--memory", f"{host['Memory']}b", "--memory-swap", f"{host['MemorySwap']}b"]
    return ["docker", "run", "--rm", *options, IMAGE, *argv]


def bare_docker_run_seconds(argv: list[str], runs: int, slots: int) -> float:
    """Wall time of ``runs`` bare ``docker run --rm`` of ``argv``, ``slots`` at a time; every one must succeed."""
    command = bare_docker_run(argv, DockerEngine())

    def run(_: int) -> None:
        subprocess.run(command, capture_output=True, check=True)

    start = time.perf_counter()
    with ThreadPoolExecutor(slots) as pool:
        list(pool.map(run, range(runs)))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()
    container_build.ensure_image(IMAGE)
    size = int(
        subprocess.run(
            ["docker", "image", "inspect", "--format", "{{.Size}}", IMAGE], capture_output=True, text=True, check=True
        ).stdout
    )
    other_work = OtherWork(engine_is_ours=True)
    settings = {**IDEALISED, "concurrency": args.concurrency, "docker": True}
    with running(images={IMAGE: "docker/Dockerfile"}, **settings) as emu:
        http = requests.Session()
        token = http.get(f"{emu.root_url}/auth/token", headers={"Authorization": f"Token {emu.api_key}"}).json()
        http.headers["Authorization"] = f"Bearer {token['tokenValue']}"
        processes, _ = project(http, emu.api_url, "process")
        containers, uri = project(http, emu.api_url, "container")
        push(http, emu.api_url, containers, uri)
        process_time = batch_seconds(http, emu.api_url, processes, args.jobs)
        container_time = batch_seconds(http, emu.api_url, containers, args.jobs)
        bare_true = bare_docker_run_seconds(["true"], args.jobs, args.concurrency)
        bare_import = bare_docker_run_seconds(JOB["commands"], args.jobs, args.concurrency)
    per_job = {
        name: seconds * args.concurrency / args.jobs
        for name, seconds in (
            ("process", process_time),
            ("container", container_time),
            ("bare true", bare_true),
            ("bare import", bare_import),
        )
    }
    print(f"{args.jobs} jobs, {args.concurrency} at a time, each `python -c 'import cv2, boto3'`")
    print(f"process mode:      {process_time:6.1f} s  ({per_job['process']:.2f} s per job per slot)")
    print(f"container mode:    {container_time:6.1f} s  ({per_job['container']:.2f} s per job per slot)")
    print(f"docker run true:   {bare_true:6.1f} s  ({per_job['bare true']:.2f} s per run per slot)")
    print(f"docker run import: {bare_import:6.1f} s  ({per_job['bare import']:.2f} s per run per slot)")
    against_bare = per_job["container"] / per_job["bare import"]
    print(f"container job / bare docker run of the same command: {against_bare:.2f}x")
    print(f"container / process per-job time: {per_job['container'] / per_job['process']:.1f}x")
    base = container_build.choose_base("docker", ROOT / "docker" / "Dockerfile", log=lambda _: None)
    print(f"image {IMAGE}: {size / 1e6:.0f} MB (base {base})")
    figures = [
        ratio("container job / bare docker run of the same command", against_bare),
        Figure("container job, per job per slot", per_job["container"], "s"),
        Figure("process job, per job per slot", per_job["process"], "s"),
        Figure("bare docker run true, per run per slot", per_job["bare true"], "s"),
        Figure("bare docker run of the import, per run per slot", per_job["bare import"], "s"),
    ]
    record("containers", figures, settings={**settings, "jobs": args.jobs}, others=other_work)


if __name__ == "__main__":
    main()
