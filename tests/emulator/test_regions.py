"""Regions and the storage options in them."""

from __future__ import annotations


def test_regions_are_a_list_the_tutorial_can_read(api):
    regions = api.ok("GET", "/htc/regions")
    assert isinstance(regions, list) and regions
    names = [r["region"] for r in regions]
    assert "AWS_EU_WEST_1" in names
    assert all(r["supportedArchitectures"] for r in regions)
    gcp = api.ok("GET", "/htc/regions", params={"cloudProvider": "GCP"})
    assert gcp and all(r["cloudProvider"] == "GCP" for r in gcp)
    assert api.ok("GET", "/htc/regions/AWS_EU_WEST_1")["region"] == "AWS_EU_WEST_1"


def test_storage_options(api, emulator):
    options = api.ok("GET", "/htc/storage")
    assert {"region": "AWS_EU_WEST_1", "storageName": emulator.bucket, "provider": "AWS"} in options
    assert api.ok("GET", "/htc/storage/region/AWS_EU_WEST_1")["storageName"] == emulator.bucket
    assert api.get("/htc/storage/region/GCP_US_EAST_1").status_code == 404
