"""Check requests and responses against the official OpenAPI document.

Used by the tests (it needs ``openapi-core``, a test-only dependency). The
spec is the project's own copy, ``htc_emulator/openapi/htc-openapi.json``
(Rescale's, MIT licence; see the README there), or ``$HTC_OPENAPI_SPEC``. A few corrections are applied first, each for
a deliberate, documented departure (see :data:`CORRECTIONS`); everything
else is checked as the spec states it.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit


DEFAULT_SPEC_PATH = Path(__file__).resolve().parent / "openapi" / "htc-openapi.json"

CORRECTIONS = {
    "GET /htc/regions": "200 is a list of HTCRegionAdminSettings; the spec's HTCInfraResource "
                        "is a documentation error, and the tutorial reads a list of {region, supportedArchitectures}",
    "PresignedPutUrlResponse.url": "a URI string; the spec describes a serialized java.net.URL object",
    "400 everywhere": "bad input is a 400 HTCRequestError on every operation; the spec lists it on two",
    "429/500/503": "injected faults answer with an HTCRequestError body on any operation",
    "registry token */*": "checked as text/plain, which the emulator sends: openapi-core leaves a */* body "
                          "as bytes, which no string schema accepts (a limitation of the checker, not the API)",
    "empty content maps": "a response with `content: {}` (cancel's 404) means no body; openapi-core would "
                          "demand a body of no media type, which nothing can satisfy",
}

_ERROR = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/HTCRequestError"}}}}
_METHODS = ("get", "put", "post", "patch", "delete")


def spec_path() -> Path:
    return Path(os.environ.get("HTC_OPENAPI_SPEC", DEFAULT_SPEC_PATH))


def load_spec(path: str | os.PathLike | None = None) -> dict:
    with open(path or spec_path(), encoding="utf-8") as handle:
        return json.load(handle)


def corrected_spec(spec: dict, server_url: str) -> dict:
    """A copy of ``spec`` served at ``server_url``, with :data:`CORRECTIONS` applied."""
    spec = copy.deepcopy(spec)
    spec["servers"] = [{"url": server_url}]
    regions = spec["paths"]["/htc/regions"]["get"]["responses"]["200"]["content"]["application/json"]
    regions["schema"] = {"type": "array", "items": {"$ref": "#/components/schemas/HTCRegionAdminSettings"}}
    spec["components"]["schemas"]["PresignedPutUrlResponse"]["properties"]["url"] = {"type": "string", "format": "uri"}
    registry_token = spec["paths"]["/htc/projects/{projectId}/container-registry/token"]["get"]["responses"]["200"]
    registry_token["content"] = {"text/plain": registry_token["content"].pop("*/*")}
    for item in spec["paths"].values():
        for method in _METHODS:
            if method in item:
                responses = item[method]["responses"]
                for response in responses.values():
                    if response.get("content") == {}:
                        del response["content"]
                for status in ("400", "429", "500", "503"):
                    responses.setdefault(status, {"description": "error", **copy.deepcopy(_ERROR)})
    return spec


class ContractValidator:
    """Validates ``requests`` exchanges with the emulator against the spec."""

    def __init__(self, api_url: str, spec: dict | None = None) -> None:
        from openapi_core import Config, OpenAPI

        self.api_url = api_url.rstrip("/")
        self._root = self.api_url.rsplit("/api/v1", 1)[0]
        corrected = corrected_spec(spec or load_spec(), self.api_url)
        # The spec as published does not pass strict spec validation (some
        # responses lack a description), so only requests and responses are checked.
        self._openapi = OpenAPI.from_dict(corrected, config=Config(spec_validator_cls=None))

    def _as_api_request(self, prepared):
        """Root aliases (``/auth/token``, registry token) are checked as their /api/v1 paths."""
        from openapi_core.contrib.requests import RequestsOpenAPIRequest

        if not prepared.url.startswith(self.api_url):
            parts = urlsplit(prepared.url)
            prepared = prepared.copy()
            prepared.url = urlunsplit(parts._replace(path="/api/v1" + parts.path))
        return RequestsOpenAPIRequest(prepared)

    def request_errors(self, prepared) -> list[str]:
        """Why the spec refuses this request (empty when it accepts it)."""
        request = self._as_api_request(prepared)
        errors = []
        for error in self._openapi.iter_request_errors(request):
            # The API-key exchange uses "Authorization: Token <key>", a
            # scheme the spec does not describe.
            if "/auth/" in request.path and "Security" in type(error).__name__:
                continue
            errors.append(_describe(error))
        return errors

    def response_errors(self, response) -> list[str]:
        """Why the spec refuses this response (empty when it conforms)."""
        from openapi_core.contrib.requests import RequestsOpenAPIResponse

        request = self._as_api_request(response.request)
        return [_describe(e) for e in self._openapi.iter_response_errors(request, RequestsOpenAPIResponse(response))]


def _describe(error: Exception) -> str:
    causes = [error]
    while causes[-1].__cause__ is not None:
        causes.append(causes[-1].__cause__)
    details = [str(c) for c in causes]
    for cause in causes:
        for sub in getattr(cause, "schema_errors", []) or []:
            details.append(f"{list(sub.absolute_path)}: {sub.message}")
    return " | ".join(details)
