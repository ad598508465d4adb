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
import uuid
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
        preamble(tag) if preamble_line is None else preamble_line,
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
        '"runs": sorted(set(retried_results["run"])), "batch_runs": sorted([full_batch["run"], retry_batch["run"]]), '
        '"jobs": FAILURE_JOBS}',
        python=installed_python,
    )
    assert result["cancelled"] is True
    # Best effort: however many were cancelled, every job of the group ended, one way or the other.
    ended = {status: n for status, n in result["after_it"].items() if n}
    assert set(ended) <= {"SUCCEEDED", "FAILED"} and sum(ended.values()) == result["jobs"]
    assert any(reason.startswith("ErrorUnknownFailure") for reason in result["failed"])
    assert result["to_the_end"]["SUCCEEDED"] + result["to_the_end"]["FAILED"] == result["jobs"]
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


API_CALL = re.compile(r"\b(?:session|requests)\.(?:get|post|put|patch|delete|request)\(")


@pytest.mark.slow
def test_a_refused_key_at_the_first_call_says_so_and_where_the_key_came_from(emulator, monkeypatch, tmp_path):
    """The notebook's first API call, with a wrong key: one short message naming the cause and the key's source."""
    first_call = next(c for c in NOTEBOOK.cells if c.cell_type == "code" and API_CALL.search(c.source))
    assert "authentication" in first_call.metadata.get("tags", []), first_call.source
    wrong = "not-the-key-" + uuid.uuid4().hex
    apiconfig = tmp_path / "apiconfig"
    apiconfig.write_text(f"[mine]\napikey = {wrong}\n")
    apiconfig.chmod(0o600)
    for variable, source in (("RESCALE_API_KEY", "$RESCALE_API_KEY"), (None, f"profile [mine] of {apiconfig}")):
        if variable:
            monkeypatch.setenv(variable, wrong)
        else:
            monkeypatch.delenv("RESCALE_API_KEY")
            monkeypatch.setenv("RESCALE_APICONFIG", str(apiconfig))
            monkeypatch.setenv("RESCALE_PROFILE", "mine")
        with pytest.raises(SectionFailed) as failure:
            run_section("authentication", "{}", preamble_line="")
        output = str(failure.value)
        message = output.rstrip().splitlines()[-1]
        assert message.startswith("htc_helpers.HtcUnauthorized: "), output
        assert f"the HTC API at {emulator.api_url} refused the API key from {source}" in message
        assert "API section of your Rescale profile" in message and len(message) < 400
        assert "HTTPError" not in output and "During handling" not in output and wrong not in output


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


NEEDS = re.compile(r"\*\*Needs:\*\*(.*?)(?:\n\n|$)", re.DOTALL)
CODE_WIDTH = 100  # what a default JupyterLab shows without scrolling, beside the prompt
WAITS = ("monitor_group(", "monitor_for_cancellation(", "wait_for_job(")


def sections() -> list[tuple[str, str, list[str]]]:
    """(heading, the heading cell's text, code cells' sources) for every ``## `` section."""
    found = []
    for cell in NOTEBOOK.cells:
        if cell.cell_type == "markdown" and cell.source.lstrip().startswith("## "):
            found.append((cell.source.lstrip()[3:].splitlines()[0].strip(), cell.source, []))
        elif cell.cell_type == "code" and found:
            found[-1][2].append(cell.source)
    return found


def bound_and_loaded(sources: list[str]) -> tuple[set[str], set[str]]:
    """The names the code binds (assignments, imports, definitions, loop targets) and the names it reads."""
    import ast

    bound, loaded = set(), set()
    for source in sources:
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Name):
                (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                bound.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                bound.add(node.name)
            elif isinstance(node, ast.arg):
                bound.add(node.arg)
    return bound, loaded


def test_every_sections_needs_line_names_everything_it_needs():
    """A section run after a kernel restart needs exactly what its Needs line says (Setup and Parameters too)."""
    import builtins

    setup, _ = bound_and_loaded([c.source for c in tagged("setup")])
    parameters, _ = bound_and_loaded([tagged("parameters")[0].source])
    wrong = []
    for heading, text, code in sections():
        if not code or heading in ("Setup", "Parameters"):
            continue
        needs = NEEDS.search(text)
        if needs is None:
            wrong.append(f"{heading}: no Needs line")
            continue
        stated = set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", needs.group(1)))
        bound, loaded = bound_and_loaded(code)
        outside = loaded - bound - set(dir(builtins))
        missing = sorted(outside - stated - setup - parameters)
        if missing:
            wrong.append(f"{heading}: uses {missing}, which its Needs line does not name")
        for cell_name, names in (("Setup", setup), ("Parameters", parameters)):
            if outside & names - stated and cell_name not in needs.group(1):
                wrong.append(f"{heading}: uses {sorted(outside & names)} from {cell_name}, not named")
    assert not wrong, "\n".join(wrong)


def test_code_lines_fit_a_default_jupyterlab_width():
    long = [
        line
        for cell in NOTEBOOK.cells
        if cell.cell_type == "code"
        for line in cell.source.splitlines()
        if len(line) > CODE_WIDTH
    ]
    assert not long, "\n".join(long)


def test_every_wait_shows_its_progress():
    """A cell that waits for jobs shows a progress bar: no cell is silent while the platform works."""
    silent = [
        cell.source.splitlines()[0]
        for cell in NOTEBOOK.cells
        if cell.cell_type == "code" and any(w in cell.source for w in WAITS) and "progress=False" in cell.source
    ]
    assert not silent, silent


def test_the_emulator_appears_only_in_the_opening_note_and_marked_asides():
    """After the opening note the lesson is about the platform; the emulator is named only in asides."""
    opening = next(i for i, c in enumerate(NOTEBOOK.cells) if c.source.lstrip().startswith("## Setup"))
    stray = []
    for cell in NOTEBOOK.cells[opening:]:
        mentions = re.search(r"emulator|EMULATED|tests?/|pytest|nbval", cell.source, re.IGNORECASE)
        if not mentions:
            continue
        if cell.cell_type == "markdown":
            asides = re.findall(r"^> \*\*On the emulator\.?\*\*.*?(?=\n\n|\Z)", cell.source, re.M | re.S)
            rest = cell.source
            for aside in asides:
                rest = rest.replace(aside, "")
            if not re.search(r"emulator|tests?/|pytest|nbval", rest, re.IGNORECASE):
                continue
        stray.append(cell.source[:120])
    assert not stray, "\n---\n".join(stray)


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
