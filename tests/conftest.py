"""Spec-checking HTTP clients for the emulator tests.

``client_for(emu)`` gives an HTTP client that checks every request body
and response against the OpenAPI document (``tests.support.spec``). The
session emulator itself starts in the project's root ``conftest.py``.
"""

from __future__ import annotations

import os
import time

import pytest
import requests

from tests.support.spec import ContractValidator, load_spec


class ContractClient:
    """Talks to one emulator over HTTP; every exchange is checked against the spec.

    ``request_valid`` says what the spec should think of the request:
    True (it must accept it), False (it must refuse it: a deliberately bad
    request) or None (don't check, e.g. an id that merely doesn't exist).
    Every response must conform, whatever its status.
    """

    def __init__(self, emu, validator: ContractValidator) -> None:
        self.emu = emu
        self.validator = validator
        self.http = requests.Session()
        self._token: str | None = None
        self.exchanges = 0

    def close(self) -> None:
        self.http.close()

    @property
    def token(self) -> str:
        if self._token is None:
            response = self.request(
                "GET",
                self.emu.root_url + "/auth/token",
                auth=None,
                headers={"Authorization": f"Token {self.emu.api_key}"},
            )
            assert response.status_code == 200, response.text
            self._token = response.json()["tokenValue"]
        return self._token

    def request(
        self, method: str, path: str, *, auth: str | None = "user", request_valid: bool | None = True, **kwargs
    ) -> requests.Response:
        url = path if path.startswith("http") else self.emu.api_url + path
        headers = kwargs.pop("headers", {})
        if auth == "user":
            headers["Authorization"] = f"Bearer {self.token}"
        elif auth is not None:
            headers["Authorization"] = f"Bearer {auth}"
        response = self.http.request(method, url, headers=headers, timeout=60, **kwargs)
        self.exchanges += 1
        problems = self.validator.response_errors(response)
        assert not problems, f"{method} {url} -> {response.status_code} breaks the spec: {problems}"
        missing = self.validator.shape_errors(response)
        assert not missing, f"{method} {url} -> {response.status_code} leaves out documented properties: {missing}"
        if request_valid is not None:
            refused = self.validator.request_errors(response.request)
            assert bool(refused) != request_valid, (
                f"spec {'refuses' if refused else 'accepts'} {method} {url}: {refused or kwargs}"
            )
        return response

    def get(self, path, **kwargs):
        return self.request("GET", path, **kwargs)

    def post(self, path, **kwargs):
        return self.request("POST", path, **kwargs)

    def patch(self, path, **kwargs):
        return self.request("PATCH", path, **kwargs)

    def delete(self, path, **kwargs):
        return self.request("DELETE", path, **kwargs)

    # --- the tutorial's steps, for tests that need a project and a task -----

    def ok(self, method: str, path: str, **kwargs):
        response = self.request(method, path, **kwargs)
        assert response.status_code == 200, f"{method} {path}: {response.status_code} {response.text}"
        return response.json() if response.content else None

    def new_project(self, regions=("AWS_EU_WEST_1",), repositories=()) -> str:
        project = self.ok(
            "POST",
            "/htc/projects",
            json={"projectName": "test", "projectDescription": "pytest", "regions": list(regions)},
        )
        for repository in repositories:
            self.ok("POST", f"/htc/projects/{project['projectId']}/container-registry/repo/{repository}")
        return project["projectId"]

    def new_task(self, project_id: str) -> str:
        task = self.ok("POST", f"/htc/projects/{project_id}/tasks", json={"taskName": "t", "taskDescription": "d"})
        return task["taskId"]

    def submit(
        self, project_id: str, task_id: str, definition: dict, *, batch_size: int = 1, group: str | None = None, **extra
    ) -> str:
        body = [{"jobName": "test", "batchSize": batch_size, "htcJobDefinition": definition, **extra}]
        params = {"group": group} if group else None
        submitted = self.ok("POST", f"/htc/projects/{project_id}/tasks/{task_id}/jobs/batch", json=body, params=params)
        return submitted[0]["parentJobId"]

    def wait_terminal(self, project_id: str, task_id: str, count: int, timeout: float = 60) -> dict:
        """Poll the task's statistics until ``count`` jobs are SUCCEEDED or FAILED."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.ok("GET", f"/htc/projects/{project_id}/tasks/{task_id}/summary-statistics")["jobStatuses"]
            if stats["SUCCEEDED"] + stats["FAILED"] >= count:
                return stats
            assert time.monotonic() < deadline, f"jobs not finished after {timeout} s: {stats}"
            time.sleep(0.1)

    def job_count(self, project_id: str, task_id: str) -> int:
        """How many jobs the task holds, in any status."""
        stats = self.ok("GET", f"/htc/projects/{project_id}/tasks/{task_id}/summary-statistics")
        return sum(stats["jobStatuses"].values())

    def job(self, project_id: str, task_id: str, job_id: str) -> dict:
        return self.ok("GET", f"/htc/projects/{project_id}/tasks/{task_id}/jobs/{job_id}")

    def logs(self, project_id: str, task_id: str, job_id: str) -> list[str]:
        body = self.ok(
            "GET",
            f"/htc/projects/{project_id}/tasks/{task_id}/jobs/{job_id}/logs",
            params={"sort": "asc", "pageSize": 10000},
        )
        return [line["message"] for line in body["items"]]


@pytest.fixture(scope="session")
def openapi_spec() -> dict:
    return load_spec()


@pytest.fixture(scope="session")
def client_for(openapi_spec):
    """``client_for(emu)``: a spec-checking client for any running emulator."""
    clients = []

    def make(emu) -> ContractClient:
        client = ContractClient(emu, ContractValidator(emu.api_url, openapi_spec))
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture(scope="session")
def api(emulator, client_for) -> ContractClient:
    """A spec-checking client for the session emulator."""
    return client_for(emulator)


# --- a Docker engine, where one answers ---------------------------------------------

# .ci/run sets this: in CI a missing engine fails the container tests instead of skipping them.
REQUIRE_DOCKER = "HTC_REQUIRE_DOCKER"


def skip_without_containers(reason: str) -> None:
    """Skip a container test for ``reason``; under HTC_REQUIRE_DOCKER=1 fail instead."""
    if os.environ.get(REQUIRE_DOCKER) == "1":
        pytest.fail(f"{REQUIRE_DOCKER}=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def containers_or_skip():
    """:func:`skip_without_containers`, for test modules."""
    return skip_without_containers


@pytest.fixture(scope="session")
def worker_image() -> str:
    """The tutorial's image, built once from docker/Dockerfile (on a stand-in base where none can be pulled)."""
    from htc_emulator.docker_engine import DockerEngine

    if not DockerEngine().available():
        skip_without_containers("no Docker engine answers `docker info` (start dockerd, or run .ci/run as root)")
    from tools import container_build

    return container_build.ensure_image("opencv-htc-tutorial:v1")


@pytest.fixture(scope="module")
def place(api):
    """A project and a task of the session emulator, shared by one test module."""
    project_id = api.new_project()
    return project_id, api.new_task(project_id)
