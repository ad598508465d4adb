"""Sections of tutorial.ipynb lifted out as a reader would copy them, into a folder of their own.

A fresh virtual environment outside the repository gets the project by ``pip install`` (from a
copy of its tracked files, removed before anything runs: what the scripts use comes from the
installed package). Each test then pastes one section into a script, as a reader would: the
Setup and Parameters cells, the one-line preamble the section states ("On its own: `...`") and
the section's code cells (the cells carrying its tag), and runs it unchanged with that
environment's Python, in an empty folder, against the session's emulator. A section that uses
a name its preamble does not make, or a file only the repository has, fails here.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
import pytest

from run_tutorial import emulator_environment, to_html
from tests.support.installed import pip_install_a_copy

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = nbformat.read(ROOT / "tutorial.ipynb", as_version=4)
PREAMBLE = re.compile(r"On its own:\s*`([^`]+)`")
# A papermill-style override after the Parameters cell keeps the batches small.
SMALL = "JOB_COUNT = 6"
CHECK = "print('CHECK ' + json.dumps({}, default=str))"
COPYABLE = ("batch", "gather", "download", "overhead", "cancel")


class SectionFailed(AssertionError):
    """The lifted script exited with an error; the message holds the end of its output."""


def tagged(tag: str) -> list[nbformat.NotebookNode]:
    cells = [c for c in NOTEBOOK.cells if c.cell_type == "code" and tag in c.metadata.get("tags", [])]
    assert cells, f"no code cell tagged {tag!r}"
    return cells


def preamble(tag: str) -> str:
    """The one line stated by the markdown cell that opens the section of the first cell tagged ``tag``."""
    first = NOTEBOOK.cells.index(tagged(tag)[0])
    for cell in reversed(NOTEBOOK.cells[:first]):
        if cell.cell_type == "markdown" and cell.source.lstrip().startswith("## "):
            found = PREAMBLE.search(cell.source)
            assert found, f"section of {tag!r} states no one-line preamble"
            return found.group(1)
    raise AssertionError(f"no section heading before the cells tagged {tag!r}")


@pytest.fixture(scope="module")
def installed_python(tmp_path_factory, emulator) -> Path:
    """A fresh virtual environment outside the repository with the project pip-installed (the notebook extra)."""
    return pip_install_a_copy(tmp_path_factory.mktemp("lifted"), "notebook")


def run_section(
    tag: str, check: str, *, python: Path | None = None, preamble_line: str | None = None, **settings
) -> dict:
    """Setup, Parameters, the preamble and the section, as one script run in an empty folder; what ``check`` printed.

    ``python`` runs it (by default this interpreter, where the project is installed editable), against
    the session emulator, or, with ``settings`` (``profile=...``), a fresh one with the tutorial's
    settings and those on top.
    """
    sources = [
        *(c.source for c in tagged("setup")),
        tagged("parameters")[0].source,
        SMALL,
        preamble_line or preamble(tag),
        *(c.source for c in tagged(tag)),
        "import json",
        CHECK.format(check),
    ]
    with tempfile.TemporaryDirectory(prefix="mine-") as folder, contextlib.ExitStack() as stack:
        assert ROOT not in Path(folder).parents
        if settings:
            stack.enter_context(emulator_environment(**settings))
        script = Path(folder) / f"{tag}.py"
        script.write_text("\n\n".join(sources) + "\n")
        # The photos the installed quickstart uploads: an installed package has no data set beside it.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["HTC_TUTORIAL_IMAGES"] = str(ROOT / "data" / "images")
        command = [str(python or sys.executable), script.name]
        run = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=900)
    if run.returncode != 0:
        raise SectionFailed(f"{script} exited with {run.returncode}:\n{run.stdout[-3000:]}\n{run.stderr[-4000:]}")
    return json.loads(run.stdout.split("CHECK ", 1)[1])


def test_every_copyable_section_states_its_preamble():
    for tag in COPYABLE:
        assert preamble(tag).count("\n") == 0


@pytest.mark.slow
def test_batch_submit_and_monitor_section(installed_python):
    result = run_section(
        "batch",
        '{"counts": htc.group_status_counts(session, PROJECT_ID, TASK_ID, GROUP)}',
        python=installed_python,
    )
    assert {status: n for status, n in result["counts"].items() if n} == {"SUCCEEDED": 6}


@pytest.mark.slow
def test_gather_section_finds_the_winner(installed_python):
    result = run_section(
        "gather",
        '{"winner": winner, "most": int(results["faces"].max()), '
        '"winner_faces": int(best.iloc[0]["faces"]), "missing": missing, '
        '"rows": len(results), "listed": len(htc.read_image_list(session, PROJECT_ID))}',
        python=installed_python,
    )
    assert result["missing"] == []
    assert result["rows"] == result["listed"] > 0
    assert result["winner_faces"] == result["most"] >= 1


@pytest.mark.slow
def test_download_section_fetches_the_winner(installed_python):
    result = run_section(
        "download",
        '{"path": str(downloaded[0]), "winner": winner, "size": downloaded[0].stat().st_size}',
        python=installed_python,
    )
    assert Path(result["path"]).name == f"{result['winner']}_tagged.jpg"
    assert result["size"] > 0


@pytest.mark.slow
def test_overhead_section_times_three_job_sizes(installed_python):
    result = run_section(
        "overhead",
        '{"jobs": timings["jobs"].tolist(), "seconds": timings["job seconds"].tolist(), '
        '"platform_vcpu_hours": on_the_platform["vcpu_hours"].tolist(), "status": deleted["lifecycleStatus"]}',
        python=installed_python,
    )
    assert result["jobs"] == [6, 3, 1]
    assert all(seconds > 0 for seconds in result["seconds"])
    assert result["status"] == "DELETED"
    # On the platform every job pays a container start: six jobs hold more vCPU-hours than three, three than one.
    assert result["platform_vcpu_hours"] == sorted(result["platform_vcpu_hours"], reverse=True)
    assert result["platform_vcpu_hours"][0] > result["platform_vcpu_hours"][-1]


@pytest.mark.slow
def test_cancel_section_cancels_the_failing_group(installed_python):
    result = run_section(
        "cancel",
        '{"cancelled": cancelled, "failed": htc.failure_summary(failed_jobs), '
        '"after_it": after_it, "to_the_end": htc.status_counts(all_jobs), "retried": retry_photos, '
        '"missing_after_retry": htc.missing_results(failure_photos, retried_results), '
        '"runs": sorted(set(retried_results["run"])), "batch_runs": sorted([full_batch["run"], retry_batch["run"]])}',
        python=installed_python,
    )
    assert result["cancelled"] is True
    # Best effort: however many were cancelled, every job of the group ended, one way or the other.
    ended = {status: n for status, n in result["after_it"].items() if n}
    assert set(ended) <= {"SUCCEEDED", "FAILED"} and sum(ended.values()) == 12
    assert any(reason.startswith("ErrorUnknownFailure") for reason in result["failed"])
    assert result["to_the_end"]["SUCCEEDED"] + result["to_the_end"]["FAILED"] == 12
    assert result["to_the_end"]["FAILED"] > 0
    # The retry of exactly the missing photos, in the same task, loses nothing; rows name both batches.
    assert len(result["retried"]) > 0
    assert result["missing_after_retry"] == []
    assert result["runs"] == result["batch_runs"]


@pytest.mark.slow
def test_gather_section_explains_a_batch_whose_jobs_all_failed(installed_python):
    """Every job fails (its image list is missing): the gather section names the failures, no IndexError."""
    broken_batch = (
        "session, PROJECT_ID, TASK_ID, IMAGE, IMAGE_LIST_KEY = quickstart.ready_task(API_URL); "
        "group = tutorial.unique_name('broken'); "
        "session.post(f'{API_URL}/htc/projects/{PROJECT_ID}/tasks/{TASK_ID}/jobs/batch', "
        "params={'group': group}, json=[tutorial.tagging_batch(IMAGE, JOB_COUNT, 'no-such-list.dat')]); "
        "htc.monitor_group(session, PROJECT_ID, TASK_ID, group, expected_jobs=JOB_COUNT, "
        "interval=0.2, timeout=600, progress=False)"
    )
    with pytest.raises(SectionFailed) as failure:
        run_section("gather", "{}", python=installed_python, preamble_line=broken_batch)
    message = str(failure.value)
    assert "RuntimeError" in message and "IndexError" not in message
    assert "6 of 6 jobs failed" in message
    assert "ErrorNonZeroContainerExitCode" in message


def test_test_machinery_stays_out_of_the_code_a_reader_copies():
    for cell in NOTEBOOK.cells:
        if cell.cell_type == "code":
            assert "NBVAL" not in cell.source.upper(), cell.source


def test_committed_outputs_show_no_error_coloured_stderr():
    """Progress bars and worker messages print to stdout; a notebook renders stderr as an error box."""
    for cell in NOTEBOOK.cells:
        for output in cell.get("outputs", []):
            assert not (output.output_type == "stream" and output.name == "stderr"), cell.source


def test_every_plot_has_a_static_image_beside_it():
    plots = [
        o for c in NOTEBOOK.cells for o in c.get("outputs", []) if "application/vnd.plotly.v1+json" in o.get("data", {})
    ]
    assert len(plots) >= 3
    assert all("image/png" in o["data"] for o in plots)


@pytest.mark.slow
def test_html_report_loads_nothing_from_the_network():
    html = to_html(NOTEBOOK)
    assert not re.findall(r"<(?:script|link)[^>]+(?:src|href)=\"(?:https?:)?//", html)
    assert html.count("<img") >= 3


# --- the notebook as text: what a reader steps through ------------------------------------


def test_committed_progress_bars_end_where_they_stop():
    frozen = [
        line
        for cell in NOTEBOOK.cells
        for output in cell.get("outputs", [])
        if output.get("output_type") == "stream"
        for line in (segment.split("\r")[-1] for segment in output.get("text", "").split("\n"))
        if re.search(r"\d+%\|", line) and "100%|" not in line
    ]
    assert not frozen, frozen
