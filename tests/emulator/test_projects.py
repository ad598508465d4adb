"""Projects and their container registry: create, read, list, add regions; repositories, password, images."""

from __future__ import annotations

import pytest

from tests.support.refusals import assert_bad_request


def test_project_create_get_list(api):
    created = api.ok(
        "POST",
        "/htc/projects",
        json={"projectName": "htc-tutorial", "projectDescription": "Tutorial project", "regions": ["AWS_EU_WEST_1"]},
    )
    project_id = created["projectId"]
    assert created["projectFolderPath"] == f"projects/{project_id}/"
    assert created["containerRegistry"].endswith("/")
    assert api.ok("GET", f"/htc/projects/{project_id}") == created
    listed = api.ok("GET", "/htc/projects", params={"pageSize": 10000})
    assert created in listed["items"] and "next" not in listed
    patched = api.ok("PATCH", f"/htc/projects/{project_id}", json={"regions": ["AWS_US_EAST_1"]})
    assert patched["regions"] == ["AWS_EU_WEST_1", "AWS_US_EAST_1"]


@pytest.mark.parametrize(
    "body,field",
    [
        ({"projectName": "x"}, "projectDescription"),
        ({"projectName": 5, "projectDescription": "x"}, "projectName"),
        ({"projectName": "x", "projectDescription": "y", "regions": ["NOWHERE"]}, "regions"),
        (
            {"projectName": "x", "projectDescription": "y", "regionSettings": [{"computeSettings": {}}]},
            "storageSettings",
        ),
    ],
)
def test_bad_projects_are_refused(api, body, field):
    before = len(api.ok("GET", "/htc/projects", params={"pageSize": 10000})["items"])
    assert_bad_request(api.post("/htc/projects", json=body, request_valid=False), field)
    assert len(api.ok("GET", "/htc/projects", params={"pageSize": 10000})["items"]) == before


# --- container registry ------------------------------------------------------------


def test_container_registry(api, emulator, noop_image):
    project_id = api.new_project()
    first = api.ok("POST", f"/htc/projects/{project_id}/container-registry/repo/noop")
    again = api.ok("POST", f"/htc/projects/{project_id}/container-registry/repo/noop")
    assert first["successfullyCreated"] is True and again["successfullyCreated"] is False
    assert first["registryURI"] == api.ok("GET", f"/htc/projects/{project_id}")["containerRegistry"]
    for base in (emulator.root_url, emulator.api_url):
        token = api.get(f"{base}/htc/projects/{project_id}/container-registry/token")
        assert token.status_code == 200 and token.headers["content-type"].startswith("text/plain")
        assert len(token.text) >= 20
    images = api.ok("GET", f"/htc/projects/{project_id}/container-registry/images")
    assert noop_image in images["images"]
    api.wait_image_ready(project_id, noop_image)  # replicated (404, then PENDING: test_platform_profile.py)
    assert api.ok("GET", f"/htc/projects/{project_id}/container-registry/images/{noop_image}") == {"status": "READY"}
    missing = api.get(f"/htc/projects/{project_id}/container-registry/images/nothere:v1")
    assert missing.status_code == 404 and missing.json()["errorType"] == "IMAGE_UNAVAILABLE"


def test_image_listed_only_once_its_repository_exists(api, noop_image):
    project_id = api.new_project()
    assert api.ok("GET", f"/htc/projects/{project_id}/container-registry/images")["images"] == []


def test_bad_path_values_are_refused(api, place):
    project_id, task_id = place
    assert_bad_request(api.get(f"/htc/projects/{project_id}/storage/token/MARS_1", request_valid=False), "region")
    assert_bad_request(
        api.post(f"/htc/projects/{project_id}/container-registry/repo/Bad_Name", request_valid=None), "repoName"
    )
    assert api.ok("GET", f"/htc/projects/{project_id}")["repositories"] == []
