"""quickstart: the photos found from the project's own folder, from any working directory, or a clear error first."""

import shutil

import pytest

import config
import htc_helpers as htc
import quickstart
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
    session, project_id, task_id, image, list_key = quickstart.ready_task(config.htc_api_url(), photos)
    assert htc.read_image_list(session, project_id, list_key) == sorted(p.name for p in photos.iterdir())
    assert sorted(htc.list_objects(session, project_id)) == sorted([list_key, *(p.name for p in photos.iterdir())])
    assert htc.list_objects(session, project_id, task_id) == [] and image == quickstart.IMAGE
    assert list(workdir.iterdir()) == []
