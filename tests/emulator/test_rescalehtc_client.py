"""Rescale's own Python client, ``rescalehtc`` (PyPI, pinned), through its main flow against the emulator.

A second client written against the real API, none of its code copied: it
reads the API's base URL from its session object, which is pointed at the
session emulator. Project, repository, image, task, a batch and its jobs,
their statuses and logs, the task summary, cancel and delete.
"""

from __future__ import annotations

import time

import pytest
from rescalehtc import HtcSession, api, htcjobs, htctasks
from rescalehtc.exceptions import HtcException
from rescalehtc.htcprojects import HtcProject

IMAGE = "opencv-htc-tutorial:v1"


@pytest.fixture
def rescale(emulator, monkeypatch):
    # HtcSession takes its base URL from this function (its own hook for pointing it elsewhere).
    monkeypatch.setattr(HtcSession, "get_rescale_api_base_url", staticmethod(lambda: emulator.api_url))
    session = HtcSession(api_key=emulator.api_key)
    assert session.RESCALE_API_BASE_URL == emulator.api_url
    return session


def wait_for(rescale, task, done, timeout=120) -> list:
    deadline = time.monotonic() + timeout
    while not done(jobs := htcjobs.get_jobs(rescale, task)):
        assert time.monotonic() < deadline, [job.json["status"] for job in jobs]
        time.sleep(0.2)
    return jobs


def image_status_once_known(rescale, project_id: str, timeout: float = 60) -> dict:
    """The image's status once the platform knows it: until then its GET is a 404, on which rescalehtc raises.

    (rescalehtc's own wait at submit reads PENDING, but not the 404 that comes first after a push.)
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            status = api.get_htc_projects_container_registry_images(rescale, project_id, IMAGE)
        except HtcException:
            status = None
        if status == {"status": "READY"} or time.monotonic() > deadline:
            return status
        time.sleep(0.05)


@pytest.mark.slow
def test_rescalehtc_main_flow(rescale):
    project = HtcProject(
        api.post_htc_projects(
            rescale,
            {"projectName": "rescalehtc", "projectDescription": "Rescale's client", "regions": ["AWS_EU_WEST_1"]},
        )
    )
    project_id = project.json["projectId"]
    assert api.post_htc_projects_container_registry_repo(rescale, project_id, "opencv-htc-tutorial")[
        "successfullyCreated"
    ]
    assert IMAGE in api.get_htc_projects_container_registry_images(rescale, project_id)["images"]
    assert image_status_once_known(rescale, project_id) == {"status": "READY"}
    assert api.get_htc_projects_container_registry_images(rescale, project_id, IMAGE) == {"status": "READY"}

    task = htctasks.create_task_with_name(rescale, project, "rescalehtc-flow", "a batch and its jobs")
    batch = htcjobs.create_job_batch(
        rescale,
        task,
        batch_size=2,
        priority="ON_DEMAND_PRIORITY",
        image_name=IMAGE,
        exec_timeout_seconds=600,
        architecture="X86",
        commands=["python", "-c", "import os; print('hello', os.environ['AWS_BATCH_JOB_ARRAY_INDEX'])"],
    )
    # to_jobs() reads the batch's `group` unconditionally: the KeyError of issue 10 when it was left out.
    assert sorted(job.json["jobUUID"] for job in batch.to_jobs()) == [
        f"{batch.json['parentJobId']}:{i}" for i in range(2)
    ]
    jobs = wait_for(rescale, task, lambda jobs: all(job.json["status"] == "SUCCEEDED" for job in jobs))
    for job in jobs:
        index = job.json["jobUUID"].rsplit(":", 1)[1]
        assert f"hello {index}" in list(job.get_logs(rescale))
        assert job.json["container"]["exitCode"] == 0 and job.json["group"] is None
    assert task.get_task_summary(rescale)["jobStatuses"]["SUCCEEDED"] == 2

    htcjobs.create_job_batch(
        rescale,
        task,
        batch_size=2,
        priority="ON_DEMAND_PRIORITY",
        image_name=IMAGE,
        exec_timeout_seconds=600,
        architecture="X86",
        commands=["python", "-c", "import time; time.sleep(300)"],
    )
    task.cancel_jobs_in_task(rescale)
    jobs = wait_for(
        rescale,
        task,
        lambda jobs: len(jobs) == 4 and all(job.json["status"] in ("SUCCEEDED", "FAILED") for job in jobs),
    )
    assert sorted(job.json["status"] for job in jobs) == ["FAILED", "FAILED", "SUCCEEDED", "SUCCEEDED"]
    # The client caches a task's summary for 15 s: a fresh task object asks again.
    task = htctasks.get_task_with_id(rescale, project, task.json["taskId"])
    assert task.get_task_summary(rescale)["jobStatuses"]["FAILED"] == 2

    task.delete_task(rescale)
    assert api.get_htc_projects_tasks(rescale, project_id, task.json["taskId"])["lifecycleStatus"] == "DELETED"
