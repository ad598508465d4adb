"""Run one section of tutorial.ipynb on its own: what the earlier sections made, in one call.

Each section of the notebook states the names it needs from earlier sections and the one
line that makes them here instead, for example::

    session, PROJECT_ID, TASK_ID, IMAGE, IMAGE_LIST_KEY = quickstart.ready_task(API_URL)

These functions do what the notebook's sections do, in the same order, with the same calls;
they are this tutorial's plumbing, not part of the HTC client layer (``htc_helpers``).

They work from any folder. The photos are the project's ``data/images`` (``make data``
fetches them), or the folder named by ``images_dir`` or by ``$HTC_TUTORIAL_IMAGES``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import config
import htc_helpers as htc
import tutorial_helpers as tutorial

IMAGE = "opencv-htc-tutorial:v1"
IMAGE_LIST_KEY = "image_list.dat"
REGION = "AWS_EU_WEST_1"
# The data set beside this file, in a clone of the project (an installed copy has none).
PROJECT_IMAGES = Path(__file__).resolve().parent / "data" / "images"


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


def ready_task(
    api_url: str, images_dir=None, *, image: str = IMAGE, region: str = REGION
) -> tuple[htc.HtcSession, str, str, str, str]:
    """A new project with the image's repository, the photos and their list uploaded, and an empty task.

    The photos come from ``photos_folder(images_dir)``, checked before anything is created.
    Returns ``(session, project_id, task_id, image, image_list_key)``.
    """
    images_dir = photos_folder(images_dir)
    session = htc.HtcSession(api_url, config.get_profile()[1], key_source=config.key_source())
    project_id = session.post(
        f"{api_url}/htc/projects",
        json={
            "projectName": "htc-tutorial",
            "projectDescription": "Find the photo with the most faces",
            "regions": [region],
        },
    ).json()["projectId"]
    repo_name = image.split(":")[0]
    session.post(f"{api_url}/htc/projects/{project_id}/container-registry/repo/{repo_name}")
    htc.upload_files(session, project_id, images_dir, progress=False)
    with tempfile.TemporaryDirectory() as work:
        image_list = Path(work) / IMAGE_LIST_KEY
        image_list.write_text("".join(f"{p.name}\n" for p in sorted(images_dir.iterdir()) if p.is_file()))
        htc.upload_files(session, project_id, [image_list], progress=False)
    task_id = session.post(
        f"{api_url}/htc/projects/{project_id}/tasks",
        json={"taskName": "faces-scale-1.2", "taskDescription": "Haar cascade, scaleFactor 1.2"},
    ).json()["taskId"]
    return session, project_id, task_id, image, IMAGE_LIST_KEY


def tagged_task(
    api_url: str, job_count: int, images_dir=None, *, interval: float = 0.5, **project
) -> tuple[htc.HtcSession, str, str, str]:
    """``ready_task``, then one tagging batch of ``job_count`` jobs run to the end.

    Returns ``(session, project_id, task_id, image_list_key)``.
    """
    session, project_id, task_id, image, image_list_key = ready_task(api_url, images_dir, **project)
    group = tutorial.unique_name("library")
    session.post(
        f"{api_url}/htc/projects/{project_id}/tasks/{task_id}/jobs/batch",
        params={"group": group},
        json=[tutorial.tagging_batch(image, job_count, image_list_key)],
    )
    htc.monitor_group(
        session, project_id, task_id, group, expected_jobs=job_count, interval=interval, timeout=3600, progress=False
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
