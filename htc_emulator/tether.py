"""Run a command for as long as the process that started this one lives: ``tether.py FOLDER -- COMMAND...``.

The emulator starts its registry through this, with a pipe on our stdin that
only the emulator holds. When that pipe closes (the emulator exited, even killed
with SIGKILL), the command gets SIGTERM, then SIGKILL after a grace period, and
FOLDER (the command's data) is removed. The command gets SIGKILL at once if this
process dies (its parent-death signal: this process has one thread, so the signal
is tied to it alone). SIGTERM stops the command as the emulator's own stop does;
SIGINT is the emulator's to act on. Exits with the command's status.

Standard library only, and run by path: importing the package would load the
whole emulator into a process that only waits.
"""

from __future__ import annotations

import ctypes
import os
import select
import shutil
import signal
import subprocess
import sys

PR_SET_PDEATHSIG = 1
GRACE_SECONDS = 10


def _die_with_this_process() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _stop(command: subprocess.Popen) -> None:
    command.terminate()
    try:
        command.wait(GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        command.kill()
        command.wait()


def main(argv: list[str]) -> int:
    folder, separator, *command_line = argv
    if separator != "--" or not command_line:
        print("usage: tether.py FOLDER -- COMMAND...", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    command = subprocess.Popen(command_line, stdin=subprocess.DEVNULL, preexec_fn=_die_with_this_process)
    signal.signal(signal.SIGTERM, lambda *_: command.terminate())
    while command.poll() is None:
        ready, _, _ = select.select([sys.stdin.fileno()], [], [], 1.0)
        if ready and not os.read(sys.stdin.fileno(), 4096):  # the emulator is gone
            _stop(command)
            shutil.rmtree(folder, ignore_errors=True)
            break
    return command.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
