"""Who owns what an emulator leaves on the machine, and whether that owner is provably gone.

A Docker container outlives the emulator that started it when the emulator is
killed (``kill -9``). So each container is labelled with its emulator's identity,
and the next emulator to start removes those whose owner is gone. Other emulators
(other users', other tests') share the Docker engine, so "gone" must be certain:
an owner is this machine's boot, this PID namespace, a process id and that
process's start time; it is gone only when the boot and the namespace are ours
and no process with that id and start time exists. Anything else (another
machine's engine client, another PID namespace, a label this module did not
write) is left alone.
"""

from __future__ import annotations

import os
from pathlib import Path

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks after boot), or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces and parentheses: count the fields after its last ")".
    return stat.rpartition(")")[2].split()[19]


def _this_machine() -> str:
    """This boot and this PID namespace (the digits of ``pid:[4026531836]``)."""
    namespace = "".join(c for c in os.readlink("/proc/self/ns/pid") if c.isdigit())
    return f"{BOOT_ID.read_text().strip()}.{namespace}"


def current_owner() -> str:
    """This process: boot id, PID namespace, process id and start time, as ``.``-separated lower-case words.

    It fits in a Docker label's key, so that a container's command line carries no ``=`` value.
    """
    pid = os.getpid()
    return f"{_this_machine()}.{pid}.{_start_time(pid)}"


def is_gone(owner: str) -> bool:
    """Whether ``owner`` (a :func:`current_owner` value) is a process of this machine that no longer runs."""
    boot, _, rest = owner.partition(".")
    namespace, _, rest = rest.partition(".")
    pid, _, start = rest.partition(".")
    if f"{boot}.{namespace}" != _this_machine() or not pid.isdigit():
        return False
    return _start_time(int(pid)) != start
