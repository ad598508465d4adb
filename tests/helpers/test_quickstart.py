"""quickstart: the photos found from the project's own folder, from any working directory, or a clear error first;
one project reused, each photo uploaded once, the image made READY or a clear error."""

import shutil
from pathlib import Path

import pytest

import config
import htc_helpers as htc
import quickstart
from run_tutorial import emulator_environment
from tests.helpers.support import DATA


def test_the_photos_are_the_projects_own_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HTC_TUTORIAL_IMAGES", raising=False)
    assert quickstart.photos_folder() == DATA / "images"
    monkeypatch.setenv("HTC_TUTORIAL_IMAGES", str(DATA / "images"))
    assert quickstart.photos_folder() == DATA / "images"


def test_without_photos_it_says_how_to_point_at_them_before_creating_anything(emulator, tmp_path, monkeypatch):
    session = htc.HtcSession(config.htc_api_url(), config.get_profile()[1])
    projects = len(htc.paginate(session, "/htc/projects"))
    monkeypatch.setenv("HTC_TUTORIAL_IMAGES", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError) as missing:
        quickstart.ready_task(config.htc_api_url())
    message = str(missing.value)
    assert f"no photos in {tmp_path / 'nowhere'}" in message
    assert "images_dir=" in message and "HTC_TUTORIAL_IMAGES" in message and "make data" in message
    assert len(htc.paginate(session, "/htc/projects")) == projects
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no photos in"):
        quickstart.ready_task(config.htc_api_url(), tmp_path / "empty")


@pytest.mark.slow
def test_ready_task_from_another_folder_leaves_that_folder_alone(emulator, tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    photos.mkdir()
    for source in sorted((DATA / "images").glob("*.jpg"))[:2]:
        shutil.copy(source, photos / source.name)
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    session, project_id, task_id, image, list_key = quickstart.ready_task(
        config.htc_api_url(), photos, project_name=f"quickstart-{tmp_path.name}"
    )
    assert htc.read_image_list(session, project_id, list_key) == sorted(p.name for p in photos.iterdir())
    assert sorted(htc.list_objects(session, project_id)) == sorted([list_key, *(p.name for p in photos.iterdir())])
    assert htc.list_objects(session, project_id, task_id) == [] and image == quickstart.IMAGE
    assert list(workdir.iterdir()) == []


def two_photos(tmp_path) -> Path:
    photos = tmp_path / "photos"
    photos.mkdir()
    for source in sorted((DATA / "images").glob("*.jpg"))[:2]:
        shutil.copy(source, photos / source.name)
    return photos


@pytest.mark.slow
def test_ready_task_twice_reuses_one_project_and_uploads_each_photo_once(tmp_path, monkeypatch):
    """On a fresh platform (the tutorial's settings, the platform's profile, process mode), from a folder of its own."""
    photos = two_photos(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HTC_PROJECT_ID", raising=False)
    uploaded, upload = [], htc.upload_files
    monkeypatch.setattr(
        htc,
        "upload_files",
        lambda session, pid, files, **kw: uploaded.append([p.name for p in files]) or upload(session, pid, files, **kw),
    )
    with emulator_environment(docker=False, profile="platform"):
        first = quickstart.ready_task(config.htc_api_url())
        second = quickstart.ready_task(config.htc_api_url(), photos)
        session = first[0]
        projects = htc.paginate(session, "/htc/projects")
    assert len(projects) == 1 and projects[0]["projectName"] == quickstart.PROJECT_NAME
    assert first[1] == second[1] == projects[0]["projectId"] and first[2] != second[2]
    everything = sorted(p.name for p in (DATA / "images").iterdir() if p.is_file())
    # The data set and its list, then the list of the second folder alone: its photos were there already.
    assert uploaded == [everything, [quickstart.IMAGE_LIST_KEY], [quickstart.IMAGE_LIST_KEY]]
    assert {p.name for p in photos.iterdir()} <= set(everything)


@pytest.mark.slow
def test_ready_task_uses_the_project_named_by_htc_project_id(tmp_path, monkeypatch):
    photos = two_photos(tmp_path)
    with emulator_environment(docker=False, profile="platform"):
        session = htc.HtcSession(config.htc_api_url(), config.get_profile()[1])
        chosen = session.post(
            "/htc/projects", json={"projectName": "mine", "projectDescription": "pytest", "regions": ["AWS_US_EAST_2"]}
        ).json()
        monkeypatch.setenv("HTC_PROJECT_ID", chosen["projectId"])
        _, project_id, _, _, _ = quickstart.ready_task(config.htc_api_url(), photos)
        projects = htc.paginate(session, "/htc/projects")
        regions = session.get(f"/htc/projects/{project_id}").json()["regions"]
    assert project_id == chosen["projectId"] and len(projects) == 1
    assert regions == ["AWS_US_EAST_2", quickstart.REGION]  # the region the tutorial needs, added


def test_without_docker_an_image_the_registry_lacks_is_a_clear_error(tmp_path, monkeypatch):
    photos = two_photos(tmp_path)
    monkeypatch.setenv("HTC_DOCKER", "0")
    with emulator_environment(docker=False, profile="platform"):
        with pytest.raises(RuntimeError) as missing:
            quickstart.ready_task(config.htc_api_url(), photos, image="never-built:v1")
        session = htc.HtcSession(config.htc_api_url(), config.get_profile()[1])
        project_id = htc.paginate(session, "/htc/projects")[0]["projectId"]
        uploaded = htc.list_objects(session, project_id)
    message = str(missing.value)
    assert "never-built:v1 is not in the registry" in message and "no Docker engine answers" in message
    assert "Publish the container image" in message
    assert uploaded == []  # nothing uploaded before the image is settled
