"""The tutorial's own conveniences, beside the HTC client (``htc_helpers``): worth reading, not needed to reach HTC.

* the face tagger's batch definition (``tagging_batch``), a fresh group name (``unique_name``),
  a submit said in one line, a second one as such (``submitted``), and a batch's rough duration and
  size (``batch_estimate``);
* the face results read the tutorial's way (``find_max_faces``, ``no_results_reason``);
* Docker steps that end in Docker's own reason and the way out (``docker_build``,
  ``docker_login``, ``docker_push``, ``require_buildx``), not in ``exit status 1``;
* pictures: a photo, a chart of job statuses, a plotly figure with its static copy.

The pictures need the notebook's packages (``pip install .[notebook]``: plotly, kaleido,
OpenCV, IPython; kaleido draws with the system's Chromium), imported where they are used, so
that the rest works with the client's packages alone. Outside a notebook they write a file or
name one, and print one line.

As in ``htc_helpers``, each public function's docstring ends with a *Needs* line: the other
names it uses, here and in ``htc_helpers``, which a copy must bring along.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

import htc_helpers as htc

# --- batches and estimates ---------------------------------------------------------------


def unique_name(prefix: str) -> str:
    """``prefix`` plus the UTC time and a random suffix: a group name no earlier run has used.

    Re-submitting under an old group name silently mixes the new jobs into the old group's statistics.
    Example: ``group = unique_name("library")  # 'library-20261201T150102-3f9a1c'``

    Needs: nothing else
    """
    return f"{prefix}-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{os.urandom(3).hex()}"


# What unique_name appends; name_prefix cuts it off again, so the two change together.
UNIQUE_NAME_SUFFIX = re.compile(r"-\d{8}T\d{6}-[0-9a-f]{6}\Z")


def name_prefix(name: str) -> str | None:
    """The prefix ``unique_name`` made ``name`` from, or None for a name it did not make.

    Example: ``name_prefix("library-20261201T150102-3f9a1c")  # 'library'``

    Needs: UNIQUE_NAME_SUFFIX
    """
    suffix = UNIQUE_NAME_SUFFIX.search(name)
    return name[: suffix.start()] if suffix else None


def submitted(session: htc.HtcSession, project_id: str, task_id: str, group: str, jobs: int) -> str:
    """What a submit cell did, in one line: ``jobs`` jobs as ``group`` (a ``unique_name``), and, when an earlier
    run of the cell left groups of the same prefix in the task, that it submitted again and which are still there.

    A cell run twice submits twice; this says so instead of printing the same line again.
    Example: ``print(submitted(session, pid, tid, group, 12))  # 'submitted 12 jobs as group failures-2026...'``

    Needs: name_prefix, UNIQUE_NAME_SUFFIX
    """
    prefix = name_prefix(group)
    listed = session.get(f"/htc/projects/{project_id}/tasks/{task_id}/groups").json()
    earlier = sorted(name for name in listed if prefix and name != group and name_prefix(name) == prefix)
    if not earlier:
        return f"submitted {jobs} jobs as group {group}"
    runs = "run's group is" if len(earlier) == 1 else f"{len(earlier)} runs' groups are"
    return f"submitted {jobs} jobs again, as group {group}; the earlier {runs} still in the task: {', '.join(earlier)}"


def tagging_batch(
    image: str,
    job_count: int,
    image_list_key: str,
    *,
    scale_factor: float = 1.2,
    simulate_failures: bool = False,
    timeout_seconds: int = 3600,
    vcpus: int = 1,
    memory_mib: int = 512,
    retry_strategy: dict | None = None,
) -> dict:
    """One batch definition for the face tagger: ``job_count`` jobs sharing the photos in ``image_list_key``.

    Job ``i`` tags its slice of the list, found from ``AWS_BATCH_JOB_ARRAY_INDEX`` (set by the
    platform) and ``BATCH_JOB_ARRAY_SIZE`` (set here: names starting ``AWS_`` are reserved).
    ``HTC_RUN_ID``, new for each definition, names the batch: its results go to ``runs/<run id>/``
    of task storage, where no other batch writes. ``simulate_failures`` fails about a third of
    the jobs, the same array indices every time (``SIMULATE_FAILURES_SEED``). ``retry_strategy``
    (``{"maxRetries": 2}``) runs a failed job again; the new attempt skips the photos the failed
    one saved. More than 1,000 jobs: ``htc_helpers.submit_work_list``.
    Example::

        session.post(f"{url}/jobs/batch", params={"group": g}, json=[tagging_batch(image, 24, "image_list.dat")])

    Needs: htc_helpers.MAX_JOBS_PER_BATCH, htc_helpers.with_run_id
    """
    if not 1 <= job_count <= htc.MAX_JOBS_PER_BATCH:
        raise ValueError(
            f"job_count must be between 1 and {htc.MAX_JOBS_PER_BATCH}, not {job_count} "
            "(spread more over several batches with htc_helpers.submit_work_list)"
        )
    envs = [
        {"name": "IMG_OBJKEY_LIST", "value": image_list_key},
        {"name": "BATCH_JOB_ARRAY_SIZE", "value": str(job_count)},
        {"name": "SCALE_FACTOR", "value": str(scale_factor)},
    ]
    if simulate_failures:
        envs += [{"name": "SIMULATE_FAILURES", "value": "true"}, {"name": "SIMULATE_FAILURES_SEED", "value": "0"}]
    batch = {
        "jobName": f"tag-photos-{scale_factor}",
        "batchSize": job_count,
        "htcJobDefinition": {
            "imageName": image,
            "maxVCpus": vcpus,
            "maxMemory": memory_mib,
            "commands": ["python", "/opt/face_tagger.py"],
            "envs": envs,
            "execTimeoutSeconds": timeout_seconds,
        },
    }
    if retry_strategy:
        batch["retryStrategy"] = retry_strategy
    return htc.with_run_id(batch)


def batch_estimate(
    job_count: int,
    seconds_per_job: float,
    *,
    parallel_jobs: int,
    vcpus_per_job: int = 1,
    start_seconds: float = 60.0,
    refresh_seconds: float = htc.STATUS_REFRESH_SECONDS,
) -> dict:
    """A rough duration and size of a batch, to state before submitting it.

    ``start_seconds`` is what each job pays before its command runs (a container start and,
    on a fresh machine, the image pull); ``refresh_seconds`` is how late a status change shows.
    Returns ``{"waves", "minutes", "vcpu_hours"}``: multiply ``vcpu_hours`` by your price per vCPU-hour.
    Example: ``batch_estimate(1000, 5 * 0.12, parallel_jobs=200)``

    Needs: htc_helpers.STATUS_REFRESH_SECONDS
    """
    if job_count < 1 or parallel_jobs < 1 or seconds_per_job < 0 or start_seconds < 0:
        raise ValueError("job_count and parallel_jobs must be positive, the seconds not negative")
    waves = -(-job_count // parallel_jobs)
    per_job = start_seconds + seconds_per_job
    # Each status change shows up to one refresh late: at the first job's start and at the last one's end.
    seconds = waves * per_job + 2 * refresh_seconds
    return {
        "waves": waves,
        "minutes": round(seconds / 60, 1),
        "vcpu_hours": round(job_count * per_job * vcpus_per_job / 3600, 2),
    }


# --- the face results --------------------------------------------------------------------


def find_max_faces(results: pd.DataFrame) -> pd.DataFrame:
    """The rows with the highest face count (all of them on a tie); empty when no image has a face.

    Example: ``find_max_faces(results)[["image", "faces"]]``

    Needs: nothing else
    """
    ok = results[(results["status"] == "ok") & results["faces"].notna()]
    if ok.empty or ok["faces"].max() < 1:
        return results.iloc[0:0]
    return ok[ok["faces"] == ok["faces"].max()].sort_values("image", ignore_index=True)


def no_results_reason(session: htc.HtcSession, project_id: str, task_id: str, group: str | None = None) -> str:
    """Why a task has no photo with a face: its failed jobs, counted by failure code and reason.

    Example: ``if best.empty: raise RuntimeError(no_results_reason(session, pid, tid))``

    Needs: htc_helpers.failure_summary, htc_helpers.get_all_jobs
    """
    jobs = htc.get_all_jobs(session, project_id, task_id, group=group)
    failed = htc.failure_summary(jobs)
    where = f"task {task_id}" + (f", group {group}" if group else "")
    if not jobs:
        return f"no photo with a face in {where}: it has no jobs (was the batch submitted to this task?)"
    if not failed:
        return f"no photo with a face in {where}: none of its {len(jobs)} jobs failed, and none found a face"
    reasons = "; ".join(f"{n} × {reason}" for reason, n in failed.items())
    return (
        f"no photo with a face in {where}: {sum(failed.values())} of {len(jobs)} jobs failed ({reasons}). "
        "Read one failed job's logs with get_logs."
    )


# --- Docker ------------------------------------------------------------------------------

DEFAULT_BASE_IMAGE = "python:3.12-slim"
# Docker's advice to install buildx, printed before every legacy build's real output.
_LEGACY_BUILDER_NOTE = re.compile(r"DEPRECATED: The legacy builder.*?docs\.docker\.com/go/buildx/\s*", re.DOTALL)


class DockerError(RuntimeError):
    """A docker command failed; the message holds Docker's own reason and the way out.

    Needs: nothing else
    """


def _docker(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    # Secrets go on stdin (docker login --password-stdin), never among the arguments.
    return subprocess.run(["docker", *args], input=stdin, capture_output=True, text=True)


# A build's steps, as the legacy builder ("Step 2/9 : FROM ...") and BuildKit ("#5 [2/9] RUN ...") print them.
_BUILD_STEP = re.compile(r"^(Step \d+/\d+ : |#\d+ \[)")


def _docker_build_steps(*args: str) -> subprocess.CompletedProcess:
    """A docker build command whose steps are printed as they start; its whole output is in ``stderr``."""
    output = []
    with subprocess.Popen(
        ["docker", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as build:
        for line in build.stdout:
            output.append(line)
            if _BUILD_STEP.match(line):
                print(line.rstrip()[:120], flush=True)
    return subprocess.CompletedProcess(build.args, build.returncode, "", "".join(output))


def _docker_reason(run: subprocess.CompletedProcess) -> str:
    """The last lines Docker wrote to stderr (its reason), without the legacy builder's advertisement."""
    text = _LEGACY_BUILDER_NOTE.sub("", run.stderr or "")
    lines = [line.strip() for line in text.splitlines() if line.strip() and "--help' for more" not in line]
    return "; ".join(lines[-3:])[-600:] or f"exit status {run.returncode}, nothing on stderr"


def docker_unavailable() -> str | None:
    """Why this machine cannot build or run the image with Docker, or None when an engine answers.

    ``HTC_DOCKER=0`` in the environment leaves Docker out even where it answers.
    Example: ``print(docker_unavailable() or "Docker answers")``

    Needs: _docker, _docker_reason, _LEGACY_BUILDER_NOTE
    """
    if os.environ.get("HTC_DOCKER") == "0":
        return "HTC_DOCKER=0 is set"
    if shutil.which("docker") is None:
        return "no docker command on PATH"
    info = _docker("info", "--format", "{{.ServerVersion}}")
    if info.returncode != 0:
        return f"no Docker engine answers `docker info` ({_docker_reason(info)})"
    return None


def _failed_at_from(run: subprocess.CompletedProcess) -> bool:
    """Whether a ``docker build`` stopped at its ``FROM``: the base image could not be had."""
    output = (run.stdout or "") + (run.stderr or "")
    steps = re.findall(r"^Step \d+/\d+ : (\w+)", output, re.MULTILINE)  # the legacy builder
    return (bool(steps) and steps[-1].upper() == "FROM") or "failed to resolve source metadata" in output


def docker_build(image: str, *, base_image: str | None = None, dockerfile: str = "docker/Dockerfile") -> str:
    """``docker build`` of ``dockerfile`` (context: the current folder) tagged ``image``; returns the base used.

    The base is ``base_image``, else ``$DOCKER_BASE_IMAGE``, else ``python:3.12-slim``. A base that
    cannot be pulled (no registry reachable, a typo) raises ``DockerError`` saying how to choose another.
    Each step is printed as it starts: a first build takes minutes.
    Example: ``docker_build("opencv-htc-tutorial:v1")``

    Needs: _BUILD_STEP, DEFAULT_BASE_IMAGE, _docker_build_steps, _docker_reason, DockerError, _failed_at_from,
    _LEGACY_BUILDER_NOTE
    """
    base = base_image or os.environ.get("DOCKER_BASE_IMAGE") or DEFAULT_BASE_IMAGE
    build = _docker_build_steps("build", "--build-arg", f"BASE_IMAGE={base}", "-f", dockerfile, "-t", image, ".")
    if build.returncode == 0:
        return base
    if _failed_at_from(build):
        raise DockerError(
            f"docker build could not get the base image {base}: {_docker_reason(build)}\n"
            f"Way out: set DOCKER_BASE_IMAGE to a Python 3 image this machine has (`docker images`) or can pull, "
            f"e.g. os.environ['DOCKER_BASE_IMAGE'] = 'my-registry/python:3.12-slim', and run this cell again; "
            "or set HTC_DOCKER=0 before starting JupyterLab to run the worker with this notebook's Python."
        )
    raise DockerError(f"docker build of {image} from {dockerfile} failed: {_docker_reason(build)}")


def docker_login(registry_host: str, password: str) -> None:
    """``docker login`` to a project's registry as user ``AWS``, the password on stdin, never on a command line.

    A refused login raises ``DockerError`` with Docker's reason (the password is never in it).
    Example: ``docker_login(repo["registryURI"].split("/")[0], registry_token)``

    Needs: _docker, _docker_reason, DockerError, _LEGACY_BUILDER_NOTE
    """
    login = _docker("login", "--username", "AWS", "--password-stdin", registry_host, stdin=password)
    if login.returncode != 0:
        raise DockerError(
            f"docker login to {registry_host} was refused: {_docker_reason(login)}\n"
            "Way out: ask for a new registry token (GET .../container-registry/token; it expires after "
            "12 hours) and log in to the host of this project's registryURI with it."
        )


def docker_push(reference: str) -> None:
    """``docker push`` of a tagged image; a refusal raises ``DockerError`` with Docker's reason.

    Example: ``docker_push(f"{registry_uri}opencv-htc-tutorial:v1")``

    Needs: _docker, _docker_reason, DockerError, _LEGACY_BUILDER_NOTE
    """
    push = _docker("push", reference)
    if push.returncode != 0:
        raise DockerError(
            f"docker push of {reference} failed: {_docker_reason(push)}\n"
            "Way out: log in to this project's registry first (docker_login), and push to its registryURI."
        )


def require_buildx() -> str:
    """The version of Docker's ``buildx`` plugin, which multi-architecture builds need; ``DockerError`` without it.

    Example: ``require_buildx()  # 'github.com/docker/buildx v0.17.1 ...'``

    Needs: _docker, _docker_reason, DockerError, _LEGACY_BUILDER_NOTE
    """
    version = _docker("buildx", "version")
    if version.returncode != 0:
        raise DockerError(
            f"docker buildx is not installed: {_docker_reason(version)}\n"
            "Way out: install Docker's buildx plugin (Docker Desktop has it; Debian 13 and Ubuntu: "
            "apt-get install docker-buildx; elsewhere https://docs.docker.com/go/buildx/), or build each "
            "architecture on a machine of that architecture and join them with `docker manifest create`."
        )
    return version.stdout.strip()


def docker_buildx_push(
    reference: str,
    platforms: str = "linux/amd64,linux/arm64",
    *,
    base_image: str | None = None,
    dockerfile: str = "docker/Dockerfile",
    builder: str = "htc-tutorial",
) -> None:
    """Build ``dockerfile`` for every platform in ``platforms`` and push them as one tag (a manifest list).

    Uses (and makes, the first time) the buildx builder ``builder``: the default builder
    cannot hold several architectures. ``DockerError`` with Docker's reason when buildx is
    missing or the build fails (another architecture also needs QEMU, or a builder on such a machine).
    Example: ``docker_buildx_push(f"{registry_uri}opencv-htc-tutorial:v1")``

    Needs: _BUILD_STEP, DEFAULT_BASE_IMAGE, _docker, _docker_build_steps, _docker_reason, DockerError,
    _LEGACY_BUILDER_NOTE, require_buildx
    """
    require_buildx()
    if _docker("buildx", "use", builder).returncode != 0:
        created = _docker("buildx", "create", "--name", builder, "--use")
        if created.returncode != 0:
            raise DockerError(f"docker buildx create --name {builder} failed: {_docker_reason(created)}")
    base = base_image or os.environ.get("DOCKER_BASE_IMAGE") or DEFAULT_BASE_IMAGE
    platform_args = ["--platform", platforms, "--build-arg", f"BASE_IMAGE={base}", "-f", dockerfile]
    build = _docker_build_steps("buildx", "build", *platform_args, "-t", reference, "--push", ".")
    if build.returncode != 0:
        raise DockerError(
            f"docker buildx build for {platforms} failed: {_docker_reason(build)}\n"
            "Way out: for an architecture this machine lacks, install QEMU's binfmt handlers "
            "(docker run --privileged --rm tonistiigi/binfmt --install all) or build on such a machine."
        )


def host_platform() -> str:
    """This machine's platform in Docker's words (``linux/amd64``, ``linux/arm64``).

    Example: ``host_platform()  # 'linux/amd64'``

    Needs: nothing else
    """
    machine = platform.machine().lower()
    return "linux/" + {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def docker_publish(reference: str, image: str, platforms: str) -> None:
    """Push ``image`` (built here) as ``reference``, for every platform in ``platforms``.

    This machine's platform alone needs no buildx: the image built here is tagged and pushed.
    Any other set is built anew with buildx and pushed as one tag (``docker_buildx_push``).
    Example: ``docker_publish(f"{registry_uri}{IMAGE}", IMAGE, "linux/amd64,linux/arm64")``

    Needs: _BUILD_STEP, DEFAULT_BASE_IMAGE, _docker, _docker_build_steps, docker_buildx_push, docker_push,
    _docker_reason, DockerError, host_platform, _LEGACY_BUILDER_NOTE, require_buildx
    """
    if platforms.replace(" ", "") != host_platform():
        docker_buildx_push(reference, platforms)
        return
    tagged = _docker("tag", image, reference)
    if tagged.returncode != 0:
        raise DockerError(f"docker tag {image} {reference} failed: {_docker_reason(tagged)}")
    docker_push(reference)


# --- pictures ----------------------------------------------------------------------------

# Every chart's size, interactive and static alike: within a default JupyterLab cell's width.
FIGURE_WIDTH = 760
FIGURE_HEIGHT = 420


def _in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel, which can show pictures (a kernel has IPython loaded)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return getattr(shell, "kernel", None) is not None


def plot_status_history(history: pd.DataFrame, title: str = "Job statuses over time"):
    """A plotly line chart of ``monitor_group``'s result; statuses that stayed at zero are left out.

    Example: ``show_figure(plot_status_history(history))``

    Needs: htc_helpers.JOB_STATUSES
    """
    import plotly.express as px

    seen = history.groupby("status")["count"].transform("max") > 0
    order = [s for s in htc.JOB_STATUSES if s in set(history["status"])]
    order += sorted(set(history["status"]) - set(order))
    # A linear axis: a log axis would hide the zero counts that show a status emptying out.
    return px.line(
        history[seen], x="time", y="count", color="status", markers=True, title=title, category_orders={"status": order}
    )


def show_image(path, width: int = 500) -> None:
    """Display a picture in a notebook, at most ``width`` pixels wide and JPEG-compressed, so the notebook stays small.

    Outside a notebook it prints where the picture is, to open it with any viewer.
    Example: ``show_image("output/2008_004176.jpg_tagged.jpg")``

    Needs: _in_notebook
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: missing, or not a picture OpenCV can read")
    if not _in_notebook():
        print(f"picture: {Path(path).resolve()}")
        return
    import cv2
    from IPython.display import Image, display

    picture = cv2.imread(str(path))
    if picture is None:
        raise FileNotFoundError(f"{path}: missing, or not a picture OpenCV can read")
    scale = min(1.0, width / picture.shape[1])
    picture = cv2.resize(picture, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    display(Image(data=cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, 70])[1].tobytes()))


def static_png(figure, width: int = FIGURE_WIDTH, height: int = FIGURE_HEIGHT) -> bytes:
    """A PNG of a plotly figure, drawn by plotly's own exporter (kaleido, in headless Chromium): the same chart.

    Offline: the page kaleido draws in loads plotly.js from the plotly package, and MathJax not at all.
    The first call starts Chromium, which later calls reuse (a few seconds, then a fraction of one);
    it stops when Python exits. Without Chromium, kaleido's ``ChromeNotFoundError`` says what to install.
    Example: ``Path("plot.png").write_bytes(static_png(plot_status_history(history)))``

    Needs: FIGURE_HEIGHT, FIGURE_WIDTH
    """
    import kaleido

    kaleido.start_sync_server(mathjax=False, silence_warnings=True)
    return kaleido.calc_fig_sync(figure, opts={"format": "png", "width": width, "height": height})


def show_figure(figure, path=None) -> Path | None:
    """Display a plotly figure as one output holding the interactive chart and a static PNG of it.

    JupyterLab and VS Code draw the interactive chart; viewers without a kernel or plotly.js
    (a repository's notebook preview, nbconvert's HTML) show the PNG, which plotly itself drew
    from the same figure at the same size (``FIGURE_WIDTH`` x ``FIGURE_HEIGHT``). Outside a
    notebook the chart goes to an HTML file that works offline (``path``, else one named after
    its title in the current folder), and one line says where; that path is returned.
    Example: ``show_figure(plot_status_history(history))``

    Needs: FIGURE_HEIGHT, FIGURE_WIDTH, _in_notebook, static_png
    """
    if not _in_notebook():
        title = figure.layout.title.text or "figure"
        path = Path(path or f"{re.sub(r'[^A-Za-z0-9]+', '-', title).strip('-').lower() or 'figure'}.html").resolve()
        figure.write_html(path, include_plotlyjs=True)
        print(f"chart {title!r} written to {path} (open it in a browser)")
        return path
    import base64

    import plotly.graph_objects as go
    from IPython.display import display

    sized = go.Figure(figure).update_layout(width=FIGURE_WIDTH, height=FIGURE_HEIGHT)
    display(
        {
            "application/vnd.plotly.v1+json": {**json.loads(sized.to_json()), "config": {}},
            "image/png": base64.b64encode(static_png(sized)).decode(),
            "text/plain": f"<figure: {figure.layout.title.text or 'plotly chart'}>",
        },
        raw=True,
    )
    return None
