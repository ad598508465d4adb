"""A job's output as log events, bounded as the platform's log service bounds them.

On the platform a job's output goes through Docker's ``awslogs`` driver to
CloudWatch Logs, which takes events of at most 256 KiB counting 26 bytes of
overhead each. So the driver splits a longer line into several events of at
most 262,118 bytes, each cut at a UTF-8 character boundary, counting an
invalid byte as the 3 bytes of the U+FFFD that replaces it (moby,
``daemon/logger/awslogs/cloudwatchlogs.go``: ``maximumBytesPerEvent = 262144 -
perEventBytes``, ``processEvent``, ``findValidSplit``; its ``BufSize`` has the
log copier hand it lines of up to that size). :class:`LogSplitter` does the same
while the scheduler reads a job's output, so no line is ever held whole, however
long: it keeps at most one event's worth of an unfinished line.

CloudWatch keeps everything a job prints; the emulator keeps at most
:data:`MAX_LOG_BYTES` of each job's events, counted as CloudWatch counts them
(each message's UTF-8 bytes plus 26). Past that the rest of the job's output is
read and dropped, and one last event says so (:func:`within_budget`).
"""

from __future__ import annotations

import codecs

# CloudWatch Logs' per-event overhead and its largest event, as the awslogs driver counts them.
EVENT_OVERHEAD_BYTES = 26
MAX_EVENT_BYTES = 262_144 - EVENT_OVERHEAD_BYTES
# What the emulator keeps of one job's log (all its attempts): 4 MiB, about 50,000 lines of 60 characters.
MAX_LOG_BYTES = 4 << 20
BUDGET_SPENT_MESSAGE = (
    f"[htc-emulator] this job's log reached the emulator's limit of {MAX_LOG_BYTES >> 20} MiB "
    "(events counted as CloudWatch counts them); the rest of its output is dropped"
)


def event_bytes(message: str) -> int:
    """What an event costs: its message's UTF-8 bytes and CloudWatch's overhead."""
    size = len(message) if message.isascii() else len(message.encode())
    return size + EVENT_OVERHEAD_BYTES


def within_budget(spent: int, message: str) -> tuple[str | None, int]:
    """The event to keep for ``message`` given ``spent`` bytes of the job's log so far, and the new total.

    None once the budget is spent; the event that would first go past it is replaced by
    :data:`BUDGET_SPENT_MESSAGE`, for which room is always kept.
    """
    if spent > MAX_LOG_BYTES:
        return None, spent
    cost = event_bytes(message)
    if spent + cost + event_bytes(BUDGET_SPENT_MESSAGE) <= MAX_LOG_BYTES:
        return message, spent + cost
    return BUDGET_SPENT_MESSAGE, MAX_LOG_BYTES + 1


class LogSplitter:
    """A byte stream in, log events out: one per line, a longer line cut into events of at most MAX_EVENT_BYTES.

    Lines end at ``\\n`` (a ``\\r`` before it is dropped); bytes that are not UTF-8 become U+FFFD.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._line = ""  # the unfinished line: never more than one event and one read

    def feed(self, chunk: bytes) -> list[str]:
        """The events complete once ``chunk`` is read."""
        *lines, self._line = (self._line + self._decoder.decode(chunk)).split("\n")
        events = [event for line in lines for event in _split(line.removesuffix("\r"))]
        *full, self._line = _split(self._line)  # an unfinished line gives what fills whole events
        return events + full

    def close(self) -> list[str]:
        """The events of what is left: an unfinished line is one more line."""
        line = (self._line + self._decoder.decode(b"", final=True)).removesuffix("\r")
        self._line = ""
        return _split(line) if line else []


def _split(line: str) -> list[str]:
    """``line`` cut into pieces of at most MAX_EVENT_BYTES at character boundaries (the last may be shorter)."""
    pieces = []
    # A character is at most 4 bytes: a line this short needs no encoding to know it fits.
    while len(line) > MAX_EVENT_BYTES // 4 and len(encoded := line.encode()) > MAX_EVENT_BYTES:
        cut = MAX_EVENT_BYTES
        while encoded[cut] & 0xC0 == 0x80:  # a UTF-8 continuation byte: its character starts before it
            cut -= 1
        head = encoded[:cut].decode()
        pieces.append(head)
        line = line[len(head) :]
    return [*pieces, line]
