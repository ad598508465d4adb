"""The worker's Haar cascades, parsed once per process.

Parsing the default cascade (930 kB of XML) takes longer than detecting the faces in a
few photos. A process that starts jobs by forking itself (the emulator's warm template)
imports this module and calls :func:`preload` first, so every job starts with the cascade
parsed; a worker that runs alone (its container) parses it on first use.
"""

from __future__ import annotations

import os

import cv2

DEFAULT_CASCADE = "haarcascade_frontalface_default.xml"

# (real path, modification time, size) -> the parsed cascade: a changed file is parsed again.
_PARSED: dict[tuple[str, int, int], cv2.CascadeClassifier] = {}


def default_path() -> str:
    return os.path.join(cv2.data.haarcascades, DEFAULT_CASCADE)


def parsed(path: str) -> cv2.CascadeClassifier:
    """The cascade at ``path``, parsed once; ``OSError`` if it is missing, an empty classifier if it
    is not a cascade (or ``cv2.error``/``SystemError`` from OpenCV), and neither is kept."""
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_mtime_ns, stat.st_size)
    if key not in _PARSED:
        classifier = cv2.CascadeClassifier(path)
        if classifier.empty():
            return classifier
        _PARSED[key] = classifier
    return _PARSED[key]


def preload() -> None:
    """Parse the default cascade now, before any job needs it."""
    parsed(default_path())
