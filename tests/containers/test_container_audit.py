"""The container half of the tutorial as the session ran it, checked after the notebook.

With a Docker engine the notebook builds the image from docker/Dockerfile, pushes it to the
session emulator's registry and runs its batches as containers; nbval compares what it prints
("234 photos tagged, 0 unreadable, 0 missing"). This audit checks the other half of that claim:
every job of the notebook's main batch really ran as a container of the pushed image.
"""

import pytest

# The notebook's main batch: its group is named once per task (a second run of the cell finds it and submits nothing).
MAIN_TASK, MAIN_GROUP = "faces-scale-1.2", "library-1.2"
IMAGE = "opencv-htc-tutorial:v1"


@pytest.mark.session_audit
def test_the_notebooks_batch_ran_as_containers_of_the_pushed_image(emulator, request, containers_or_skip):
    if not any(item.nodeid.startswith("tutorial.ipynb") for item in request.session.items):
        pytest.skip("the notebook did not run in this session")
    if emulator.scheduler.docker is None:
        containers_or_skip("the session emulator runs jobs as processes (no Docker engine answered, or HTC_DOCKER=0)")
    backend, ran_as = emulator.backend, emulator.scheduler.container_jobs
    main_jobs = [
        job
        for job in list(backend.jobs.values())
        if backend.tasks[job.task_id].name == MAIN_TASK and job.group == MAIN_GROUP
    ]
    assert main_jobs, f"no job of the notebook's main batch (task {MAIN_TASK!r}, group {MAIN_GROUP!r})"
    assert [job.job_id for job in main_jobs if job.job_id not in ran_as] == []
    assert {job.status for job in main_jobs} == {"SUCCEEDED"}
    # Each run of the notebook (nbval's, the browser test's) pushed to its own project's repository.
    assert [
        ran_as[job.job_id]
        for job in main_jobs
        if not ran_as[job.job_id].endswith(f"/projects/{job.project_id}/{IMAGE}")
    ] == []
