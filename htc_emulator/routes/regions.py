"""Regions and the storage options in them."""

from __future__ import annotations

from fastapi import APIRouter

from .. import views
from ..errors import NotFound
from ..schemas import CloudProvider, SupportedRescaleRegion
from ..storage_rights import STORAGE_REGIONS
from .dependencies import StorageDep

router = APIRouter()


@router.get("/htc/regions")
def list_regions(cloudProvider: CloudProvider | None = None, enabled: bool | None = None) -> list:
    # Spec defect: documented as one HTCInfraResource object. Clients (the
    # tutorial) read a list of region settings, which is what this returns.
    regions = [views.region_view(r) for r in SupportedRescaleRegion.__args__]
    return [
        r
        for r in regions
        if (cloudProvider is None or r["cloudProvider"] == cloudProvider)
        and (enabled is None or r["enabled"] == enabled)
    ]


@router.get("/htc/regions/{region}")
def get_region(region: SupportedRescaleRegion) -> dict:
    return views.region_view(region)


@router.get("/htc/storage")
def list_storage(storage: StorageDep) -> list:
    return [views.storage_option_view(storage.bucket, region) for region in STORAGE_REGIONS]


@router.get("/htc/storage/region/{region}")
def get_storage(storage: StorageDep, region: SupportedRescaleRegion) -> dict:
    if region not in STORAGE_REGIONS:
        raise NotFound(f"no storage in region {region}")
    return views.storage_option_view(storage.bucket, region)
