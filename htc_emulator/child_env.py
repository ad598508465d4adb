"""The environment of the programs the emulator starts for itself (``docker``, the registry): its own,
without an API key. A process's environment is readable by every process of its user
(``/proc/<pid>/environ``), and none of these programs needs the key."""

from __future__ import annotations

import os

API_KEY_VARIABLES = ("HTC_EMULATOR_API_KEY", "RESCALE_API_KEY", "RESCALE_API_TOKEN")


def without_api_key(environment: dict[str, str] | None = None) -> dict[str, str]:
    """``environment`` (default: this process's) without the variables that may hold an API key."""
    return {k: v for k, v in (os.environ if environment is None else environment).items() if k not in API_KEY_VARIABLES}
