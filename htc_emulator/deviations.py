"""Every deliberate departure from the OpenAPI document, with its reason: the one place.

The emulator follows ``htc_emulator/openapi/htc-openapi.json`` except where
this module says otherwise. :data:`DEVIATIONS` names each departure and why
it is made; :func:`apply` turns a copy of the spec into the one the emulator
actually answers by, which is what the contract checks, the session audit and
the Schemathesis run validate against. Nothing else in the package may depart
from the spec without an entry here.

What the real platform does beyond the spec where it is awkward (refresh ticks,
image replication, start latency, CloudWatch log pages, best-effort cancel,
``userDefined_`` claims, the ``Refresh`` scheme, null ``organizationCode``, jobs
deleted 60 days after they end), each with its public source, is the one module
beside this one: :mod:`htc_emulator.platform_profile`.
"""

from __future__ import annotations

import copy

DEVIATIONS = {
    "GET /htc/regions": "200 is a list of HTCRegionAdminSettings; the spec's single HTCInfraResource is a "
    "documentation error (the summary says 'region settings for all regions'), and the "
    "original tutorial reads a list of {region, supportedArchitectures}",
    "StorageAccessToken.storagePath": "storage tokens carry storagePath (the task's folder for a task token, the "
    "shared folder for a project token) beside projectSharedStoragePath, "
    "because the original tutorial reads it; a profile with storage_path_in_tokens=False leaves it out, "
    "as the spec reads (htc_emulator.platform_profile)",
    "HTC-Emulator-Time-Scale": "every answer carries this header: how many real seconds one second of the "
    "platform lasts here, so that clients scale the platform's periods (htc_emulator.platform_profile)",
    "RESCALE_HTC_REFRESH_TOKEN": "every job also gets this variable, which GET /auth/token exchanges "
    "(Authorization: Refresh) for a fresh job token; rescalehtc reads it in containers, the spec's list "
    "of injected variables does not name it (htc_emulator.platform_profile)",
    "PresignedPutUrlResponse.url": "a URI string; the spec describes a serialized java.net.URL object, "
    "which no client can use",
    "400 everywhere": "bad input is a 400 HTCRequestError naming the field on every operation; the spec lists "
    "400 on three operations only",
    "AWS_ environment variables": "envs names beginning with AWS_ are refused (400 naming the variable), as the "
    "original tutorial says the platform does; the spec's pattern reserves only a few",
    "429/500/503/504": "injected faults answer with an HTCRequestError body on any operation (504: a 'lost' "
    "answer that the client waited for longer than a load balancer would)",
    "413 everywhere": "a request body past its operation's limit (routes/body_limit.py) is refused before more of it "
    "is read, with a 413 HTCRequestError, on any operation; the spec documents no limit",
    "nulls in production": "fields the emulator has no value for are sent as null, as the platform does "
    "(htc-cli patches its copy of the spec for the ones it met): the fields in "
    "NULL_WITHOUT_VALUE are read as nullable",
    "DELETE task": "200 is an HTCTask, read through the HTCTask schema (so archivedAt is null as on every "
    "other task answer); the spec repeats the schema inline without the nullable marks",
    "last page without next": "a page's `next` is left out on the last page (clients stop when it is absent); "
    "null would break its `format: uri`",
    "viewType=SIMPLE": "the spec does not say what SIMPLE leaves out; the emulator sends the status fields only",
    "HTCTokenPayload": "GET /auth/token/whoami returns the token's payload as a JSON object; the spec types it as "
    "a string (htc-cli's patch for a schema missing from the published document)",
    "JsonWebKeySet.keys": "the JWKS is in RFC 7517 form (kty, n, e, kid, alg, use), which the spec's example "
    "shows and JWKS clients read; the schema's Java-bean properties are not sent",
    "registry token */*": "checked as text/plain, which the emulator sends: openapi-core leaves a */* body as "
    "bytes, which no string schema accepts (a limitation of the checker, not the API)",
    "empty content maps": "a response with `content: {}` (cancel's 404) means no body; openapi-core would demand "
    "a body of no media type, which nothing can satisfy",
}

# Properties the emulator sends as null while they have no value, which the
# spec does not mark nullable (or marks nullable beside an allOf, which
# validators ignore).
NULL_WITHOUT_VALUE = {
    "HTCTask": ["archivedAt", "deletedAt"],
    "HTCRegionComputeSettings": ["computeRegion"],
    "HTCRegionStorageSettings": ["storageRegion"],
    "HTCJob": ["group", "failureCode", "providerJobId", "jobExecutionEnvironment"],
    "HTCJobSubmitRequest": ["group", "jobName", "experimental", "cloudProvider"],
    "HTCJobDefinition": [
        "architecture",
        "claims",
        "commands",
        "envs",
        "execTimeoutSeconds",
        "maxDiskGiB",
        "maxMemory",
        "maxSwap",
        "maxVCpus",
        "priority",
        "tags",
        "workingDir",
    ],
}
# Properties a response may leave out, by the deviation above that allows it.
MAY_BE_ABSENT = {"next": "last page without next", "storagePath": "StorageAccessToken.storagePath"}

_ERROR = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/HTCRequestError"}}}}
_METHODS = ("get", "put", "post", "patch", "delete")


def _nullable(schema: dict, schemas: dict) -> dict:
    """``schema`` accepting null, with its $ref/allOf inlined: validators ignore ``nullable`` beside them."""
    parts = [schema.get("$ref")] + [part["$ref"] for part in schema.get("allOf", [])]
    inlined = {}
    for ref in filter(None, parts):
        inlined.update(copy.deepcopy(schemas[ref.rsplit("/", 1)[-1]]))
    inlined.update({k: v for k, v in schema.items() if k not in ("$ref", "allOf")})
    if "enum" in inlined:
        inlined["enum"] = [*inlined["enum"], None]
    return {**inlined, "nullable": True}


def apply(spec: dict) -> dict:
    """A copy of ``spec`` as the emulator answers it: :data:`DEVIATIONS` applied."""
    spec = copy.deepcopy(spec)
    schemas = spec["components"]["schemas"]
    paths = spec["paths"]
    regions = paths["/htc/regions"]["get"]["responses"]["200"]["content"]["application/json"]
    regions["schema"] = {"type": "array", "items": {"$ref": "#/components/schemas/HTCRegionAdminSettings"}}
    schemas["StorageAccessToken"]["properties"]["storagePath"] = {"type": "string"}
    schemas["PresignedPutUrlResponse"]["properties"]["url"] = {"type": "string", "format": "uri"}
    schemas["HTCTokenPayload"] = {"type": "object", "additionalProperties": True}
    schemas["JsonWebKey"] = {
        "type": "object",
        "required": ["kty", "kid", "alg", "use"],
        "properties": {name: {"type": "string"} for name in ("kty", "kid", "alg", "use", "n", "e")},
    }
    schemas["JsonWebKeySet"] = {
        "type": "object",
        "required": ["keys"],
        "properties": {"keys": {"type": "array", "items": {"$ref": "#/components/schemas/JsonWebKey"}}},
    }
    deleted = paths["/htc/projects/{projectId}/tasks/{taskId}"]["delete"]["responses"]["200"]
    deleted["content"]["application/json"]["schema"] = {"$ref": "#/components/schemas/HTCTask"}
    for name, fields in NULL_WITHOUT_VALUE.items():
        properties = schemas[name]["properties"]
        for field in fields:
            properties[field] = _nullable(properties[field], schemas)
    registry_token = paths["/htc/projects/{projectId}/container-registry/token"]["get"]["responses"]["200"]
    registry_token["content"] = {"text/plain": registry_token["content"].pop("*/*")}
    for item in paths.values():
        for method in _METHODS:
            if method in item:
                responses = item[method]["responses"]
                for response in responses.values():
                    if response.get("content") == {}:
                        del response["content"]
                for status in ("400", "413", "429", "500", "503", "504"):
                    responses.setdefault(status, {"description": "error", **copy.deepcopy(_ERROR)})
    return spec
