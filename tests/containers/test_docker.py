"""The worker image: its definition against the project, then (where an engine answers) the built image itself."""

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest

from face_tagger import htc_worker as hw

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "docker" / "Dockerfile").read_text()


def pins(text: str) -> dict[str, str]:
    return {
        name.lower(): version for name, version in re.findall(r"([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s\\]+)", text)
    }


def project_requirements() -> list[str]:
    """Every requirement pyproject.toml names: the base set and every extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]


def test_every_docker_pin_matches_requirements():
    image_pins = pins(DOCKERFILE)
    project_pins = pins((ROOT / "constraints.txt").read_text()) | pins("\n".join(project_requirements()))
    assert image_pins, "the Dockerfile pins nothing"
    for name in ("opencv-python-headless", "boto3", "requests", "numpy"):
        assert name in image_pins, f"{name} is not pinned in the Dockerfile"
    mismatched = {n: (v, project_pins.get(n)) for n, v in image_pins.items() if project_pins.get(n) != v}
    assert not mismatched, f"Dockerfile pins differ from pyproject.toml and constraints.txt: {mismatched}"


def test_every_copy_source_exists():
    copies = re.findall(r"^COPY\s+(?:--\S+\s+)*(\S+)\s+(\S+)", DOCKERFILE, re.MULTILINE)
    assert ("face_tagger/face_tagger.py", "/opt/face_tagger.py") in copies
    for source, _ in copies:
        assert (ROOT / source).exists(), f"COPY source {source} does not exist"


def test_image_is_slim_by_default_runs_as_non_root_and_uses_no_plain_http_index():
    assert re.search(r"^ARG BASE_IMAGE=python:3\.12-slim$", DOCKERFILE, re.MULTILINE)
    assert re.findall(r"^FROM\s+(.+)$", DOCKERFILE, re.MULTILINE) == ["${BASE_IMAGE}"]
    users = re.findall(r"^USER\s+(\S+)", DOCKERFILE, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    assert "http://" not in DOCKERFILE and "--trusted-host" not in DOCKERFILE


# --- the built image (needs a Docker engine: skipped without one, a failure under HTC_REQUIRE_DOCKER=1) ---


def docker(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=600, **kwargs)


def test_image_runs_as_its_non_root_user(worker_image):
    result = docker("run", "--rm", worker_image, "id", "-un")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "tagger"


def test_image_has_exactly_the_pinned_packages(worker_image):
    frozen = docker("run", "--rm", worker_image, "pip", "freeze")
    assert frozen.returncode == 0, frozen.stderr
    assert pins(frozen.stdout) == pins(DOCKERFILE)


def test_a_job_in_the_image_loads_no_model_but_s3_and_compiles_none_of_the_workers_modules(worker_image):
    """Each job is a fresh interpreter in a fresh container: what it would redo in every job is done at build."""
    # Nothing written here: whether the import found bytecode compiled at build is what is asked.
    probe = (
        "import os, sys; sys.path.insert(0, '/opt'); sys.dont_write_bytecode = True; import boto3, htc_worker; "
        "print(boto3.session.Session().get_available_services()); print(os.path.isfile(htc_worker.__cached__))"
    )
    result = docker("run", "--rm", worker_image, "python", "-c", probe)
    assert result.returncode == 0, result.stderr
    services, compiled = result.stdout.splitlines()
    assert services == "['s3']"
    assert compiled == "True", "the worker's modules are compiled again in every job (/opt has no __pycache__)"


def test_image_carries_no_documentation_manual_pages_or_translations(worker_image):
    # Every push compresses the whole image again: a slim base leaves these out (copyright files stay).
    listing = docker(
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "sh",
        worker_image,
        "-c",
        "find /usr/share/doc /usr/share/man /usr/share/info /usr/share/locale -type f 2>/dev/null",
    )
    assert listing.returncode == 0, listing.stderr
    kept = [path for path in listing.stdout.split() if not path.endswith("/copyright")]
    assert [path for path in kept if path != "/usr/share/locale/locale.alias"] == [], kept[:10]


def test_build_context_holds_only_what_the_image_needs(worker_image):
    """.dockerignore: without it every build sends .venv and data/ (hundreds of MB)."""
    probe = f"FROM {worker_image}\nCOPY . /tmp/context\n"
    built = docker("build", "--quiet", "-t", "htc-context-probe", "-f", "-", str(ROOT), input=probe)
    assert built.returncode == 0, built.stderr
    try:
        listed = docker("run", "--rm", "htc-context-probe", "find", "/tmp/context", "-type", "f")
        assert sorted(listed.stdout.split()) == [
            "/tmp/context/face_tagger/command_worker.py",
            "/tmp/context/face_tagger/face_tagger.py",
            "/tmp/context/face_tagger/haar_cascades.py",
            "/tmp/context/face_tagger/htc_worker.py",
        ]
    finally:
        docker("rmi", "htc-context-probe")


def test_worker_in_the_image_counts_the_same_faces_as_on_the_host(worker_image, tmp_path):
    truth = json.loads((ROOT / "data" / "ground_truth.json").read_text())["images"]
    labelled = sorted(name for name, entry in truth.items() if entry.get("boxes"))
    assert len(labelled) == 9
    images = ROOT / "data" / "images"
    host = subprocess.run(
        [
            sys.executable,
            str(ROOT / "face_tagger" / "face_tagger.py"),
            "--json",
            "--output-dir",
            str(tmp_path),
            *(str(images / n) for n in labelled),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    inside = docker(
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        f"{images}:/data:ro",
        worker_image,
        "python",
        "/opt/face_tagger.py",
        "--json",
        "--output-dir",
        "/tmp",
        *(f"/data/{n}" for n in labelled),
    )
    assert host.returncode == 0 and inside.returncode == 0, (host.stderr, inside.stderr)

    def counts(stdout):
        return {Path(r["image"]).name: r["faces"] for r in map(json.loads, stdout.splitlines())}

    assert counts(inside.stdout) == counts(host.stdout)
    assert sum(counts(host.stdout).values()) > 0


# --- the emulator's real registry and jobs as containers -------------------------------


@pytest.fixture(scope="module")
def docker_emu(worker_image, client_for):
    """An emulator with the Docker engine and a real registry (a short time scale for timeouts)."""
    from htc_emulator import running

    with running(docker=True, time_scale=0.05, concurrency=2) as emu:
        yield emu, client_for(emu)
    leftover = docker("ps", "--all", "--quiet", "--filter", f"label=htc-emulator.{emu.scheduler.docker.instance}")
    assert leftover.stdout.split() == [], "containers outlived the emulator"
    names = docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    registry = emu.scheduler.container_registry.host
    assert [name for name in names if name.startswith(f"{registry}/")] == [], "image names outlived the registry"


@pytest.fixture()
def docker_config(tmp_path):
    """A private docker client configuration: logins here never touch the user's."""
    return {"DOCKER_CONFIG": str(tmp_path / "docker-config"), "PATH": "/usr/local/bin:/usr/bin:/bin"}


def login(host: str, password: str, env: dict) -> subprocess.CompletedProcess:
    return docker("login", "--username", "AWS", "--password-stdin", host, input=password, env=env)


def pushed_project(emu, api, worker_image, env, repository="opencv-htc-tutorial") -> tuple[str, str]:
    """A project whose registry holds the worker image; returns (project id, registry URI)."""
    project_id = api.new_project(repositories=[repository])
    uri = api.ok("POST", f"/htc/projects/{project_id}/container-registry/repo/{repository}")["registryURI"]
    password = api.get(f"/htc/projects/{project_id}/container-registry/token").text
    assert login(uri.split("/")[0], password, env).returncode == 0
    target = f"{uri}{repository}:v1"
    assert docker("tag", worker_image, target).returncode == 0
    pushed = docker("push", target, env=env)
    assert pushed.returncode == 0, pushed.stderr
    return project_id, uri


def test_registry_token_logs_in_and_nothing_else_does(docker_emu, docker_config):
    emu, api = docker_emu
    project_id = api.new_project(repositories=["opencv-htc-tutorial"])
    host = api.ok("GET", f"/htc/projects/{project_id}")["containerRegistry"].split("/")[0]
    assert host.startswith("127.0.0.1:")
    password = api.get(f"/htc/projects/{project_id}/container-registry/token").text
    assert login(host, password, docker_config).returncode == 0
    refused = login(host, password[:-2] + "xx", docker_config)
    assert refused.returncode != 0 and "unauthorized" in refused.stderr.lower()


def test_a_push_makes_the_image_ready_and_another_projects_token_may_not_push(docker_emu, worker_image, docker_config):
    emu, api = docker_emu
    project_id = api.new_project(repositories=["opencv-htc-tutorial"])
    status = f"/htc/projects/{project_id}/container-registry/images/opencv-htc-tutorial:v1"
    assert api.get(status).status_code == 404
    uri = api.ok("GET", f"/htc/projects/{project_id}")["containerRegistry"]
    stranger = api.new_project(repositories=["opencv-htc-tutorial"])
    foreign = api.get(f"/htc/projects/{stranger}/container-registry/token").text
    assert login(uri.split("/")[0], foreign, docker_config).returncode == 0
    target = f"{uri}opencv-htc-tutorial:v1"
    assert docker("tag", worker_image, target).returncode == 0
    denied = docker("push", target, env=docker_config)
    assert denied.returncode != 0 and "denied" in (denied.stderr + denied.stdout).lower()
    assert api.get(status).status_code == 404

    pushed_project_id, _ = pushed_project(emu, api, worker_image, docker_config)
    listed = api.ok("GET", f"/htc/projects/{pushed_project_id}/container-registry/images")
    assert listed["images"] == ["opencv-htc-tutorial:v1"]
    # As on the platform, the pushed image is replicated (a 404, then PENDING) before it is READY.
    api.wait_image_ready(pushed_project_id, "opencv-htc-tutorial:v1")
    ready = f"/htc/projects/{pushed_project_id}/container-registry/images/opencv-htc-tutorial:v1"
    assert api.ok("GET", ready)["status"] == "READY"


def container_job(commands, *, memory=512, timeout=600, envs=()):
    return {
        "imageName": "opencv-htc-tutorial:v1",
        "maxVCpus": 1,
        "maxMemory": memory,
        "commands": commands,
        "execTimeoutSeconds": timeout,
        "envs": [{"name": k, "value": v} for k, v in envs],
    }


def containers_of(emu) -> list[str]:
    return docker(
        "ps", "--all", "--quiet", "--filter", f"label=htc-emulator.{emu.scheduler.docker.instance}"
    ).stdout.split()


def test_jobs_run_as_containers_with_limits_and_leave_none_behind(docker_emu, worker_image, docker_config):
    emu, api = docker_emu
    project_id, _ = pushed_project(emu, api, worker_image, docker_config)
    task_id = api.new_task(project_id)
    probe = (
        "import os; print('user', os.getuid(), 'index', os.environ['AWS_BATCH_JOB_ARRAY_INDEX'], "
        "'memory', open('/sys/fs/cgroup/memory.max').read().strip() if os.path.exists('/sys/fs/cgroup/memory.max')"
        " else open('/sys/fs/cgroup/memory/memory.limit_in_bytes').read().strip())"
    )
    parent = api.submit(project_id, task_id, container_job(["python", "-c", probe], memory=256))
    api.wait_terminal(project_id, task_id, 1, timeout=300)
    job = api.job(project_id, task_id, f"{parent}:0")
    logs = api.logs(project_id, task_id, f"{parent}:0")
    assert job["status"] == "SUCCEEDED", (job, logs)
    assert logs == [f"user 10001 index 0 memory {256 * 1024 * 1024}"]
    assert containers_of(emu) == []


def test_a_job_over_its_memory_fails_as_out_of_memory(docker_emu, worker_image, docker_config):
    emu, api = docker_emu
    project_id, _ = pushed_project(emu, api, worker_image, docker_config)
    task_id = api.new_task(project_id)
    hog = "b = b'x' * (512 * 1024 * 1024); print(len(b))"
    parent = api.submit(project_id, task_id, container_job(["python", "-c", hog], memory=128))
    api.wait_terminal(project_id, task_id, 1, timeout=300)
    job = api.job(project_id, task_id, f"{parent}:0")
    assert job["status"] == "FAILED"
    assert job["statusReason"].startswith("OutOfMemoryError"), job
    assert containers_of(emu) == []


def test_a_timeout_stops_the_container_with_sigterm_first(docker_emu, worker_image, docker_config):
    emu, api = docker_emu
    project_id, _ = pushed_project(emu, api, worker_image, docker_config)
    task_id = api.new_task(project_id)
    trap = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: (print('SIGTERM received', flush=True), sys.exit(3)))\n"
        "print('waiting', flush=True)\ntime.sleep(600)\n"
    )
    parent = api.submit(project_id, task_id, container_job(["python", "-c", trap], timeout=60))
    api.wait_terminal(project_id, task_id, 1, timeout=300)
    job = api.job(project_id, task_id, f"{parent}:0")
    assert job["status"] == "FAILED" and job["statusReason"] == "Job attempt duration exceeded timeout", job
    assert api.logs(project_id, task_id, f"{parent}:0") == ["waiting", "SIGTERM received"]
    assert containers_of(emu) == []


def test_the_worker_stopped_while_it_hangs_in_a_container_exits_on_sigterm_not_sigkill(
    docker_emu, worker_image, docker_config
):
    # As the container's first process, a worker without a SIGTERM handler ignored the stop and was killed
    # (exit code 137) after the grace period; with one it exits at once as SIGTERM says (143).
    emu, api = docker_emu
    project_id, _ = pushed_project(emu, api, worker_image, docker_config)
    task_id = api.new_task(project_id)
    seed = next(str(s) for s in range(100) if hw.simulated_failure(1.0, 0, str(s)) == "hang")
    envs = {"IMG_OBJKEY_LIST": "list.dat", "BATCH_JOB_ARRAY_SIZE": "1", "SIMULATE_FAILURES": "1"}
    envs["SIMULATE_FAILURES_SEED"] = seed
    job_definition = container_job(["python", "/opt/face_tagger.py"], timeout=60, envs=envs.items())
    parent = api.submit(project_id, task_id, job_definition)
    api.wait_terminal(project_id, task_id, 1, timeout=300)
    job = api.job(project_id, task_id, f"{parent}:0")
    logs = api.logs(project_id, task_id, f"{parent}:0")
    assert job["statusReason"] == "Job attempt duration exceeded timeout", job
    assert job["container"]["exitCode"] == 128 + signal.SIGTERM, (job, logs)
    assert any("stopped by SIGTERM" in line for line in logs), logs


def engine_events(instance: str, since: float, until: float) -> list[dict]:
    """The Docker engine's events about this emulator instance's containers between two ``time.time()``s."""
    listed = docker(
        "events",
        "--since",
        f"{since:.6f}",
        "--until",
        f"{until:.6f}",
        "--filter",
        "type=container",
        "--filter",
        f"label=htc-emulator.{instance}",
        "--format",
        "{{json .}}",
    )
    assert listed.returncode == 0, listed.stderr
    return [json.loads(line) for line in listed.stdout.splitlines()]


def test_a_jobs_time_counts_from_its_containers_start(docker_emu, worker_image, docker_config):
    """Issue 20: on the platform a job's timeout counts from its attempt's startedAt, when it went from STARTING
    to RUNNING, once its container runs (AWS Batch, JobTimeout and JobDetail.startedAt). The emulator made a job
    RUNNING and started its clock when it spawned ``docker run``, before the engine had even created the
    container, so a slow create and start were charged to the job. Now both come after the engine's start."""
    emu, api = docker_emu
    project_id, _ = pushed_project(emu, api, worker_image, docker_config)
    task_id = api.new_task(project_id)
    since = time.time()
    parent = api.submit(project_id, task_id, container_job(["sleep", "600"], timeout=60))
    api.wait_terminal(project_id, task_id, 1, timeout=300)
    job = api.job(project_id, task_id, f"{parent}:0")
    assert job["status"] == "FAILED" and job["statusReason"] == "Job attempt duration exceeded timeout", job
    name = f"htc-emulator-{parent}-0-1"
    events = [
        event
        for event in engine_events(emu.scheduler.docker.instance, since, time.time())
        if event["Actor"]["Attributes"].get("name") == name
    ]
    started = next(event["timeNano"] for event in events if event["Action"] == "start")
    stopped = next(event["timeNano"] for event in events if event["Action"] == "kill")
    running = next(event.at for event in emu.backend.jobs[f"{parent}:0"].events if event.status == "RUNNING")
    # Microseconds: the resolution of the emulator's clock.
    assert round(running.timestamp() * 1e6) >= started // 1000, "the job was RUNNING before its container started"
    timeout = 60 * emu.scheduler.timeout_scale
    assert (stopped - started) / 1e9 >= timeout, "the container was stopped before its whole timeout had passed"
    assert containers_of(emu) == []


def test_an_image_never_pushed_is_refused_at_submit(docker_emu):
    """With a Docker engine a project's registry holds only what was pushed to it: a batch naming an image the
    emulator has registered but nobody pushed to this project is a 400 naming ``imageName``, and no job exists."""
    emu, api = docker_emu
    project_id = api.new_project(repositories=["opencv-htc-tutorial"])
    task_id = api.new_task(project_id)
    body = [{"jobName": "test", "htcJobDefinition": container_job(["python", "-c", "pass"])}]
    refused = api.post(f"/htc/projects/{project_id}/tasks/{task_id}/jobs/batch", json=body)
    assert refused.status_code == 400, refused.text
    assert "imageName" in refused.json()["errorDescription"], refused.text
    assert api.job_count(project_id, task_id) == 0


# --- a killed emulator ---------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """Every process under ``pid``, as /proc has them now."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rpartition(")")[2].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


def command_line(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return []


def test_a_killed_emulator_leaves_no_registry_and_the_next_one_removes_its_containers(
    worker_image, docker_config, client_for
):
    """Issue 19: after ``kill -9`` of ``python -m htc_emulator --docker`` mid-job, the job's container was still up,
    docker-registry still answered and its folder stayed in /tmp. Now the registry and its folder go with the
    emulator, and the next emulator to start removes the containers of one that is provably gone."""
    from htc_emulator import running
    from htc_emulator.platform_profile import IDEAL

    key = secrets.token_hex(20)
    process = subprocess.Popen(
        # The ideal profile: this test is about what a kill leaves behind, not the platform's latencies
        # (on its real-time clock the image would replicate and the instance start for minutes).
        [sys.executable, "-m", "htc_emulator", "--docker", "--ideal"],
        cwd=ROOT,
        env={**os.environ, "HTC_EMULATOR_API_KEY": key},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    container = "none yet"
    try:
        with process.stdout:
            banner = ""
            while not banner.endswith("Stop with Ctrl+C.\n"):
                line = process.stdout.readline()
                assert line, f"the emulator exited: {banner}"
                banner += line
        api_url = re.search(r"API base URL : (\S+)", banner)[1]
        emu = SimpleNamespace(api_url=api_url, root_url=api_url.removesuffix("/api/v1"), api_key=key, profile=IDEAL)
        api = client_for(emu)
        project_id, _ = pushed_project(emu, api, worker_image, docker_config)
        task_id = api.new_task(project_id)
        parent = api.submit(project_id, task_id, container_job(["sleep", "600"]))
        container = f"htc-emulator-{parent}-0-1"
        deadline = time.monotonic() + 300
        while not docker("ps", "--quiet", "--filter", f"name={container}", "--filter", "status=running").stdout:
            assert time.monotonic() < deadline, "the job's container never ran"
            time.sleep(0.2)
        registry = [pid for pid in descendants(process.pid) if command_line(pid)[0] == "docker-registry"]
        assert len(registry) == 1, [command_line(pid) for pid in descendants(process.pid)]
        folder = Path(command_line(registry[0])[-2]).parent  # docker-registry serve <folder>/config.yml
        assert folder.is_dir()

        process.kill()  # SIGKILL: nothing of the emulator runs after this
        process.wait()
        deadline = time.monotonic() + 60
        while Path(f"/proc/{registry[0]}").exists() or folder.exists():
            assert time.monotonic() < deadline, "the registry or its folder outlived the emulator"
            time.sleep(0.1)
        # The container is the engine's: it runs on until an emulator that knows its owner is gone removes it.
        assert docker("ps", "--quiet", "--filter", f"name={container}").stdout.split()
        with running(docker=True):
            assert docker("ps", "--all", "--quiet", "--filter", f"name={container}").stdout.split() == []
    finally:
        process.kill()
        process.wait()
        docker("rm", "--force", container)


def test_the_registry_and_its_tether_get_the_emulators_environment_without_the_api_key(monkeypatch, containers_or_skip):
    """Issue 19: a process's environment is readable by every process of its user; the registry needs no key."""
    from htc_emulator.container_registry import ContainerRegistry

    if not ContainerRegistry.available():
        containers_or_skip("Debian's docker-registry is not installed")
    monkeypatch.setenv("RESCALE_API_KEY", "a-key-in-the-emulators-environment")
    monkeypatch.setenv("HTC_EMULATOR_API_KEY", "the-emulators-key")
    registry = ContainerRegistry(lambda *_: True)
    registry.start()
    try:
        tether = registry._process.pid
        children = Path(f"/proc/{tether}/task/{tether}/children").read_text().split()
        for pid in [tether, *map(int, children)]:
            environment = Path(f"/proc/{pid}/environ").read_bytes()
            assert b"PATH=" in environment and b"API_KEY" not in environment, pid
        assert len(children) == 1  # the registry itself
    finally:
        registry.stop()


def test_a_work_list_of_any_command_runs_as_containers(docker_emu, worker_image, docker_config, monkeypatch, tmp_path):
    """The worker layer's command worker in the pushed image: sha256sum on each file, through the helpers.

    Its process-mode twin is in tests/worker/test_command_worker.py.
    """
    import hashlib

    import htc_helpers as htc

    emu, api = docker_emu
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", emu.s3_endpoint)
    project_id, _ = pushed_project(emu, api, worker_image, docker_config)
    task_id = api.new_task(project_id)
    files = {f"in/file-{n}.bin": bytes([n]) * (100 + n) for n in range(3)}
    for key, body in files.items():
        (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / key).write_bytes(body)
    session = htc.HtcSession(emu.api_url, emu.api_key)
    htc.upload_files(session, project_id, tmp_path, progress=False)
    job = container_job(["python", "/opt/command_worker.py", "sha256sum", "{}"])
    htc.wait_for_image(session, project_id, job["imageName"], interval=0.5)  # a pushed image runs once READY
    group = "sha256-in-containers"
    [batch] = htc.submit_work_list(session, project_id, task_id, group, list(files), job, items_per_job=2)
    results = htc.complete_work_list(
        session,
        project_id,
        task_id,
        group,
        list(files),
        job,
        items_per_job=2,
        interval=0.5,
        timeout=600,
        progress=False,
    )
    assert htc.missing_results(list(files), results) == []
    rows = results.set_index("item")
    assert {key: rows.loc[key, "stdout"].split()[0] for key in files} == {
        key: hashlib.sha256(body).hexdigest() for key, body in files.items()
    }
    assert (rows["run"] == batch["run"]).all() and batch["jobs"] == 2
    ran = [job_id for job_id in emu.scheduler.container_jobs if job_id.startswith(batch["parentJobId"])]
    assert len(ran) == 2  # as containers, not processes
    assert containers_of(emu) == []
