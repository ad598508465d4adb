"""The tutorial's own helpers in htc_helpers: batch definitions, estimates, names, pictures, clean-up."""

from __future__ import annotations

import re

import plotly.express as px
import pytest

import config
import htc_helpers as htc


def test_unique_name_differs_every_call_and_keeps_the_prefix():
    names = {htc.unique_name("library-1.2") for _ in range(50)}
    assert len(names) == 50
    assert all(re.fullmatch(r"library-1\.2-\d{8}T\d{6}-[0-9a-f]{6}", name) for name in names)


def test_tagging_batch_sets_the_worker_variables():
    batch = htc.tagging_batch("img:v1", 7, "list.dat", scale_factor=1.1, simulate_failures=True, timeout_seconds=60)
    definition = batch["htcJobDefinition"]
    assert batch["batchSize"] == 7
    assert definition["imageName"] == "img:v1" and definition["execTimeoutSeconds"] == 60
    envs = {e["name"]: e["value"] for e in definition["envs"]}
    assert envs == {
        "IMG_OBJKEY_LIST": "list.dat",
        "BATCH_JOB_ARRAY_SIZE": "7",
        "SCALE_FACTOR": "1.1",
        "SIMULATE_FAILURES": "true",
    }
    assert not any(name.startswith("AWS_") for name in envs)


def test_tagging_batch_without_failures_sets_no_failure_variable():
    envs = [e["name"] for e in htc.tagging_batch("img:v1", 1, "list.dat")["htcJobDefinition"]["envs"]]
    assert "SIMULATE_FAILURES" not in envs


@pytest.mark.parametrize("jobs", [0, -1, 1001])
def test_tagging_batch_refuses_a_size_outside_the_platform_limit(jobs):
    with pytest.raises(ValueError, match=f"not {jobs}"):
        htc.tagging_batch("img:v1", jobs, "list.dat")


def test_batch_estimate_counts_waves_start_up_and_refresh():
    estimate = htc.batch_estimate(1000, 0.6, parallel_jobs=200, start_seconds=60, refresh_seconds=30)
    assert estimate["waves"] == 5
    assert estimate["minutes"] == round((5 * 60.6 + 60) / 60, 1)
    assert estimate["vcpu_hours"] == round(1000 * 60.6 / 3600, 2)
    assert htc.batch_estimate(1, 10, parallel_jobs=100, vcpus_per_job=4, start_seconds=0)["vcpu_hours"] == 0.01


@pytest.mark.parametrize("args", [(0, 1.0, 10), (10, -1.0, 10), (10, 1.0, 0)])
def test_batch_estimate_refuses_impossible_figures(args):
    jobs, seconds, parallel = args
    with pytest.raises(ValueError):
        htc.batch_estimate(jobs, seconds, parallel_jobs=parallel)


def test_static_png_draws_line_and_bar_figures():
    line = px.line(x=[1, 2, 3], y=[3, 1, 2], title="line")
    bars = px.bar(x=["a", "b", "a", "b"], y=[1, 2, 3, 4], color=["p", "p", "q", "q"], barmode="group")
    for figure in (line, bars):
        png = htc.static_png(figure)
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000


def test_show_image_names_a_missing_picture(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.jpg"):
        htc.show_image(tmp_path / "nothing.jpg")


def test_delete_objects_removes_only_the_named_keys(emulator, tmp_path):
    session = htc.HtcSession(config.htc_api_url(), config.get_profile()[1])
    project_id = session.post(
        "/htc/projects", json={"projectName": "delete-objects", "projectDescription": "clean-up helper"}
    ).json()["projectId"]
    for name in ("keep.txt", "drop-1.txt", "drop-2.txt"):
        (tmp_path / name).write_text(name)
    htc.upload_files(session, project_id, tmp_path, progress=False)
    assert htc.delete_objects(session, project_id, ["drop-1.txt", "drop-2.txt"]) == 2
    assert htc.list_objects(session, project_id) == ["keep.txt"]


def test_delete_objects_refuses_a_key_outside_the_storage_path(emulator):
    session = htc.HtcSession(config.htc_api_url(), config.get_profile()[1])
    with pytest.raises(ValueError, match="refusing object key"):
        htc.delete_objects(session, "any-project", ["../elsewhere.txt"])
