"""bench/results.py: a figure that got worse beyond its noise is flagged, and the figures in
bench/README.md are the ones in bench/results.json (no timing here: the figures are data)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from bench import results  # noqa: E402


def figure(value: float, better: str = "lower", noise: float = 0.10, unit: str = "x") -> dict:
    return {"name": "f", "value": value, "unit": unit, "better": better, "noise": noise}


@pytest.mark.parametrize(
    "now, before, better, flagged",
    [
        (1.12, 1.0, "lower", True),  # 12 % slower, beyond 10 %
        (1.08, 1.0, "lower", False),  # within the noise
        (0.80, 1.0, "lower", False),  # better
        (0.85, 1.0, "higher", True),  # a speed-up that shrank by 15 %
        (1.30, 1.0, "higher", False),
    ],
)
def test_a_figure_is_worse_only_beyond_its_noise_and_in_its_bad_direction(now, before, better, flagged):
    change = results.worse(figure(now, better), figure(before, better))
    assert (change is not None) == flagged
    if flagged:
        assert change == pytest.approx(abs(now - before))


def test_nothing_to_compare_is_not_a_regression():
    assert results.worse(figure(2.0), None) is None
    assert results.worse(figure(2.0, unit="s"), figure(1.0, unit="ms")) is None


def test_the_comparison_counts_and_names_what_got_worse():
    run = {"date": "d", "commit": "c", "other_cores": 0.05, "figures": [figure(1.5), {**figure(1.0), "name": "g"}]}
    baseline = {"date": "d0", "commit": "c0", "figures": [figure(1.0), {**figure(1.0), "name": "g"}]}
    lines, regressions = results.comparison_lines("bench", run, baseline)
    assert regressions == 1
    assert [line for line in lines if "WORSE" in line] == [
        next(line for line in lines if line.strip().startswith("f "))
    ]


def test_the_readme_shows_the_figures_of_results_json():
    committed = json.loads(results.RESULTS.read_text()) if results.RESULTS.is_file() else {}
    readme = results.README.read_text()
    table = readme.split(results.TABLE_START)[1].split(results.TABLE_END)[0].strip()
    assert table == (results.readme_table(committed) if committed else "")


# Burns half a second of CPU whatever the machine's speed, then waits to be killed.
BURN = (
    "import time\n"
    "end = time.process_time() + 0.5\n"
    "while time.process_time() < end: pass\n"
    "print('done', flush=True)\n"
    "time.sleep(60)"
)


def test_the_benchmarks_own_processes_are_not_other_work():
    """A benchmark's job slots are its children or theirs: however busy they keep the cores, they are not others."""
    other_work = results.OtherWork()
    command = f"{shlex.quote(sys.executable)} -c {shlex.quote(BURN)} & echo $!; wait"
    with subprocess.Popen(["sh", "-c", command], stdout=subprocess.PIPE, text=True) as child:
        grandchild = int(child.stdout.readline())
        try:
            assert child.stdout.readline().strip() == "done"
            assert not {child.pid, grandchild} & set(other_work.processes())
        finally:
            os.kill(grandchild, signal.SIGKILL)


def test_a_program_outside_the_benchmark_is_other_work():
    """A process that is not the benchmark's descendant (its parent shell has exited) counts in full."""
    other_work = results.OtherWork()
    command = f"{shlex.quote(sys.executable)} -c {shlex.quote(BURN)} & echo $!"
    with subprocess.Popen(["sh", "-c", command], stdout=subprocess.PIPE, text=True) as shell:
        pid = int(shell.stdout.readline())
        shell.wait()
        try:
            assert shell.stdout.readline().strip() == "done"
            assert other_work.processes()[pid] >= 0.45
            assert other_work.cpu_seconds() >= 0.45
        finally:
            os.kill(pid, signal.SIGKILL)


def scratch_repository(tmp_path: Path) -> tuple[Path, list[str]]:
    """A git repository holding bench/results.py, an empty figures table, and a git command for it."""
    repo = tmp_path / "repo"
    (repo / "bench").mkdir(parents=True)
    for name in ("results.py", "__init__.py"):
        source = ROOT / "bench" / name
        if source.is_file():
            (repo / "bench" / name).write_text(source.read_text())
    (repo / "bench" / "README.md").write_text(f"{results.TABLE_START}\n{results.TABLE_END}\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run([*git, "init", "-q"], check=True)
    return repo, git


def commit_all(git: list[str], message: str) -> str:
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", message], check=True)
    return subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()


def test_make_bench_fails_when_a_figure_got_worse(tmp_path):
    """The script's exit status, against a committed file, in a scratch repository."""
    repo, git = scratch_repository(tmp_path)
    run = {"date": "d", "commit": "c", "command": "x", "other_cores": 0.05, "figures": [figure(1.0)]}
    (repo / "bench" / "results.json").write_text(json.dumps({"bench": run}))
    commit_all(git, "baseline")
    script = [sys.executable, str(repo / "bench" / "results.py")]
    assert subprocess.run(script, capture_output=True, text=True).returncode == 0
    (repo / "bench" / "results.json").write_text(json.dumps({"bench": {**run, "figures": [figure(1.5)]}}))
    worse = subprocess.run(script, capture_output=True, text=True)
    assert worse.returncode == 1 and "WORSE by 50%" in worse.stdout


def test_committing_the_figures_does_not_make_them_stale(tmp_path):
    """A figure is stale when the measured code changed after it was taken, not when the figure itself was committed."""
    repo, git = scratch_repository(tmp_path)
    measured = commit_all(git, "the code measured")
    (repo / "docker").mkdir()
    (repo / "docker" / "README.md").write_text(f"what the container figures mean, taken at {measured}\n")
    for name in results.NOT_MEASURED:
        (repo / name).write_text((repo / name).read_text() + f"\n# {measured}\n" if name.endswith(".py") else measured)
    commit_all(git, "the figures, what they mean, and a change to how they are compared")
    script = [
        sys.executable,
        "-c",
        "import sys; sys.path.insert(0, 'bench'); import results; "
        "print(results.changes_since({'commit': sys.argv[1]}))",
    ]
    assert subprocess.run([*script, measured], cwd=repo, capture_output=True, text=True).stdout.strip() == "0"
    (repo / "bench" / "worker.py").write_text("# changed\n")
    commit_all(git, "a change to the measured code")
    assert subprocess.run([*script, measured], cwd=repo, capture_output=True, text=True).stdout.strip() == "1"


@pytest.mark.slow
def test_an_orphan_of_the_benchmark_reaped_by_init_is_not_other_work():
    """A container's shim leaves the benchmark's tree and is reaped by init: its time is not another program's."""
    burn_and_exit = BURN.removesuffix("time.sleep(60)")
    command = f"{shlex.quote(sys.executable)} -c {shlex.quote(burn_and_exit)} & echo $!"
    init_before = results.OtherWork().processes().get(1, 0.0)
    with subprocess.Popen(["sh", "-c", command], stdout=subprocess.PIPE, text=True) as shell:
        orphan = int(shell.stdout.readline())
        assert shell.stdout.readline().strip() == "done"
    for _ in range(300):
        if not Path(f"/proc/{orphan}").exists():  # reaped
            break
        time.sleep(0.1)
    assert results.OtherWork().processes().get(1, 0.0) - init_before < 0.25


def test_kernel_threads_are_not_other_programs():
    """Their work is done for whoever asked, the benchmark too: a container's mounts and network cost kworker time."""
    kernel = {int(e.name) for e in os.scandir("/proc") if e.name.isdigit() and parent_of(int(e.name)) in (0, 2)}
    assert 2 in kernel
    assert not (kernel - {1}) & set(results.OtherWork().processes())


def parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[1])
