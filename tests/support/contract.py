"""A spec-checking HTTP client for the emulator's tests.

:class:`ContractClient` talks to one running emulator and checks every
request and response against the OpenAPI document (:mod:`tests.support.spec`);
the ``client_for`` and ``api`` fixtures (``tests/conftest.py``) make them.
"""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlsplit

import requests

from tests.support.spec import ContractValidator

# A no-op job on the image the ``noop_image`` fixture registers (tests/emulator/conftest.py).
NOOP = {"imageName": "noop:v1", "commands": ["python", "-c", "pass"], "execTimeoutSeconds": 60}


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

    def wait_image_ready(self, project_id: str, image_name: str, timeout: float = 60) -> None:
        """Poll the image's status until READY: the platform refuses a batch naming an image it is replicating.

        Until then the status is a 404 (not known yet) or PENDING.
        """
        deadline = time.monotonic() + timeout
        path = f"/htc/projects/{project_id}/container-registry/images/{image_name}"
        while True:
            response = self.request("GET", path, request_valid=None)
            if response.status_code == 200 and response.json()["status"] == "READY":
                return
            assert response.status_code in (200, 404), f"GET {path}: {response.status_code} {response.text}"
            assert time.monotonic() < deadline, f"{image_name} not READY after {timeout} s: {response.text}"
            time.sleep(0.05)

    def submit(
        self, project_id: str, task_id: str, definition: dict, *, batch_size: int = 1, group: str | None = None, **extra
    ) -> str:
        """Submit one batch of ``definition`` (once its image is READY, where the emulator checks); its parentJobId."""
        if self.emu.profile.images_checked_at_submit:
            self.wait_image_ready(project_id, definition["imageName"])
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
        """Every line of the job's log so far, oldest first: pages followed through ``next`` (some are empty)."""
        params = {"sort": "asc", "pageSize": 10000}
        lines = []
        while True:
            body = self.ok("GET", f"/htc/projects/{project_id}/tasks/{task_id}/jobs/{job_id}/logs", params=params)
            lines += [line["message"] for line in body["items"]]
            if "next" not in body:
                return lines
            params["pageIndex"] = parse_qs(urlsplit(body["next"]).query)["pageIndex"][0]
