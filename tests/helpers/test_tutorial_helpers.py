"""tutorial_helpers: batch definitions, estimates, names, face results, pictures."""

from __future__ import annotations

import re
import uuid

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import pytest

import htc_helpers as htc
import tutorial_helpers as tutorial
from tests.helpers.support import new_project, new_task, results


def test_unique_name_differs_every_call_and_keeps_the_prefix():
    names = {tutorial.unique_name("library-1.2") for _ in range(50)}
    assert len(names) == 50
    assert all(re.fullmatch(r"library-1\.2-\d{8}T\d{6}-[0-9a-f]{6}", name) for name in names)


def test_submitted_says_a_second_submit_and_the_earlier_groups_still_in_the_task(session):
    project_id = new_project(session, "opencv-htc-tutorial")
    task_id = new_task(session, project_id)

    def submit(group):
        session.post(
            f"/htc/projects/{project_id}/tasks/{task_id}/jobs/batch",
            params={"group": group},
            json=[tutorial.tagging_batch("opencv-htc-tutorial:v1", 1, "no-such-list.dat")],
        )
        return group

    first = submit(tutorial.unique_name("failures-cancelled"))
    submit(tutorial.unique_name("failures-to-the-end"))  # another cell's group: not an earlier run of this one
    assert tutorial.submitted(session, project_id, task_id, first, 12) == f"submitted 12 jobs as group {first}"
    second = submit(tutorial.unique_name("failures-cancelled"))
    assert tutorial.submitted(session, project_id, task_id, second, 12) == (
        f"submitted 12 jobs again, as group {second}; the earlier run's group is still in the task: {first}"
    )
    third = submit(tutorial.unique_name("failures-cancelled"))
    earlier = ", ".join(sorted([first, second]))
    assert tutorial.submitted(session, project_id, task_id, third, 12) == (
        f"submitted 12 jobs again, as group {third}; the earlier 2 runs' groups are still in the task: {earlier}"
    )


def test_name_prefix_undoes_unique_name_and_only_it():
    assert tutorial.name_prefix(tutorial.unique_name("library-1.2")) == "library-1.2"
    assert tutorial.name_prefix("faces-scale-1.1") is None
    assert tutorial.name_prefix("library-20261201T150102-3f9a1cz") is None


def test_submitted_takes_hand_named_groups_for_no_earlier_run(session):
    project_id = new_project(session, "opencv-htc-tutorial")
    task_id = new_task(session, project_id)
    for group in ("faces-scale-1.1", "faces-scale-1.3"):
        session.post(
            f"/htc/projects/{project_id}/tasks/{task_id}/jobs/batch",
            params={"group": group},
            json=[tutorial.tagging_batch("opencv-htc-tutorial:v1", 1, "no-such-list.dat")],
        )
    assert tutorial.submitted(session, project_id, task_id, "faces-scale-1.3", 1) == (
        "submitted 1 jobs as group faces-scale-1.3"
    )


def test_tagging_batch_sets_the_worker_variables():
    batch = tutorial.tagging_batch(
        "img:v1", 7, "list.dat", scale_factor=1.1, simulate_failures=True, timeout_seconds=60
    )
    definition = batch["htcJobDefinition"]
    assert batch["batchSize"] == 7
    assert definition["imageName"] == "img:v1" and definition["execTimeoutSeconds"] == 60
    envs = {e["name"]: e["value"] for e in definition["envs"]}
    run = envs.pop("HTC_RUN_ID")
    assert envs == {
        "IMG_OBJKEY_LIST": "list.dat",
        "BATCH_JOB_ARRAY_SIZE": "7",
        "SCALE_FACTOR": "1.1",
        "SIMULATE_FAILURES": "true",
        "SIMULATE_FAILURES_SEED": "0",  # the same jobs fail every run, as the failure lesson shows
    }
    assert str(uuid.UUID(run)) == run  # each batch its own namespace in task storage
    runs = {tutorial.tagging_batch("img:v1", 1, "l")["htcJobDefinition"]["envs"][-1]["value"] for _ in range(3)}
    assert len(runs) == 3
    assert not any(name.startswith("AWS_") for name in envs)


def test_tagging_batch_without_failures_sets_no_failure_variable():
    envs = [e["name"] for e in tutorial.tagging_batch("img:v1", 1, "list.dat")["htcJobDefinition"]["envs"]]
    assert "SIMULATE_FAILURES" not in envs


@pytest.mark.parametrize("jobs", [0, -1, 1001])
def test_tagging_batch_refuses_a_size_outside_the_platform_limit(jobs):
    with pytest.raises(ValueError, match=f"not {jobs}"):
        tutorial.tagging_batch("img:v1", jobs, "list.dat")


def test_batch_estimate_counts_waves_start_up_and_refresh():
    estimate = tutorial.batch_estimate(1000, 0.6, parallel_jobs=200, start_seconds=60, refresh_seconds=30)
    assert estimate["waves"] == 5
    assert estimate["minutes"] == round((5 * 60.6 + 60) / 60, 1)
    assert estimate["vcpu_hours"] == round(1000 * 60.6 / 3600, 2)
    assert tutorial.batch_estimate(1, 10, parallel_jobs=100, vcpus_per_job=4, start_seconds=0)["vcpu_hours"] == 0.01


@pytest.mark.parametrize("args", [(0, 1.0, 10), (10, -1.0, 10), (10, 1.0, 0)])
def test_batch_estimate_refuses_impossible_figures(args):
    jobs, seconds, parallel = args
    with pytest.raises(ValueError):
        tutorial.batch_estimate(jobs, seconds, parallel_jobs=parallel)


# --- face results


def test_find_max_faces_returns_every_tied_image():
    df = results(("b.jpg", 4, "ok"), ("a.jpg", 4, "ok"), ("c.jpg", 1, "ok"), ("d.jpg", None, "error"))
    best = tutorial.find_max_faces(df)
    assert best["image"].tolist() == ["a.jpg", "b.jpg"]
    assert best["faces"].tolist() == [4, 4]


def test_find_max_faces_single_winner():
    assert tutorial.find_max_faces(results(("a.jpg", 2, "ok"), ("b.jpg", 7, "ok")))["image"].tolist() == ["b.jpg"]


@pytest.mark.parametrize("df", [results(), results(("a.jpg", None, "error")), results(("a.jpg", 0, "ok"))])
def test_find_max_faces_empty_when_no_face_anywhere(df):
    best = tutorial.find_max_faces(df)
    assert best.empty and list(best.columns) == htc.RESULT_COLUMNS


# --- pictures


def test_plot_status_history_drops_always_zero_statuses():
    t0, t1 = pd.Timestamp("2025-01-01T00:00Z"), pd.Timestamp("2025-01-01T00:00:30Z")
    history = pd.DataFrame(
        [
            (t0, "RUNNING", 2),
            (t0, "SUCCEEDED", 0),
            (t0, "FAILED", 0),
            (t1, "RUNNING", 0),
            (t1, "SUCCEEDED", 2),
            (t1, "FAILED", 0),
        ],
        columns=["time", "status", "count"],
    )
    fig = tutorial.plot_status_history(history)
    assert isinstance(fig, go.Figure)
    assert [trace.name for trace in fig.data] == ["RUNNING", "SUCCEEDED"]
    assert fig.layout.yaxis.type != "log"


@pytest.mark.slow
def test_static_png_draws_line_and_bar_figures():
    line = px.line(x=[1, 2, 3], y=[3, 1, 2], title="line")
    bars = px.bar(x=["a", "b", "a", "b"], y=[1, 2, 3, 4], color=["p", "p", "q", "q"], barmode="group")
    for figure in (line, bars):
        png = tutorial.static_png(figure)
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000


def png_size(png: bytes) -> tuple[int, int]:
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


@pytest.mark.slow
def test_static_png_is_plotlys_own_drawing_of_the_figure_at_the_charts_size():
    """What the code asks for shows in the still (a log axis, value labels), at the interactive chart's size."""
    linear = px.bar(x=["1", "2", "6"], y=[9.5, 4.2, 2.1], title="same data")
    logarithmic = px.bar(x=["1", "2", "6"], y=[9.5, 4.2, 2.1], title="same data", log_y=True)
    labelled = px.bar(x=["1", "2", "6"], y=[9.5, 4.2, 2.1], title="same data", text_auto=True)
    pngs = [tutorial.static_png(figure) for figure in (linear, logarithmic, labelled)]
    assert all(png_size(png) == (tutorial.FIGURE_WIDTH, tutorial.FIGURE_HEIGHT) for png in pngs)
    assert len({*pngs}) == 3
    assert png_size(tutorial.static_png(linear, width=300, height=200)) == (300, 200)


def test_show_image_names_a_missing_picture(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.jpg"):
        tutorial.show_image(tmp_path / "nothing.jpg")


# --- pictures outside a notebook: a file and one line, not a dump of the figure


def test_show_figure_outside_a_notebook_writes_an_html_file_and_says_where(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    figure = px.line(x=[1, 2, 3], y=[3, 1, 2], title="Job statuses: over time")
    written = tutorial.show_figure(figure)
    printed = capsys.readouterr().out
    assert written == tmp_path / "job-statuses-over-time.html"
    assert printed.count("\n") == 1 and str(written) in printed and len(printed) < 200
    html = written.read_text()
    # plotly.js is inside the file (over a megabyte), so it opens without a network.
    assert "Job statuses: over time" in html and len(html) > 1_000_000 and '<script src="http' not in html
    elsewhere = tutorial.show_figure(figure, tmp_path / "sub.html")
    assert elsewhere == tmp_path / "sub.html" and elsewhere.is_file()


def test_show_image_outside_a_notebook_says_where_the_picture_is(tmp_path, capsys):
    picture = tmp_path / "photo.jpg"
    picture.write_bytes(b"\xff\xd8 any bytes")
    tutorial.show_image(picture)
    assert capsys.readouterr().out == f"picture: {picture}\n"


def test_tagging_batch_takes_a_retry_strategy():
    assert "retryStrategy" not in tutorial.tagging_batch("img:v1", 2, "list.dat")
    batch = tutorial.tagging_batch("img:v1", 2, "list.dat", retry_strategy={"maxRetries": 2})
    assert batch["retryStrategy"] == {"maxRetries": 2}
