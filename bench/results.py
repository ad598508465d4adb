"""Benchmark figures as data: ``bench/results.json``, compared with the last committed one.

Each benchmark ends with :func:`record`: it prints every figure beside the same figure in the
committed ``bench/results.json`` (``git show HEAD:bench/results.json``), says WORSE where a figure
moved the wrong way by more than the machine's noise, and writes the run into ``bench/results.json``
(with the date, the commit, the CPU other programs took meanwhile and the emulator settings it ran
with). Commit that file when the figures were taken on a quiet machine; ``bench/README.md`` shows them.

Run as a script: ``python bench/results.py`` compares every benchmark's last run with the
committed one and exits 1 if any figure got worse beyond noise (``make bench`` ends with it);
``--readme`` rewrites the figures table in ``bench/README.md`` from ``bench/results.json``.

Noise: on this shared 2-core machine a figure measured against a baseline taken in the same run
(a ratio) moves by up to about 10 % between runs on a quiet machine, an absolute time by up to
about 25 %; those are the defaults, and a figure can say otherwise.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).with_name("results.json")
README = Path(__file__).with_name("README.md")
RATIO_NOISE = 0.10
TIME_NOISE = 0.25
OUTPUTS = ("bench/results.json", "bench/README.md")
MEASURED_CODE = ("htc_emulator", "face_tagger", "htc_helpers.py", "bench", "docker")
# Among the measured folders but measuring nothing: the figures themselves, this file, which only compares and
# records them, and docker/'s README, which explains them.
NOT_MEASURED = (*OUTPUTS, "bench/results.py", "docker/README.md")
TABLE_START = "<!-- figures from bench/results.json: python bench/results.py --readme -->"
TABLE_END = "<!-- end of figures -->"
# Other programs' CPU above which a run's figures are not ones to commit: a quarter of this machine's two cores.
BUSY_CORES = 0.5

# The emulator's idealised behaviour, stated in full: none of the platform's rough edges (profile
# "ideal": statuses at once, images READY at once, no instance start or image pull, plain log pages,
# cancel at once; htc_emulator/platform_profile.py), a job's timeout as written (time scale 1), no
# injected faults. Timing on purpose would be measured instead of the emulator's own cost.
IDEALISED = {"profile": "ideal", "time_scale": 1.0, "refresh_delay": 0.0, "faults": None}


@dataclass(frozen=True)
class Figure:
    """One measured number: ``better`` is "lower" or "higher"; ``noise`` the relative change that is not news."""

    name: str
    value: float
    unit: str
    better: str = "lower"
    noise: float = TIME_NOISE
    note: str = ""


def ratio(name: str, value: float, note: str = "", better: str = "lower") -> Figure:
    """A figure against a baseline measured in the same run: steadier than a time, so a tighter noise."""
    return Figure(name, value, "x", better, RATIO_NOISE, note)


class OtherWork:
    """The CPU that programs other than the benchmark took while it ran: what makes its figures unfit to commit.

    Not the load average: that counts the benchmark's own job slots too, so a run that fills both
    cores of this machine looked busy by itself. This counts, from ``/proc``, every process outside
    the benchmark's own tree (its jobs and servers are its children or theirs), and, for a benchmark
    that runs containers, outside the Docker engine's tree as well (its containers are the engine's
    children); kernel threads are not programs. Start it before the work, read :meth:`cores` after.
    """

    ENGINE = frozenset({"dockerd", "containerd", "containerd-shim", "containerd-shim-runc-v2"})

    def __init__(self, *, engine_is_ours: bool = False) -> None:
        self.engine_is_ours = engine_is_ours
        self._started = time.monotonic()
        self._before = self.processes()

    def cpu_seconds(self) -> float:
        """The CPU time other programs took since this was made."""
        after = self.processes()
        return sum(max(0.0, cpu - self._before.get(pid, 0.0)) for pid, cpu in after.items())

    def cores(self) -> float:
        """How many cores the other programs kept busy, on average, since this was made."""
        return self.cpu_seconds() / max(time.monotonic() - self._started, 1e-9)

    def processes(self) -> dict[int, float]:
        """pid -> CPU seconds (its own and its reaped children's) of every process that is not ours."""
        processes = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            times = process_times(entry.name)
            if times is None:  # it ended meanwhile
                continue
            parent, name, own, reaped = times
            # Init reaps every orphan, the benchmark's too (a container's shim is one), so its children's
            # time is nobody's in particular.
            processes[int(entry.name)] = (parent, name, own if entry.name == "1" else own + reaped)
        # Kernel threads (kthreadd's, pid 2) are not programs: their work is done for whoever asked, the
        # benchmark too (a container's mounts and network cost kworker time).
        roots = {os.getpid(), 2}
        if self.engine_is_ours:
            roots |= {pid for pid, (_, name, _) in processes.items() if name in self.ENGINE}

        def ours(pid: int) -> bool:
            while pid > 1:
                if pid in roots:
                    return True
                pid = processes[pid][0] if pid in processes else 0
            return False

        return {pid: cpu for pid, (_, _, cpu) in processes.items() if not ours(pid)}


def process_times(pid: int | str) -> tuple[int, str, float, float] | None:
    """(parent pid, name, its own CPU seconds, its reaped children's) from ``/proc/PID/stat``; None once it ended."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name, fields = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[1]), name, (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


def committed_results() -> dict:
    """``bench/results.json`` as of the last commit ({} when there is none)."""
    shown = subprocess.run(
        ["git", "show", f"HEAD:{RESULTS.relative_to(ROOT)}"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    return json.loads(shown.stdout) if shown.returncode == 0 else {}


def current_results() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}


def commit() -> str:
    """The commit the code was at, with ``+dirty`` when the work tree had changes outside bench/results.json."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *(f":!{p}" for p in OUTPUTS)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    return head.stdout.strip() + ("+dirty" if status.stdout.strip() else "")


def worse(figure: dict, before: dict | None) -> float | None:
    """How much worse ``figure`` is than ``before`` (relative), if by more than its noise; else None."""
    if not before or before.get("unit") != figure["unit"] or not before.get("value"):
        return None
    change = (figure["value"] - before["value"]) / abs(before["value"])
    if figure["better"] == "higher":
        change = -change
    return change if change > figure["noise"] else None


def comparison_lines(name: str, run: dict, baseline: dict | None) -> tuple[list[str], int]:
    """One line per figure against the baseline run; and how many got worse beyond noise."""
    before = {f["name"]: f for f in (baseline or {}).get("figures", [])}
    lines, regressions = [], 0
    since = f"committed {baseline['date']} at {baseline['commit']}" if baseline else "nothing committed yet"
    busy = f"other programs {run['other_cores']:.2f} cores"
    lines.append(f"{name}: {run['date']} at {run['commit']}, {busy}; against {since}")
    for figure in run["figures"]:
        old = before.get(figure["name"])
        was = f"was {old['value']:.4g}" if old else "new"
        change = worse(figure, old)
        flag = ""
        if change is not None:
            regressions += 1
            flag = f"   WORSE by {change:.0%} (noise {figure['noise']:.0%})"
        lines.append(f"  {figure['name']:56s} {figure['value']:10.4g} {figure['unit']:3s} ({was}){flag}")
    return lines, regressions


def record(benchmark: str, figures: list[Figure], *, settings: dict, others: OtherWork) -> int:
    """Print the figures against the committed ones, write them to bench/results.json; regressions found."""
    run = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "commit": commit(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "other_cores": round(others.cores(), 2),
        "settings": settings,
        "figures": [{**asdict(f), "value": float(f"{f.value:.4g}")} for f in figures],
    }
    lines, regressions = comparison_lines(benchmark, run, committed_results().get(benchmark))
    print("\n".join(lines))
    if run["other_cores"] > BUSY_CORES:
        print(f"  the machine was busy (other programs kept {run['other_cores']:.2f} cores): not a figure to commit")
    results = current_results()
    results[benchmark] = run
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    return regressions


def changes_since(run: dict) -> int:
    """How many commits since the run's changed the code the benchmarks measure (the figures themselves aside)."""
    base = run["commit"].split("+")[0]
    log = subprocess.run(
        ["git", "log", "--oneline", f"{base}..HEAD", "--", *MEASURED_CODE, *(f":!{p}" for p in NOT_MEASURED)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    return len(log.stdout.splitlines()) if log.returncode == 0 else 0


def readme_table(results: dict) -> str:
    rows = ["| benchmark | figure | value | taken | command |", "|---|---|---|---|---|"]
    for benchmark, run in results.items():
        for figure in run["figures"]:
            note = f" ({figure['note']})" if figure.get("note") else ""
            rows.append(
                f"| {benchmark} | {figure['name']}{note} | {figure['value']:.4g} {figure['unit']} "
                f"| {run['date'][:10]}, `{run['commit']}`, others {run['other_cores']:.2f} cores | `{run['command']}` |"
            )
    return "\n".join(rows)


def write_readme_table(results: dict) -> None:
    text = README.read_text()
    head, _, rest = text.partition(TABLE_START)
    _, _, tail = rest.partition(TABLE_END)
    README.write_text(f"{head}{TABLE_START}\n{readme_table(results)}\n{TABLE_END}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", action="store_true", help="rewrite the figures table in bench/README.md")
    args = parser.parse_args()
    results = current_results()
    if args.readme:
        write_readme_table(results)
        return
    committed = committed_results()
    regressions = 0
    for benchmark, run in results.items():
        lines, worse_here = comparison_lines(benchmark, run, committed.get(benchmark))
        print("\n".join(lines))
        if changed := changes_since(run):
            print(f"  {changed} commit(s) since {run['commit']} changed the measured code: run it again")
        regressions += worse_here
    if regressions:
        print(f"{regressions} figure(s) WORSE than the committed bench/results.json by more than the noise")
        sys.exit(1)
    print("no figure worse than the committed bench/results.json beyond the noise")


if __name__ == "__main__":
    main()
