"""The tutorial as a person runs it: JupyterLab in headless Chromium, Run All Cells, against the emulator.

Chromium is Debian's (``make test`` installs it); Playwright drives it through
``executable_path`` and never downloads a browser of its own.
"""

import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOT = ROOT / "build" / "browser-tutorial.png"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
RUN_ALL_TIMEOUT_MS = 900_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def lab_settings(folder: Path) -> Path:
    """User settings that keep the browser run from saving the notebook and from fetching news."""
    settings = {
        "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                             "checkForUpdates": False},
    }
    for name, values in settings.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    return folder


@pytest.fixture
def jupyterlab(emulator, tmp_path):
    """JupyterLab on loopback, serving the project with the session emulator's settings in its environment."""
    port = free_port()
    # A token in the environment, not on the command line: other local users can't read it or use the server.
    token = secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "config"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"),
           "JUPYTERLAB_SETTINGS_DIR": str(lab_settings(tmp_path / "settings")), "JUPYTER_TOKEN": token}
    env.pop("PLOTLY_RENDERER", None)
    log = open(tmp_path / "jupyterlab.log", "w")
    lab = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--ServerApp.root_dir={ROOT}", "--LabApp.news_url=", "--allow-root"],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{base}/api/status", headers={"Authorization": f"token {token}"}, timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            assert lab.poll() is None and time.monotonic() < deadline, (tmp_path / "jupyterlab.log").read_text()
            time.sleep(0.5)
        yield base, token
    finally:
        lab.terminate()
        lab.wait(timeout=30)
        log.close()


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (make test installs it)")
def test_run_all_cells_in_jupyterlab(jupyterlab):
    from playwright.sync_api import sync_playwright

    committed = hashlib.sha256((ROOT / "tutorial.ipynb").read_bytes()).hexdigest()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page_errors = []
        page.on("pageerror", lambda exc: page_errors.append(str(exc)))
        base, token = jupyterlab
        page.goto(f"{base}/lab/tree/tutorial.ipynb?token={token}")
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
        page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)

        page.click("text=Run", timeout=10_000)
        page.click("text=Run All Cells", timeout=10_000)
        # Every code cell gets a number once it ran ("[*]" while running, "[ ]" before). Run All
        # stops at a failing cell, so an error output ends the wait too.
        page.wait_for_function(
            """() => {
                const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')];
                const failed = [...document.querySelectorAll(
                    ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")]
                    .some(o => o.textContent.includes('Traceback'));
                return failed || (prompts.length > 0 && prompts.every(p => /\\[\\d+\\]/.test(p.textContent)));
            }""",
            timeout=RUN_ALL_TIMEOUT_MS, polling=1000)

        errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
        error_texts = [errors.nth(i).inner_text() for i in range(errors.count())]
        tracebacks = [t for t in error_texts if "Traceback" in t or "Error" in t]
        plots = page.locator(".js-plotly-plot")
        plots.first.scroll_into_view_if_needed()
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=False)
        plot_count = plots.count()
        browser.close()

    assert hashlib.sha256((ROOT / "tutorial.ipynb").read_bytes()).hexdigest() == committed, \
        "the browser run saved over tutorial.ipynb"
    assert not tracebacks, tracebacks
    assert not page_errors, page_errors
    assert plot_count >= 1, "the status plot did not render"
