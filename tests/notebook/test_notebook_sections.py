"""Sections of tutorial.ipynb lifted out as a reader would copy them.

Each test takes the code cells of one section (the cells carrying the section's tag), puts
before them only the Setup and Parameters cells and the one-line preamble the section states
("On its own: `...`"), and runs them in a fresh kernel against a fresh emulator. A section
that uses a name its preamble does not make fails here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from run_tutorial import emulator_environment, to_html

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = nbformat.read(ROOT / "tutorial.ipynb", as_version=4)
PREAMBLE = re.compile(r"On its own:\s*`([^`]+)`")
# A papermill-style override after the Parameters cell keeps the batches small.
SMALL = "JOB_COUNT = 6"
CHECK = "print('CHECK ' + json.dumps({}, default=str))"


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


def run_section(tag: str, check: str, *, preamble_line: str | None = None, **settings) -> dict:
    """Run Setup, Parameters, the preamble and the section in a fresh kernel; return what ``check`` printed.

    The fresh emulator has the tutorial's settings, and ``settings`` on top (``profile=...``).
    """
    sources = [
        tagged("setup")[0].source,
        tagged("parameters")[0].source,
        SMALL,
        preamble_line or preamble(tag),
        *(c.source for c in tagged(tag)),
        CHECK.format(check),
    ]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    with emulator_environment(**settings):
        NotebookClient(
            notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
        ).execute()
    printed = "".join(o.get("text", "") for o in notebook.cells[-1].outputs if o.output_type == "stream")
    return json.loads(printed.split("CHECK ", 1)[1])


def test_every_copyable_section_states_its_preamble():
    for tag in ("batch", "gather", "download", "overhead", "cancel"):
        assert preamble(tag).count("\n") == 0


@pytest.mark.slow
def test_batch_submit_and_monitor_section():
    result = run_section("batch", '{"counts": htc.group_status_counts(session, PROJECT_ID, TASK_ID, GROUP)}')
    assert {status: n for status, n in result["counts"].items() if n} == {"SUCCEEDED": 6}


@pytest.mark.slow
def test_gather_section_finds_the_winner():
    result = run_section(
        "gather",
        '{"winner": winner, "most": int(results["faces"].max()), '
        '"winner_faces": int(best.iloc[0]["faces"]), "missing": missing, '
        '"rows": len(results), "listed": len(htc.read_image_list(session, PROJECT_ID))}',
    )
    assert result["missing"] == []
    assert result["rows"] == result["listed"] > 0
    assert result["winner_faces"] == result["most"] >= 1


@pytest.mark.slow
def test_download_section_fetches_the_winner():
    result = run_section(
        "download", '{"path": str(downloaded[0]), "winner": winner, "size": downloaded[0].stat().st_size}'
    )
    assert Path(result["path"]).name == f"{result['winner']}_tagged.jpg"
    assert result["size"] > 0


@pytest.mark.slow
def test_overhead_section_times_three_job_sizes():
    result = run_section(
        "overhead",
        '{"jobs": timings["jobs"].tolist(), "seconds": timings["seconds"].tolist(), '
        '"status": deleted["lifecycleStatus"]}',
    )
    assert result["jobs"] == [6, 3, 1]
    assert all(seconds > 0 for seconds in result["seconds"])
    assert result["status"] == "DELETED"


@pytest.mark.slow
def test_cancel_section_cancels_the_failing_group():
    result = run_section(
        "cancel",
        '{"cancelled": cancelled, "failed": htc.failure_summary(failed_jobs), '
        '"to_the_end": htc.status_counts(all_jobs)}',
    )
    assert result["cancelled"] is True
    assert any(reason.startswith("ErrorUnknownFailure") for reason in result["failed"])
    assert result["to_the_end"]["SUCCEEDED"] + result["to_the_end"]["FAILED"] == 12
    assert result["to_the_end"]["FAILED"] > 0


@pytest.mark.slow
def test_gather_section_explains_a_batch_whose_jobs_all_failed():
    """Every job fails (its image list is missing): the gather section names the failures, no IndexError."""
    broken_batch = (
        "session, PROJECT_ID, TASK_ID, IMAGE, IMAGE_LIST_KEY = quickstart.ready_task(API_URL); "
        "group = tutorial.unique_name('broken'); "
        "session.post(f'{API_URL}/htc/projects/{PROJECT_ID}/tasks/{TASK_ID}/jobs/batch', "
        "params={'group': group}, json=[tutorial.tagging_batch(IMAGE, JOB_COUNT, 'no-such-list.dat')]); "
        "htc.monitor_group(session, PROJECT_ID, TASK_ID, group, expected_jobs=JOB_COUNT, "
        "interval=0.2, timeout=600, progress=False)"
    )
    with pytest.raises(CellExecutionError) as failure:
        run_section("gather", "{}", preamble_line=broken_batch)
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
