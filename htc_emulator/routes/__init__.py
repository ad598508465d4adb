"""The HTTP layer: one module per resource, each a router whose routes validate, call the model and shape the answer.

Paths, parameters, field names and status codes follow ``htc-openapi.json``
(served under :data:`API_PREFIX`). Two routes are also served at the root
because the original tutorial calls them there: ``/auth/token`` and
``/htc/projects/{projectId}/container-registry/token``. Deliberate departures
from the spec are listed, each with its reason, in :mod:`htc_emulator.deviations`,
and marked where they happen. :mod:`htc_emulator.app` assembles the routers.
"""

API_PREFIX = "/api/v1"
