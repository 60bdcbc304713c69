"""What engines write, on its way to the caller: the records of the output pipe, and the pool's choices.

An engine of a cluster that collects output (``Pool(output="forward")`` or
``"capture"``) writes what its tasks print through :data:`sys.stdout` and
:data:`sys.stderr` to a pipe its controller reads, as *records*::

    kind (1 byte) | length (2 bytes, little-endian) | payload (length bytes)

    OUT, ERR   text the task (or the engine, outside tasks) wrote, UTF-8
    BEGIN      the task whose output follows: its id, NUL, its client's route (empty: the controller's task)
    END        the task's id: its output is complete

Every ``write`` to the pipe holds whole records and at most ``PIPE_BUF``
bytes, which POSIX writes at once: threads, and processes a task forks,
never tear a record. What code writes to the file descriptors 1 and 2
directly (C libraries, subprocesses) goes to two other pipes, read as
plain text: it is the engine's, not a task's.
"""

from __future__ import annotations

import struct
from typing import Iterator

__all__ = [
    "BEGIN",
    "END",
    "ERR",
    "OUT",
    "OUTPUT_LIMIT",
    "OUTPUT_MODES",
    "RECORD_MAX",
    "WRITE_MAX",
    "RecordReader",
    "begin_payload",
    "pack",
    "split_begin",
]

# How a pool deals with what its engines print (Pool(output=...)).
OUTPUT_MODES = ("forward", "capture", "inherit")
# Bytes of output one task may send (stdout and stderr together); the rest is dropped, saying so.
OUTPUT_LIMIT = 1 << 20

OUT, ERR, BEGIN, END = 1, 2, 3, 4
KIND_NAMES = {OUT: "out", ERR: "err", BEGIN: "begin", END: "end"}

_HEADER = struct.Struct("<BH")
# Bytes of one write to the pipe: POSIX writes up to PIPE_BUF (4096 on Linux, 512 at least) in one piece.
WRITE_MAX = 4096
# Payload bytes of one record.
RECORD_MAX = WRITE_MAX - _HEADER.size


def pack(kind: int, payload: bytes) -> bytes:
    """One record (`payload` of at most :data:`RECORD_MAX` bytes)."""
    return _HEADER.pack(kind, len(payload)) + payload


def begin_payload(task_id: str, route: bytes) -> bytes:
    return task_id.encode() + b"\0" + route


def split_begin(payload: bytes) -> tuple[str, bytes]:
    """A BEGIN record's ``(task id, route)``."""
    task_id, _, route = payload.partition(b"\0")
    return task_id.decode("utf-8", "replace"), route


class RecordReader:
    """Cuts the bytes read from an output pipe into records, whatever the reads' boundaries."""

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, data: bytes) -> Iterator[tuple[int, bytes]]:
        """The whole records `data` completes, as ``(kind, payload)``; a record cut short waits for more."""
        buf = self._rest + data if self._rest else data
        size = _HEADER.size
        pos = 0
        end = len(buf)
        while end - pos >= size:
            kind, length = _HEADER.unpack_from(buf, pos)
            if end - pos - size < length:
                break
            yield kind, buf[pos + size : pos + size + length]
            pos += size + length
        self._rest = buf[pos:]

    @property
    def pending(self) -> int:
        """Bytes of a record cut short (left over when the pipe closes: a writer died mid-record)."""
        return len(self._rest)
