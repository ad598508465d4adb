"""Workspace and project policies: resource limits, dimensions and task retention.

Plain state, read by the backend when it submits and admits jobs
(:meth:`Backend.submit`, :meth:`Backend.admit`) and by the retention sweep
(:mod:`htc_emulator.retention`). Callers hold the backend's lock.
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass, field

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


@dataclass
class WorkspaceLimit:
    vcpus: int
    created_at: dt.datetime
    updated_at: dt.datetime


def workspace_dimensions(regions: list[str]) -> list[dict]:
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
