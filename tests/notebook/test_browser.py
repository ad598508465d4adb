"""The tutorial as a person runs it: JupyterLab in headless Chromium against the emulator, started as
``make lab`` starts it, opened at the URL it prints; once with Run All Cells, once cell by cell with
Shift+Enter, some cells twice.

Chromium is Debian's (``make test`` installs it); Playwright drives it through
``executable_path`` and never downloads a browser of its own.

Why the run is judged from JupyterLab's state and not the page: the old version clicked
Run All while the notebook was still loading (one empty cell, a "Select Kernel" dialog up,
no kernel) and then read the prompts on the page, which showed the committed execution
counts of the few cells rendered so far (JupyterLab renders long notebooks lazily): it
passed with nothing run, or waited forever on cells queued for a kernel that never came.
Now the kernel starts without asking, Run All waits for the whole model and an idle
kernel, outputs are cleared first, and completion is read from the notebook model's
execution counts and the kernel's status. On failure the test saves a screenshot and
says which cells ran, which did not, and what the page shows.
"""

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

import run_tutorial

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOT = ROOT / "build" / "browser-tutorial.png"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def lab_settings(folder: Path) -> Path:
    """User settings that keep the browser run from saving the notebook, from fetching news, and from asking.

    Without ``autoStartDefaultKernel`` JupyterLab can open a "Select Kernel" dialog when the session
    starts before the notebook's metadata has loaded; no kernel starts until someone answers it.
    """
    settings = {
        "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"autoStartDefaultKernel": True},
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
            "fetchNews": "false",
            "checkForUpdates": False,
        },
    }
    for name, values in settings.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    return folder


def lab_config(folder: Path) -> Path:
    """Server settings the tests need besides make lab's command line: the app visible to scripts, no news."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "jupyter_server_config.json").write_text(
        json.dumps({"LabApp": {"expose_app_in_browser": True, "news_url": ""}})
    )
    return folder


# The URL JupyterLab prints, token included: what a person opens after `make lab`.
PRINTED_URL = re.compile(r"http://127\.0\.0\.1:\d+/lab/tree/tutorial\.ipynb\?token=\w+")


@pytest.fixture
def jupyterlab(emulator, tmp_path):
    """JupyterLab started with make lab's command (run_tutorial.lab_command) and the session emulator's settings.

    Yields the URL it printed, the server's base URL and its log. The token is JupyterLab's own,
    read from what it prints, as a person reads it.
    """
    port = free_port()
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(lab_config(tmp_path / "config")),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"),
        "JUPYTERLAB_SETTINGS_DIR": str(lab_settings(tmp_path / "settings")),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
    }
    env.pop("PLOTLY_RENDERER", None)
    env.pop("JUPYTER_TOKEN", None)
    log_path = tmp_path / "jupyterlab.log"
    log = open(log_path, "w")
    command = run_tutorial.lab_command(port, run_tutorial.NOTEBOOK)
    lab = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not (printed := PRINTED_URL.search(log_path.read_text())):
            assert lab.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.5)
        url = printed.group(0)
        token = url.rsplit("=", 1)[1]
        while True:
            try:
                if requests.get(f"{base}/api/status", headers={"Authorization": f"token {token}"}, timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            assert lab.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.5)
        yield url, base, log_path
    finally:
        lab.terminate()
        lab.wait(timeout=30)
        log.close()


# Read from JupyterLab's own state (exposed with --LabApp.expose_app_in_browser), not from the
# DOM: JupyterLab renders long notebooks lazily, so an off-screen cell's prompt is no evidence.
SCROLL_TO_FIRST_PLOT_JS = """async () => {
    const notebook = window.jupyterapp.shell.currentWidget.content;
    const cells = notebook.model.cells;
    for (let i = 0; i < cells.length; i++) {
        const cell = cells.get(i);
        if (cell.type !== 'code') continue;
        for (let j = 0; j < cell.outputs.length; j++) {
            if ('application/vnd.plotly.v1+json' in (cell.outputs.get(j).toJSON().data || {})) {
                notebook.activeCellIndex = i;
                await notebook.scrollToItem(i, 'center');
                return i;
            }
        }
    }
    return -1;
}"""

NOTEBOOK_STATE_JS = """() => {
    const app = window.jupyterapp;
    const panel = app && app.shell.currentWidget;
    if (!panel || !panel.content || !panel.content.model || !panel.sessionContext) {
        return {ready: false, kernel: null, cells: []};
    }
    const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
    const cells = [];
    const model = panel.content.model;
    for (let i = 0; i < model.cells.length; i++) {
        const cell = model.cells.get(i);
        if (cell.type !== 'code') continue;
        const outputs = [];
        for (let j = 0; j < cell.outputs.length; j++) {
            const out = cell.outputs.get(j).toJSON();
            const text = out.output_type === 'stream' ? [].concat(out.text).join('') : '';
            outputs.push({type: out.output_type, ename: out.ename || null, evalue: out.evalue || null,
                          traceback: out.output_type === 'error' || text.includes('Traceback')});
        }
        cells.push({index: i, count: cell.executionCount, outputs: outputs,
                    source: cell.sharedModel.getSource().split('\\n')[0].slice(0, 80)});
    }
    return {ready: panel.sessionContext.isReady, kernel: kernel ? kernel.status : null,
            dialog: [...document.querySelectorAll('.jp-Dialog')].map(d => d.innerText).join(' | '),
            cells: cells};
}"""
KERNEL_READY_TIMEOUT_MS = 120_000
# Run All is judged by progress, not by its total time, which depends on the machine: it fails when no
# further cell has finished for as long as nbval allows one cell (pytest.ini's --nbval-cell-timeout).
CELL_TIMEOUT_MS = 900_000


def run_finished(state: dict) -> bool:
    """Run All has ended: every code cell ran, or one raised (Run All stops there), and the kernel is idle."""
    cells = state["cells"]
    if state["kernel"] != "idle" or not cells:
        return False
    raised = any(out["traceback"] for cell in cells for out in cell["outputs"])
    return raised or all(cell["count"] is not None for cell in cells)


def describe(state: dict) -> str:
    """Which cells ran and which did not, the kernel's state and any dialog: what a failure report needs."""
    ran = [c for c in state["cells"] if c["count"] is not None]
    pending = [c for c in state["cells"] if c["count"] is None]
    errors = [
        f"cell {c['index']}: {o['ename'] or 'a traceback on stderr'}: {o['evalue'] or ''}"
        for c in state["cells"]
        for o in c["outputs"]
        if o["traceback"]
    ]
    lines = [
        f"kernel: {state['kernel']}, session ready: {state['ready']}",
        f"ran {len(ran)} of {len(state['cells'])} code cells",
        *(f"  not run: cell {c['index']}: {c['source']}" for c in pending),
        *(f"  error in {e}" for e in errors),
    ]
    if state.get("dialog"):
        lines.append(f"dialog on the page: {state['dialog']}")
    return "\n".join(lines)


@contextlib.contextmanager
def notebook_page(lab_log: Path, screenshot: Path, height: int):
    """Chromium on a JupyterLab page: ``(page, page_errors, fail)``, where ``page_errors`` collects the page's
    JavaScript errors and ``fail(stage)`` fails the test with what the notebook shows, a screenshot and
    the last lines of JupyterLab's log."""
    from playwright.sync_api import sync_playwright

    screenshot.parent.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": height})
        page_errors: list[str] = []
        page.on("pageerror", lambda exc: page_errors.append(str(exc)))

        def fail(stage: str) -> None:
            page.screenshot(path=str(screenshot), full_page=False)
            state = page.evaluate(NOTEBOOK_STATE_JS)
            log_tail = "".join(lab_log.read_text().splitlines(keepends=True)[-15:])
            pytest.fail(
                f"{stage}\n{describe(state)}\npage errors: {page_errors}\n"
                f"screenshot: {screenshot}\nJupyterLab log (last lines):\n{log_tail}",
                pytrace=False,
            )

        try:
            yield page, page_errors, fail
        finally:
            browser.close()


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (make test installs it)")
def test_run_all_cells_in_jupyterlab(jupyterlab):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    committed = hashlib.sha256((ROOT / "tutorial.ipynb").read_bytes()).hexdigest()
    code_cells = sum(cell["cell_type"] == "code" for cell in json.loads((ROOT / "tutorial.ipynb").read_text())["cells"])
    url, _, lab_log = jupyterlab
    with notebook_page(lab_log, SCREENSHOT, height=1000) as (page, page_errors, fail):

        def wait_until(finished, timeout_ms: int, stage: str) -> dict:
            """Poll until ``finished``; the timeout starts again each time one more cell has run."""
            deadline, ran = time.monotonic() + timeout_ms / 1000, 0
            while not finished(state := page.evaluate(NOTEBOOK_STATE_JS)):
                now_ran = sum(cell["count"] is not None for cell in state["cells"])
                if now_ran > ran:
                    deadline, ran = time.monotonic() + timeout_ms / 1000, now_ran
                if time.monotonic() > deadline:
                    fail(f"{stage}: nothing more happened for {timeout_ms // 1000} s")
                page.wait_for_timeout(500)
            return state

        page.goto(url)
        # Run All before the whole file has loaded, or before the kernel is up, would run nothing.
        wait_until(
            lambda s: s["ready"] and s["kernel"] == "idle" and len(s["cells"]) == code_cells,
            KERNEL_READY_TIMEOUT_MS,
            f"the notebook ({code_cells} code cells) and its kernel were not ready",
        )
        # Cleared first, so an execution count can only come from this run, not from the committed file.
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:clear-all-cell-outputs')")
        page.click("text=Run", timeout=10_000)
        page.click("text=Run All Cells", timeout=10_000)
        state = wait_until(run_finished, CELL_TIMEOUT_MS, "Run All Cells had not finished")

        # JupyterLab renders only the cells near the viewport: bring the first plot's cell into view.
        page.evaluate(SCROLL_TO_FIRST_PLOT_JS)
        # Beside its static PNG, plotly's JupyterLab renderer shows the PNG and draws the chart on hover.
        with contextlib.suppress(PlaywrightTimeout):
            page.locator(".jp-RenderedPlotly").first.hover(timeout=30_000)
        plots = page.locator(".js-plotly-plot")
        with contextlib.suppress(PlaywrightTimeout):
            plots.first.wait_for(timeout=30_000)
        if plots.count():
            plots.first.scroll_into_view_if_needed()
        page.screenshot(path=str(SCREENSHOT), full_page=False)
        plot_count = plots.count()

    assert hashlib.sha256((ROOT / "tutorial.ipynb").read_bytes()).hexdigest() == committed, (
        "the browser run saved over tutorial.ipynb"
    )
    assert not any(o["traceback"] for c in state["cells"] for o in c["outputs"]), describe(state)
    assert all(c["count"] is not None for c in state["cells"]), describe(state)
    assert not page_errors, page_errors
    assert plot_count >= 1, "the status plot did not render"


# --- stepping through, cell by cell ----------------------------------------------------

# Cells a person is likely to run twice, by their section and a phrase of their code: each must
# reuse what it made or say what it did again, and the closing inventory must stay true.
RUN_TWICE = [
    ("Create a task", "/tasks"),
    ("The whole library, as one batch", "/batch"),
    ("How many photos per job?", "get_or_create_task"),
    ("Clean up", "delete"),
    ("Cancelling a group when too many jobs fail", "sent-by-mistake"),
]
STEP_TIMEOUT_S = 600
STEP_SCREENSHOT = ROOT / "build" / "browser-step-through.png"

SELECT_CELL_JS = """(index) => {
    const notebook = window.jupyterapp.shell.currentWidget.content;
    notebook.activeCellIndex = index;
    notebook.deselectAll();
    notebook.mode = 'command';
    notebook.node.focus();
    return notebook.activeCellIndex;
}"""

CELLS_JS = """() => {
    const model = window.jupyterapp.shell.currentWidget.content.model;
    const cells = [];
    for (let i = 0; i < model.cells.length; i++) {
        const cell = model.cells.get(i);
        cells.push({index: i, type: cell.type, source: cell.sharedModel.getSource()});
    }
    return cells;
}"""

# Every output of every code cell, as the notebook model holds it (text of streams, keys of rich outputs).
OUTPUTS_JS = """() => {
    const model = window.jupyterapp.shell.currentWidget.content.model;
    const cells = [];
    for (let i = 0; i < model.cells.length; i++) {
        const cell = model.cells.get(i);
        if (cell.type !== 'code') continue;
        const outputs = [];
        for (let j = 0; j < cell.outputs.length; j++) {
            const out = cell.outputs.get(j).toJSON();
            const data = out.data || {};
            const plot = data['application/vnd.plotly.v1+json'];
            outputs.push({type: out.output_type, name: out.name || null, ename: out.ename || null,
                          evalue: out.evalue || null, text: [].concat(out.text || []).join(''),
                          keys: Object.keys(data), png: data['image/png'] || null,
                          plot_size: plot ? [plot.layout.width, plot.layout.height] : null});
        }
        cells.push({index: i, count: cell.executionCount, outputs: outputs});
    }
    return cells;
}"""


def section_of(cells: list[dict]) -> list[str]:
    """The heading (## ...) each cell sits under."""
    heading, sections = "", []
    for cell in cells:
        if cell["type"] == "markdown" and cell["source"].lstrip().startswith("## "):
            heading = cell["source"].lstrip()[3:].splitlines()[0].strip()
        sections.append(heading)
    return sections


def cells_to_run_twice(cells: list[dict]) -> set[int]:
    sections = section_of(cells)
    chosen = set()
    for title, phrase in RUN_TWICE:
        found = [
            c["index"]
            for c in cells
            if c["type"] == "code" and sections[c["index"]].startswith(title) and phrase in c["source"]
        ]
        assert found, f"no code cell with {phrase!r} in the section {title!r}"
        chosen.add(found[0])
    return chosen


def frozen_progress_bars(text: str) -> list[str]:
    """Progress bars whose last state is not 100 %: a bar left where something stopped watching."""
    finals = [line.split("\r")[-1] for line in text.split("\n")]
    return [line for line in finals if re.search(r"\d+%\|", line) and "100%|" not in line]


def png_size(png_base64: str) -> tuple[int, int]:
    import base64

    header = base64.b64decode(png_base64[:40])
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (make test installs it)")
def test_step_through_cell_by_cell_with_some_cells_run_twice(jupyterlab, emulator):
    """Shift+Enter from the first cell to the last, as a learner reads: nothing errors, leaks or misleads."""
    committed = hashlib.sha256((ROOT / "tutorial.ipynb").read_bytes()).hexdigest()
    url, _, lab_log = jupyterlab
    projects_before = set(emulator.backend.projects)
    timings: list[tuple[float, int, str]] = []
    with notebook_page(lab_log, STEP_SCREENSHOT, height=900) as (page, page_errors, fail):

        def wait_until(finished, timeout_s: float, stage: str) -> dict:
            deadline = time.monotonic() + timeout_s
            while not finished(state := page.evaluate(NOTEBOOK_STATE_JS)):
                if time.monotonic() > deadline:
                    fail(f"{stage} after {timeout_s:.0f} s")
                page.wait_for_timeout(250)
            return state

        page.goto(url)
        wait_until(lambda s: s["ready"] and s["kernel"] == "idle", KERNEL_READY_TIMEOUT_MS / 1000, "no kernel")
        opened = page.evaluate("() => window.jupyterapp.shell.currentWidget?.context?.path ?? null")
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:clear-all-cell-outputs')")
        cells = page.evaluate(CELLS_JS)
        twice = cells_to_run_twice(cells)
        done: set[int] = set()

        def step(index: int) -> None:
            """Select cell ``index`` and press Shift+Enter, as a reader does; wait for a code cell to finish."""
            if page.evaluate(SELECT_CELL_JS, index) != index:
                fail(f"could not select cell {index}")
            is_code = cells[index]["type"] == "code"
            position = [c["index"] for c in cells if c["type"] == "code"].index(index) if is_code else None
            # A second run is finished when the cell has a new execution count, not the first run's.
            before = page.evaluate(NOTEBOOK_STATE_JS)["cells"][position]["count"] if is_code else None
            started = time.monotonic()
            # Shift+Enter on the last cell would add a new one below it: there, Ctrl+Enter runs it in place.
            page.keyboard.press("Shift+Enter" if index < len(cells) - 1 else "Control+Enter")
            if not is_code:
                return

            def ran(state):
                cell = state["cells"][position]
                return state["kernel"] == "idle" and cell["count"] is not None and cell["count"] != before

            state = wait_until(ran, STEP_TIMEOUT_S, f"cell {index} did not finish")
            timings.append((time.monotonic() - started, index, cells[index]["source"].splitlines()[0][:60]))
            if any(o["traceback"] for o in state["cells"][position]["outputs"]):
                fail(f"cell {index} raised, on its {'second' if index in done else 'first'} run")

        for cell in cells:
            step(cell["index"])
            if cell["index"] in twice:
                done.add(cell["index"])
                step(cell["index"])
        outputs = page.evaluate(OUTPUTS_JS)
        page.screenshot(path=str(STEP_SCREENSHOT), full_page=False)

    print("slowest cells (seconds, index, first line):", *sorted(timings, reverse=True)[:8], sep="\n  ")
    assert hashlib.sha256((ROOT / "tutorial.ipynb").read_bytes()).hexdigest() == committed
    assert opened == "tutorial.ipynb", f"the URL make lab prints opened {opened!r}, not the notebook"
    assert not page_errors, page_errors
    assert all(cell["count"] is not None for cell in outputs), [c["index"] for c in outputs if c["count"] is None]
    errors = [(c["index"], o["ename"], o["evalue"]) for c in outputs for o in c["outputs"] if o["type"] == "error"]
    assert not errors
    stderr = [(c["index"], o["text"][:200]) for c in outputs for o in c["outputs"] if o["name"] == "stderr"]
    assert not stderr, "a notebook shows stderr as an error box"
    frozen = [(c["index"], bar) for c in outputs for o in c["outputs"] for bar in frozen_progress_bars(o["text"])]
    assert not frozen, f"progress bars left short of their end: {frozen}"
    # A submit cell run twice submits twice, and says so, naming the group the first run left in the task.
    resubmits = [c for c in outputs if c["index"] in twice and "tutorial.submitted(" in cells[c["index"]]["source"]]
    assert resubmits, "no submit cell of the failure lesson was run twice"
    for cell in resubmits:
        text = "".join(o["text"] for o in cell["outputs"])
        assert re.search(r"jobs again, as group \S+; the earlier run's group is still in the task: \S+", text), text
    plots = [o for c in outputs for o in c["outputs"] if o["plot_size"]]
    assert plots and all(o["png"] and png_size(o["png"]) == tuple(o["plot_size"]) for o in plots)

    # The closing inventory: every task the notebook created is deleted, a second run of a cell included.
    created = set(emulator.backend.projects) - projects_before
    assert created, "the notebook created no project"
    tasks = [t for t in emulator.backend.tasks.values() if t.project_id in created]
    assert tasks and [t.name for t in tasks if t.lifecycle_status != "DELETED"] == []
    main_tasks = [t.task_id for t in tasks if t.name == "faces-scale-1.2"]
    groups = {job.group for job in emulator.backend.jobs.values() if job.task_id in main_tasks and job.group}
    assert len([g for g in groups if g.startswith("library")]) == 1, f"the library was submitted twice: {groups}"
    # A second submit under the same group name would be a second batch (parent job) in that group.
    batches = {
        job.parent_job_id
        for job in emulator.backend.jobs.values()
        if job.task_id in main_tasks and (job.group or "").startswith("library")
    }
    assert len(batches) == 1, f"the library was submitted {len(batches)} times"
