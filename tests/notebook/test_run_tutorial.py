"""run_tutorial.py's scale parameter: the injected cell, papermill's way, and where the copy goes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

import run_tutorial


def small_notebook(*tags_per_cell) -> nbformat.NotebookNode:
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_markdown_cell("# A title")] + [
        nbformat.v4.new_code_cell(f"cell_{i} = {i}", metadata={"tags": list(tags)} if tags else {})
        for i, tags in enumerate(tags_per_cell)
    ]
    return notebook


def test_parameters_are_injected_right_after_the_parameters_cell():
    notebook = small_notebook((), ("parameters",), ())
    notebook.cells[2].source = "IMAGE_COUNT = 0\nJOB_COUNT = 24"
    copy = run_tutorial.inject_parameters(notebook, {"IMAGE_COUNT": 5000, "JOB_COUNT": 1000})
    assert [c.metadata.get("tags", []) for c in copy.cells] == [[], [], ["parameters"], ["injected-parameters"], []]
    injected = copy.cells[3]
    assert injected.cell_type == "code" and injected.outputs == []
    assert injected.source == "# Parameters\nIMAGE_COUNT = 5000\nJOB_COUNT = 1000\n"
    nbformat.validate(copy)
    namespace: dict = {}
    for cell in copy.cells:
        if cell.cell_type == "code":
            exec(cell.source, namespace)
    assert (namespace["IMAGE_COUNT"], namespace["JOB_COUNT"]) == (5000, 1000)
    assert len(notebook.cells) == 4, "the original notebook is left as it was"


def test_injecting_again_replaces_the_earlier_injected_cell():
    once = run_tutorial.inject_parameters(small_notebook(("parameters",)), {"JOB_COUNT": 10})
    twice = run_tutorial.inject_parameters(once, {"JOB_COUNT": 1000})
    assert [c.source for c in twice.cells if "injected-parameters" in c.metadata.get("tags", [])] == [
        "# Parameters\nJOB_COUNT = 1000\n"
    ]


@pytest.mark.parametrize("tags", [[(), ()], [("parameters",), ("parameters",)]])
def test_a_notebook_without_exactly_one_parameters_cell_is_refused(tags):
    with pytest.raises(LookupError, match="exactly one cell tagged 'parameters'"):
        run_tutorial.inject_parameters(small_notebook(*tags), {"JOB_COUNT": 1})


def test_a_copy_in_build_gets_kernels_in_the_project_root():
    command = run_tutorial.lab_command(8899, run_tutorial.BUILD / "tutorial-seed.ipynb")
    assert f"--ServerApp.root_dir={run_tutorial.BUILD}" in command
    assert f"--MappingKernelManager.root_dir={run_tutorial.ROOT}" in command
    assert str(run_tutorial.BUILD / "tutorial-seed.ipynb") in command


def test_the_url_make_lab_prints_opens_the_notebook_not_the_launcher():
    """JupyterLab prints its default URL with the token: that URL is the notebook's."""
    assert "--LabApp.default_url=/lab/tree/tutorial.ipynb" in run_tutorial.lab_command(8899, run_tutorial.NOTEBOOK)


@pytest.mark.parametrize("args", [["refresh", "--scale", "seed"], ["run", "--scale", "huge"]])
def test_scale_is_refused_for_refresh_and_unknown_scales(args, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["run_tutorial.py", *args])
    with pytest.raises(SystemExit) as exit_:
        run_tutorial.main()
    assert exit_.value.code == 2 and "--scale" in capsys.readouterr().err


def test_the_kernel_finds_the_api_key_in_the_apiconfig_file_not_in_its_environment(monkeypatch):
    """Issue 19: a job read RESCALE_API_KEY from the environment of a kernel the runner started."""
    monkeypatch.setenv("RESCALE_API_KEY", "the-real-platforms-key")  # would win over the emulator's profile
    kernel_code = "import sys, config\nprint('ready', flush=True)\nprint(config.get_profile()[1] == input())\n"
    with run_tutorial.emulator_environment(docker=False) as emu:
        kernel = subprocess.Popen(
            [sys.executable, "-c", kernel_code],
            cwd=run_tutorial.ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert kernel.stdout.readline() == "ready\n"  # its environment is its own once it runs
        environment = Path(f"/proc/{kernel.pid}/environ").read_bytes()
        answer, _ = kernel.communicate(emu.api_key + "\n")
        assert answer == "True\n"  # the key it would use is the emulator's, from the file
        assert emu.api_key.encode() not in environment and b"RESCALE_API_KEY" not in environment
        assert b"RESCALE_APICONFIG=" in environment and "RESCALE_API_KEY" not in os.environ
    assert os.environ["RESCALE_API_KEY"] == "the-real-platforms-key"
