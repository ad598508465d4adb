"""The contract checks themselves can fail, and no operation of the spec is left unimplemented.

Every other test's client (``tests/support/contract.py``) checks each exchange
against the spec; these tests make sure those checks would catch a broken answer.
"""

from __future__ import annotations

import re

import requests

from tests.support.spec import ContractValidator, corrected_spec


def test_response_checker_catches_a_broken_response(openapi_spec, emulator):
    """The contract check itself can fail: a response in the spec's documented shape for /htc/regions
    (a single object) is refused by the corrected spec, and a wrong type is refused everywhere."""
    import requests

    validator = ContractValidator(emulator.api_url, openapi_spec)

    def fake(path: str, body: bytes) -> requests.Response:
        response = requests.Response()
        response.status_code = 200
        response.headers["Content-Type"] = "application/json"
        response._content = body
        response.request = requests.Request(
            "GET", emulator.api_url + path, headers={"Authorization": "Bearer x"}
        ).prepare()
        return response

    assert validator.response_errors(fake("/htc/regions", b'{"name": "x"}'))
    assert validator.response_errors(fake("/htc/projects/p", b'{"projectName": 5}'))
    assert not validator.response_errors(fake("/htc/projects/p", b'{"projectName": "x", "projectDescription": "y"}'))
    assert corrected_spec(openapi_spec, "http://h")["servers"] == [{"url": "http://h"}]


def test_request_checker_ignores_read_only_properties_and_nothing_else(openapi_spec, emulator):
    """A body with a read-only property (the platform ignores it, so does the emulator) is not refused for it,
    even of the wrong type; a wrong type elsewhere in the same body still is."""
    validator = ContractValidator(emulator.api_url, openapi_spec)

    def post(body: dict) -> requests.PreparedRequest:
        return requests.Request(
            "POST", emulator.api_url + "/htc/projects", headers={"Authorization": "Bearer x"}, json=body
        ).prepare()

    project = {"projectName": "a", "projectDescription": "b"}
    assert not validator.request_errors(post(project | {"createdBy": [259], "createdAt": [{}]}))
    assert validator.request_errors(post(project | {"createdBy": [259], "projectName": 5}))


def test_shape_check_names_a_left_out_property(api, emulator):
    """The check every test client runs can fail: a task without archivedAt is refused."""
    body = b'{"taskId": "t", "projectId": "p", "taskName": "a", "taskDescription": "b"}'
    response = requests.Response()
    response.status_code = 200
    response.headers["Content-Type"] = "application/json"
    response._content = body
    response.request = requests.Request(
        "GET", emulator.api_url + "/htc/projects/p/tasks/t", headers={"Authorization": "Bearer x"}
    ).prepare()
    assert "body.archivedAt is missing" in api.validator.shape_errors(response)


def test_no_spec_operation_answers_501(api, openapi_spec):
    for path, item in openapi_spec["paths"].items():
        concrete = re.sub(r"\{[^}]+\}", "x", path)
        for method in ("get", "put", "post", "patch", "delete"):
            if method in item:
                response = api.request(method.upper(), concrete, request_valid=None)
                assert response.status_code < 500, (method, path, response.status_code)
