"""Run one section of tutorial.ipynb on its own: what the earlier sections made, in one call.

Each section of the notebook states the names it needs from earlier sections and the one
line that makes them here instead, for example::

    session, PROJECT_ID, TASK_ID, IMAGE, IMAGE_LIST_KEY = quickstart.ready_task(API_URL)

These functions do what the notebook's sections do, in the same order, with the same calls;
they are this tutorial's plumbing, not part of the HTC client layer (``htc_helpers``).

They are safe to call again and again on the platform, where projects cannot be deleted: one
project is reused (``$HTC_PROJECT_ID``, else the newest one of yours named ``htc-tutorial``,
created only when there is none), photos already in its shared storage are not uploaded
again, the image is pushed only when the project's registry does not have it, and waits poll
at the platform's pace. They work from any folder: the photos are the project's
``data/images`` (``make data`` fetches them), or the folder named by ``images_dir`` or by
``$HTC_TUTORIAL_IMAGES``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import config
import htc_helpers as htc
import tutorial_helpers as tutorial

IMAGE = "opencv-htc-tutorial:v1"
IMAGE_LIST_KEY = "image_list.dat"
REGION = "AWS_EU_WEST_1"
PROJECT_NAME = "htc-tutorial"
ROOT = Path(__file__).resolve().parent
# The data set beside this file, in a clone of the project (an installed copy has none).
PROJECT_IMAGES = ROOT / "data" / "images"
DOCKERFILE = ROOT / "docker" / "Dockerfile"


def photos_folder(images_dir=None) -> Path:
    """The folder of photos to upload: ``images_dir``, else ``$HTC_TUTORIAL_IMAGES``, else the project's data set.

    Raises ``FileNotFoundError`` with what to do when that folder holds no file.
    """
    folder = Path(images_dir or os.environ.get("HTC_TUTORIAL_IMAGES") or PROJECT_IMAGES)
    if not (folder.is_dir() and any(p.is_file() for p in folder.iterdir())):
        raise FileNotFoundError(
            f"no photos in {folder}: pass images_dir=<a folder of photos>, or set HTC_TUTORIAL_IMAGES to one "
            "(in a clone of the project, `make data` puts them in data/images)"
        )
    return folder


def tutorial_project(session: htc.HtcSession, region: str = REGION, name: str = PROJECT_NAME) -> str:
    """The project to work in: ``$HTC_PROJECT_ID``, else your newest project called ``name``, else a new one.

    Projects cannot be deleted through the API, so one is reused rather than one made per call.
    A reused project gets ``region`` added when it does not have it.
    """
    project_id = os.environ.get("HTC_PROJECT_ID")
    if project_id:
        project = session.get(f"/htc/projects/{project_id}").json()
    else:
        mine = htc.paginate(session, "/htc/projects", {"onlyMyProjects": "true", "pageSize": 500})
        named = sorted((p for p in mine if p["projectName"] == name), key=lambda p: p["createdAt"])
        if not named:
            return session.post(
                "/htc/projects",
                json={
                    "projectName": name,
                    "projectDescription": "Find the photo with the most faces",
                    "regions": [region],
                },
            ).json()["projectId"]
        project = named[-1]
    if region not in project["regions"]:
        session.patch(f"/htc/projects/{project['projectId']}", json={"regions": [region]})
    return project["projectId"]


def docker_answers() -> bool:
    """Whether a Docker engine answers here (``HTC_DOCKER=0`` says to leave it out, as in the notebook)."""
    if os.environ.get("HTC_DOCKER") == "0" or shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


def push_image(session: htc.HtcSession, project_id: str, image: str, registry_uri: str) -> None:
    """Build ``image`` from the project's Dockerfile if this Docker engine lacks it, then push it to the registry.

    The build uses ``$DOCKER_BASE_IMAGE`` as its base when set (as the notebook does). The registry
    password goes to ``docker login`` on standard input, into a client configuration of its own that
    is removed afterwards. This pushes this machine's architecture only; the notebook's
    *Publish the container image* builds both of the platform's.
    """
    if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode != 0:
        base = os.environ.get("DOCKER_BASE_IMAGE", "python:3.12-slim")
        build = ["docker", "build", "--build-arg", f"BASE_IMAGE={base}", "-f", str(DOCKERFILE), "-t", image, str(ROOT)]
        _run(build, "docker build")
    password = session.get(f"/htc/projects/{project_id}/container-registry/token").text
    reference = f"{registry_uri}{image}"
    with tempfile.TemporaryDirectory() as docker_config:
        client = ["docker", "--config", docker_config]
        _run(
            [*client, "login", "--username", "AWS", "--password-stdin", registry_uri.split("/")[0]],
            "docker login",
            stdin=password,
        )
        _run(["docker", "tag", image, reference], "docker tag")
        _run([*client, "push", reference], "docker push")


def _run(command: list[str], what: str, stdin: str | None = None) -> None:
    done = subprocess.run(command, input=stdin, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{done.stderr[-2000:]}")


def ready_image(session: htc.HtcSession, project_id: str, image: str = IMAGE) -> None:
    """Make sure ``image`` is READY in the project's registry: its repository, a push where it is missing, the wait.

    The image is pushed only when the registry does not list it, and only where a Docker engine
    answers; elsewhere a ``RuntimeError`` says what to do. Then it waits while the platform
    replicates it (a 404, then PENDING), as jobs can use it only once it is READY.
    """
    repository = image.rsplit(":", 1)[0]
    registry_uri = session.post(f"/htc/projects/{project_id}/container-registry/repo/{repository}").json()[
        "registryURI"
    ]
    listed = session.get(f"/htc/projects/{project_id}/container-registry/images").json()["images"]
    if image not in listed:
        if not docker_answers():
            raise RuntimeError(
                f"{image} is not in the registry of project {project_id}, and no Docker engine answers here to "
                f"push it. Build and push it where Docker runs (the notebook's sections *The container image* and "
                f"*Publish the container image* do it), or pass image= one that the registry lists."
            )
        push_image(session, project_id, image, registry_uri)
    htc.wait_for_image(session, project_id, image)


def upload_photos(session: htc.HtcSession, project_id: str, images_dir: Path) -> list[str]:
    """Upload the photos that the project's shared storage does not hold yet, and their list; the photos' names."""
    present = set(htc.list_objects(session, project_id))
    photos = sorted(p for p in images_dir.iterdir() if p.is_file())
    missing = [p for p in photos if p.name not in present]
    if missing:
        htc.upload_files(session, project_id, missing, progress=False)
    with tempfile.TemporaryDirectory() as work:
        image_list = Path(work) / IMAGE_LIST_KEY
        image_list.write_text("".join(f"{p.name}\n" for p in photos))
        htc.upload_files(session, project_id, [image_list], progress=False)
    return [p.name for p in photos]


def ready_task(
    api_url: str, images_dir=None, *, image: str = IMAGE, region: str = REGION, project_name: str = PROJECT_NAME
) -> tuple[htc.HtcSession, str, str, str, str]:
    """The tutorial's project with the image READY, the photos and their list uploaded, and a new empty task.

    The photos come from ``photos_folder(images_dir)``, checked before anything is created; the
    project is ``tutorial_project(session, region, project_name)``.
    Returns ``(session, project_id, task_id, image, image_list_key)``.
    """
    images_dir = photos_folder(images_dir)
    session = htc.HtcSession(api_url, config.get_profile()[1], key_source=config.key_source())
    project_id = tutorial_project(session, region, project_name)
    ready_image(session, project_id, image)
    upload_photos(session, project_id, images_dir)
    task_id = session.post(
        f"/htc/projects/{project_id}/tasks",
        json={"taskName": "faces-scale-1.2", "taskDescription": "Haar cascade, scaleFactor 1.2"},
    ).json()["taskId"]
    return session, project_id, task_id, image, IMAGE_LIST_KEY


def tagged_task(
    api_url: str, job_count: int, images_dir=None, *, interval: float | None = None, **project
) -> tuple[htc.HtcSession, str, str, str]:
    """``ready_task``, then one tagging batch of ``job_count`` jobs run to the end.

    Polls at the platform's status refresh (``interval=None``), on the API's clock.
    Returns ``(session, project_id, task_id, image_list_key)``.
    """
    session, project_id, task_id, image, image_list_key = ready_task(api_url, images_dir, **project)
    group = tutorial.unique_name("library")
    session.post(
        f"{api_url}/htc/projects/{project_id}/tasks/{task_id}/jobs/batch",
        params={"group": group},
        json=[tutorial.tagging_batch(image, job_count, image_list_key)],
    )
    timeout = htc.platform_seconds(session, htc.COLD_START_SECONDS) + 3600  # a cold platform, then the batch
    htc.monitor_group(
        session, project_id, task_id, group, expected_jobs=job_count, interval=interval, timeout=timeout, progress=False
    )
    return session, project_id, task_id, image_list_key


def winner(api_url: str, job_count: int, images_dir=None, **batch) -> tuple[htc.HtcSession, str, str, str]:
    """``tagged_task``, then the name of the photo with the most faces.

    Returns ``(session, project_id, task_id, winner)``; raises ``RuntimeError`` when no photo has a face.
    """
    session, project_id, task_id, _ = tagged_task(api_url, job_count, images_dir, **batch)
    best = tutorial.find_max_faces(htc.collect_results(session, project_id, task_id))
    if best.empty:
        raise RuntimeError(tutorial.no_results_reason(session, project_id, task_id))
    return session, project_id, task_id, best.iloc[0]["image"]
