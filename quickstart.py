"""Run one section of tutorial.ipynb on its own: what the earlier sections made, in one call.

Each section of the notebook states the names it needs from earlier sections and the one
line that makes them here instead, for example::

    session, PROJECT_ID, TASK_ID, IMAGE, IMAGE_LIST_KEY = quickstart.ready_task(API_URL)

These functions do what the notebook's sections do, in the same order, with the same calls;
they are this tutorial's plumbing, not part of the HTC client layer (``htc_helpers``).
"""

from __future__ import annotations

from pathlib import Path

import config
import htc_helpers as htc

IMAGE = "opencv-htc-tutorial:v1"
IMAGE_LIST_KEY = "image_list.dat"
REGION = "AWS_EU_WEST_1"


def ready_task(
    api_url: str, images_dir="data/images", *, image: str = IMAGE, region: str = REGION, work_dir="build/quickstart"
) -> tuple[htc.HtcSession, str, str, str, str]:
    """A new project with the image's repository, the photos and their list uploaded, and an empty task.

    Returns ``(session, project_id, task_id, image, image_list_key)``.
    """
    session = htc.HtcSession(api_url, config.get_profile()[1])
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
    images_dir = Path(images_dir)
    htc.upload_files(session, project_id, images_dir, progress=False)
    image_list = Path(work_dir) / IMAGE_LIST_KEY
    image_list.parent.mkdir(parents=True, exist_ok=True)
    image_list.write_text("".join(f"{p.name}\n" for p in sorted(images_dir.iterdir()) if p.is_file()))
    htc.upload_files(session, project_id, [image_list], progress=False)
    task_id = session.post(
        f"{api_url}/htc/projects/{project_id}/tasks",
        json={"taskName": "faces-scale-1.2", "taskDescription": "Haar cascade, scaleFactor 1.2"},
    ).json()["taskId"]
    return session, project_id, task_id, image, IMAGE_LIST_KEY


def tagged_task(
    api_url: str, job_count: int, images_dir="data/images", *, interval: float = 0.5, **project
) -> tuple[htc.HtcSession, str, str, str]:
    """``ready_task``, then one tagging batch of ``job_count`` jobs run to the end.

    Returns ``(session, project_id, task_id, image_list_key)``.
    """
    session, project_id, task_id, image, image_list_key = ready_task(api_url, images_dir, **project)
    group = htc.unique_name("library")
    session.post(
        f"{api_url}/htc/projects/{project_id}/tasks/{task_id}/jobs/batch",
        params={"group": group},
        json=[htc.tagging_batch(image, job_count, image_list_key)],
    )
    htc.monitor_group(
        session, project_id, task_id, group, expected_jobs=job_count, interval=interval, timeout=3600, progress=False
    )
    return session, project_id, task_id, image_list_key


def winner(api_url: str, job_count: int, images_dir="data/images", **batch) -> tuple[htc.HtcSession, str, str, str]:
    """``tagged_task``, then the name of the photo with the most faces.

    Returns ``(session, project_id, task_id, winner)``; raises ``RuntimeError`` when no photo has a face.
    """
    session, project_id, task_id, _ = tagged_task(api_url, job_count, images_dir, **batch)
    best = htc.find_max_faces(htc.collect_results(session, project_id, task_id))
    if best.empty:
        raise RuntimeError(htc.no_results_reason(session, project_id, task_id))
    return session, project_id, task_id, best.iloc[0]["image"]
