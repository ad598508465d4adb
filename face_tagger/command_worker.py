"""Run any command on each item of an HTC batch job's share: a program of your own on the worker layer.

    python /opt/command_worker.py sha256sum {}

Each item of the job's share of ``ITEM_LIST`` (see ``htc_worker``) is a key of project shared
storage: ``{}`` in the command stands for the item's file, downloaded; ``{item}`` for the item
itself (a command with no ``{}`` downloads nothing). The command runs once an item, without a
shell; its exit status decides the record's status, and the record keeps its ``exit_code``
and the first ``OUTPUT_CHARACTERS`` of its ``stdout`` and ``stderr``. Without a command, each
item is only accounted for: a dry run of the platform's path (what ``bench/work_list.py`` runs).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

try:  # run as a script (/opt/command_worker.py, a job): the layer beside it
    import htc_worker as hw
except ImportError:  # imported as face_tagger.command_worker (the tests)
    from face_tagger import htc_worker as hw

OUTPUT_CHARACTERS = 4096


def command_handler(command: list[str]) -> hw.Handler:
    """The layer's handler that runs ``command`` on an item, ``{}`` and ``{item}`` filled in."""

    def handle(item: str, local: Path | None) -> tuple[dict, list]:
        if not command:
            return {}, []
        argv = [str(local) if word == "{}" else item if word == "{item}" else word for word in command]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, errors="replace", stdin=subprocess.DEVNULL)
        except OSError as exc:  # no such program, not executable: every item would fail the same way
            raise hw.UsageError(f"cannot run {command[0]!r}: {exc.strerror}") from None
        return {
            "status": "ok" if done.returncode == 0 else "error",
            "error": None if done.returncode == 0 else f"exit status {done.returncode}",
            "exit_code": done.returncode,
            "stdout": done.stdout[:OUTPUT_CHARACTERS],
            "stderr": done.stderr[:OUTPUT_CHARACTERS],
        }, []

    return handle


def main(argv: list[str] | None = None) -> int:
    command = sys.argv[1:] if argv is None else argv
    handle = command_handler(command)
    return hw.main("command_worker", lambda: hw.run_share(handle, download="{}" in command))


if __name__ == "__main__":
    sys.exit(main())
