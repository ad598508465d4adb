"""Check requests and responses against the official OpenAPI document.

Test support (it needs ``openapi-core``, a test-only dependency). The spec
is the project's own copy, ``htc_emulator/openapi/htc-openapi.json``
(Rescale's, MIT licence; see the README there), or ``$HTC_OPENAPI_SPEC``.
A few corrections are applied first, each for a deliberate, documented
departure (see :mod:`htc_emulator.deviations`); everything else is checked
as the spec states it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from htc_emulator import deviations

DEFAULT_SPEC_PATH = Path(deviations.__file__).resolve().parent / "openapi" / "htc-openapi.json"

# The deliberate departures the checks allow, all documented in one place.
CORRECTIONS = deviations.DEVIATIONS


def spec_path() -> Path:
    return Path(os.environ.get("HTC_OPENAPI_SPEC", DEFAULT_SPEC_PATH))


def load_spec(path: str | os.PathLike | None = None) -> dict:
    with open(path or spec_path(), encoding="utf-8") as handle:
        return json.load(handle)


def corrected_spec(spec: dict, server_url: str) -> dict:
    """A copy of ``spec`` served at ``server_url``, with :data:`CORRECTIONS` applied."""
    spec = deviations.apply(spec)
    spec["servers"] = [{"url": server_url}]
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
        self._spec = corrected
        self._routes = sorted(
            ((_path_regex(path), path) for path in corrected["paths"]),
            key=lambda route: route[1].count("{"),
        )

    def _as_api_request(self, prepared):
        """Root aliases (``/auth/token``, registry token) are checked as their /api/v1 paths."""
        from openapi_core.contrib.requests import RequestsOpenAPIRequest

        if not prepared.url.startswith(self.api_url):
            parts = urlsplit(prepared.url)
            prepared = prepared.copy()
            prepared.url = urlunsplit(parts._replace(path="/api/v1" + parts.path))
        return RequestsOpenAPIRequest(prepared)

    def request_errors(self, prepared) -> list[str]:
        """Why the spec refuses this request (empty when it accepts it).

        Properties the spec marks ``readOnly`` are left out of the body first, at any depth: OpenAPI asks
        clients not to send them, not servers to refuse them, and the platform's JSON reader ignores them,
        as the emulator does (``htc_emulator/schemas.py``). openapi-core would refuse them outright.
        """
        request = self._as_api_request(self._without_read_only(prepared))
        errors = []
        for error in self._openapi.iter_request_errors(request):
            # The API-key exchange uses "Authorization: Token <key>", a
            # scheme the spec does not describe.
            if "/auth/" in request.path and "Security" in type(error).__name__:
                continue
            errors.append(_describe(error))
        return errors

    def _without_read_only(self, prepared):
        """``prepared`` with the readOnly properties of its JSON body removed (itself when there are none)."""
        if not prepared.body or "json" not in prepared.headers.get("Content-Type", ""):
            return prepared
        template = self._template(self._as_api_request(prepared))
        operation = self._spec["paths"][template].get(prepared.method.lower(), {}) if template else {}
        body = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
        if "schema" not in body:
            return prepared
        try:
            value = json.loads(prepared.body)
        except ValueError:
            return prepared
        kept = self._drop_read_only(body["schema"], value)
        if kept == value:
            return prepared
        prepared = prepared.copy()
        prepared.prepare_body(data=None, files=None, json=kept)
        return prepared

    def _drop_read_only(self, schema: dict, value):
        schema = self._resolve(schema)
        if isinstance(value, list) and "items" in schema:
            return [self._drop_read_only(schema["items"], item) for item in value]
        if isinstance(value, dict):
            properties = self._properties(schema)
            read_only = {
                name for name, prop in properties.items() if prop.get("readOnly") or self._resolve(prop).get("readOnly")
            }
            return {
                name: self._drop_read_only(properties[name], item) if name in properties else item
                for name, item in value.items()
                if name not in read_only
            }
        return value

    def response_errors(self, response) -> list[str]:
        """Why the spec refuses this response (empty when it conforms)."""
        from openapi_core.contrib.requests import RequestsOpenAPIResponse

        request = self._as_api_request(response.request)
        if response.status_code == 404 and self._template(request) is None:
            return []  # a path no operation has: the spec cannot describe its 404
        return [_describe(e) for e in self._openapi.iter_response_errors(request, RequestsOpenAPIResponse(response))]

    def _template(self, request) -> str | None:
        """The spec path whose operation this request is, if any."""
        path = request.path[len(urlsplit(self.api_url).path) :]
        return next(
            (
                t
                for regex, t in self._routes
                if regex.fullmatch(path) and request.method.lower() in self._spec["paths"][t]
            ),
            None,
        )

    def shape_errors(self, response) -> list[str]:
        """Documented properties a successful JSON response leaves out.

        The platform sends every property of its answers, null where it has
        no value, and clients read them unconditionally. Only the properties
        in :data:`deviations.MAY_BE_ABSENT` may be missing, and a job list
        asked for ``viewType=SIMPLE`` is not checked (see the deviations).
        """
        if not 200 <= response.status_code < 300 or "json" not in response.headers.get("content-type", ""):
            return []
        request = self._as_api_request(response.request)
        if "SIMPLE" in request.parameters.query.getlist("viewType"):
            return []
        template = self._template(request)
        if template is None:
            return []
        operation = self._spec["paths"][template].get(request.method.lower(), {})
        documented = operation.get("responses", {}).get(str(response.status_code), {})
        schema = documented.get("content", {}).get("application/json", {}).get("schema")
        return [] if schema is None else self._missing(schema, response.json(), "body")

    def _resolve(self, schema: dict) -> dict:
        while "$ref" in schema:
            schema = self._spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
        return schema

    def _properties(self, schema: dict) -> dict:
        schema = self._resolve(schema)
        properties = dict(schema.get("properties", {}))
        for part in schema.get("allOf", []) + schema.get("anyOf", []):
            properties.update(self._properties(part))
        return properties

    def _missing(self, schema: dict, value, where: str) -> list[str]:
        schema = self._resolve(schema)
        problems = []
        if isinstance(value, list):
            items = schema.get("items") or next((p["items"] for p in schema.get("anyOf", []) if "items" in p), None)
            for index, item in enumerate(value if items else []):
                problems += self._missing(items, item, f"{where}[{index}]")
        elif isinstance(value, dict):
            for name, prop in self._properties(schema).items():
                if self._resolve(prop).get("writeOnly") or prop.get("writeOnly"):
                    continue
                if name not in value:
                    if name not in deviations.MAY_BE_ABSENT:
                        problems.append(f"{where}.{name} is missing")
                elif value[name] is not None:
                    problems += self._missing(prop, value[name], f"{where}.{name}")
        return problems


def _path_regex(template: str) -> re.Pattern:
    """A spec path as a regex; the registry's repository and image names may contain '/'."""
    pattern = re.escape(template)
    for name in re.findall(r"\{(\w+)\}", template):
        any_segment = ".+" if name in ("repoName", "imageName") else "[^/]+"
        pattern = pattern.replace(re.escape("{" + name + "}"), any_segment)
    return re.compile(pattern)


def _describe(error: Exception) -> str:
    causes = [error]
    while causes[-1].__cause__ is not None:
        causes.append(causes[-1].__cause__)
    details = [str(c) for c in causes]
    for cause in causes:
        for sub in getattr(cause, "schema_errors", []) or []:
            details.append(f"{list(sub.absolute_path)}: {sub.message}")
    return " | ".join(details)
