"""Workspace and project policies: resource limits, dimensions and task retention, and their rules.

Plain state, owned by the backend: it changes them (the policy routes call
its methods), reads them when it submits and admits jobs
(:meth:`Backend.submit`, :meth:`Backend.admit`) and when it applies retention
(:meth:`Backend.apply_retention`). Callers hold the backend's lock.
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass, field

from .errors import InvalidRequest
from .schemas import SupportedRescaleRegion

# Architectures each provider's regions offer in the emulator.
PROVIDER_ARCHITECTURES = {"AWS": ["X86", "AARCH64"], "GCP": ["X86", "AARCH64"], "AZURE": ["X86"]}
PRIORITIES = ("ON_DEMAND_PRIORITY", "ON_DEMAND_ECONOMY")
# One machine type per architecture, big enough for any job the spec allows (64 vCPUs), so
# dimensions constrain where jobs run (region, priority, architecture), not their size.
MACHINE_TYPES = {
    "X86": {"machineType": "htc-emulator-x86-64", "vCPUs": 64, "memory": 262144},
    "AARCH64": {"machineType": "htc-emulator-aarch64-64", "vCPUs": 64, "memory": 262144},
}
DIMENSION_KEYS = ("region", "priority", "machineType", "hyperthreading", "computeScalingPolicy")
# The regions the emulated workspace offers (the same list GET /htc/regions answers).
WORKSPACE_REGIONS = list(SupportedRescaleRegion.__args__)


@dataclass
class Limit:
    """An HTCProjectLimit: at most ``vcpus`` vCPUs of the project's jobs active at once."""

    limit_id: int
    project_id: str
    modifier_role: str
    vcpus: int
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass
class RetentionPolicy:
    """Hours of inactivity before a task is archived, and after archiving before it is deleted (0: never)."""

    archive_after: int
    delete_after: int
    created_at: dt.datetime

    def archive_due(self, last_active_at: dt.datetime, at: dt.datetime, hour: dt.timedelta) -> bool:
        """Whether a task idle since ``last_active_at`` is due for archiving at ``at``."""
        return bool(self.archive_after) and last_active_at + self.archive_after * hour <= at

    def delete_due(self, archived_at: dt.datetime, at: dt.datetime, hour: dt.timedelta) -> bool:
        """Whether a task archived at ``archived_at`` is due for deletion at ``at``."""
        return bool(self.delete_after) and archived_at + self.delete_after * hour <= at


@dataclass
class WorkspaceLimit:
    vcpus: int
    created_at: dt.datetime
    updated_at: dt.datetime


def workspace_dimensions(regions: list[str] = WORKSPACE_REGIONS) -> list[dict]:
    """Every combination the workspace offers: its regions x priorities x the regions' machine types."""
    combinations = []
    for region, priority in itertools.product(regions, PRIORITIES):
        for architecture in PROVIDER_ARCHITECTURES.get(region.split("_", 1)[0], ["X86"]):
            machine = MACHINE_TYPES[architecture]
            combinations.append(
                {
                    "region": region,
                    "priority": priority,
                    "machineType": machine["machineType"],
                    "hyperthreading": True,
                    "computeScalingPolicy": "BALANCED",
                    "derived": {
                        "architecture": architecture,
                        "vCPUs": machine["vCPUs"],
                        "memory": machine["memory"],
                        "swap": False,
                    },
                }
            )
    return combinations


def offered_dimensions(wanted: list[dict]) -> list[dict]:
    """The workspace's combination for each wanted one (the fields given must all match).

    Refused, naming the wanted one's place in the list, when the workspace offers none.
    """
    offered = workspace_dimensions()
    chosen = []
    for number, given in enumerate(wanted):
        match = next((c for c in offered if all(c[key] == value for key, value in given.items())), None)
        if match is None:
            raise InvalidRequest((number,), f"the workspace offers no dimension combination {given}")
        chosen.append(match)
    return chosen


def allows(combination: dict, region: str, definition: dict) -> bool:
    """Whether a dimension combination lets a job of ``definition`` run in ``region``.

    It must match the job's region, priority and architecture and be big enough for it.
    """
    derived = combination["derived"]
    return (
        (combination["region"], combination["priority"], derived["architecture"])
        == (region, definition.get("priority", "ON_DEMAND_PRIORITY"), definition.get("architecture", "X86"))
        and definition.get("maxVCpus", 1) <= derived["vCPUs"]
        and definition.get("maxMemory", 128) <= derived["memory"]
    )


@dataclass
class Policies:
    """All limits, dimensions and retention policies of the one emulated workspace."""

    limits: dict[int, Limit] = field(default_factory=dict)
    workspace_limit: WorkspaceLimit | None = None
    dimensions: dict[str, list[dict]] = field(default_factory=dict)
    project_retention: dict[str, RetentionPolicy] = field(default_factory=dict)
    workspace_retention: RetentionPolicy | None = None
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def project_limits(self, project_id: str) -> list[Limit]:
        return [limit for limit in self.limits.values() if limit.project_id == project_id]

    def set_limit(self, project_id: str, role: str, vcpus: int, at: dt.datetime) -> Limit:
        """Add the project's limit for ``role``, or overwrite the one it has."""
        existing = next((lim for lim in self.project_limits(project_id) if lim.modifier_role == role), None)
        if existing is not None:
            existing.vcpus, existing.updated_at = vcpus, at
            return existing
        limit = Limit(next(self._ids), project_id, role, vcpus, at, at)
        self.limits[limit.limit_id] = limit
        return limit

    def vcpu_cap(self, project_id: str) -> int | None:
        """The project's own active-vCPU cap (the smallest of its limits), or None."""
        caps = [limit.vcpus for limit in self.project_limits(project_id)]
        return min(caps) if caps else None

    def retention_for(self, project_id: str) -> RetentionPolicy | None:
        """The project's policy, else the workspace's."""
        return self.project_retention.get(project_id, self.workspace_retention)
