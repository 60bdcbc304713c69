"""The engine's ``sys.stdout`` and ``sys.stderr`` when its cluster collects output: records, task by task.

::

    task code: print(...) ─▶ sys.stdout (_Stream) ─┐
    logging (≥ the engine's level) ─▶ sys.stderr ──┼─▶ TaskOutput: whole lines ─▶ output pipe ─▶ controller
    C code, subprocesses ─▶ fd 1, fd 2 ────────────┼──────────────────────────────▶ two pipes ─▶ controller
                                                   └ (BEGIN task, OUT/ERR text, END task: zpool._output)

What a task writes is sent a line at a time as it writes it (a line cut
short waits for its end, for ``flush()``, or for the task's end), so that
it reaches the caller while the task runs and survives the engine's
death: it is in the pipe, which the controller reads to the end. A task's
output is announced (BEGIN) on its first write only, so a task that prints
nothing costs nothing; the engine's main thread marks where each task
starts (:meth:`TaskOutput.start`) and ends (:meth:`TaskOutput.finish`,
which writes END before the task's reply is sent: the controller, which
reads the pipe before an engine's replies, forwards the output first).

One task sends at most ``limit`` bytes (:data:`zpool._output.OUTPUT_LIMIT`
by default); what follows is dropped, and a line on its stderr says so.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import threading
from typing import Any

from zpool._output import BEGIN, END, ERR, OUT, RECORD_MAX, WRITE_MAX, begin_payload, pack

__all__ = ["TaskOutput", "install"]

# A line longer than this is sent in pieces without waiting for its end.
LINE_MAX = 8192


class TaskOutput:
    """Writes the engine's output to the output pipe `fd`, announcing whose it is.

    Parameters
    ----------
    fd : int
        The write end of the output pipe (inherited from the controller).
    limit : int
        Bytes of output one task may send.
    """

    def __init__(self, fd: int, limit: int) -> None:
        self.fd = fd
        self.limit = limit
        self.lock = threading.Lock()  # (an RLock would let a write from a signal handler in, mid-record)
        self.task_id: str | None = None  # the task running (None: what is written is the engine's own)
        self.route = b""  # its client's route when it was pushed here; empty: the controller's task
        self.announced: str | None = None  # whose output the pipe carries now (the last BEGIN)
        self.used = 0  # bytes the running task has sent
        self.wrote = False  # the running task wrote something
        self.cut = False  # ... more than `limit`: the rest is dropped
        self.broken = False  # the pipe is gone (the controller died): output is dropped
        self.partial = {OUT: "", ERR: ""}

    # -- the engine's main thread ---------------------------------------------

    def start(self, task_id: str, route: bytes) -> None:
        """Task `task_id` starts: what is written from now on is its output."""
        with self.lock:
            if self.partial[OUT] or self.partial[ERR]:
                self._flush_partials()  # (the engine's own)
            self.task_id, self.route = task_id, route
            self.used, self.wrote, self.cut = 0, False, False

    def finish(self, task_id: str) -> bool:
        """Task `task_id` has ended: send what it left unfinished and END; whether it wrote anything."""
        with self.lock:
            if self.task_id != task_id:
                return False  # answered without running (aborted while queued)
            if self.partial[OUT] or self.partial[ERR]:
                self._flush_partials()
            wrote = self.wrote
            if wrote:
                self._write(pack(END, task_id.encode()))
                self.announced = None
            self.task_id = None
            return wrote

    # -- any thread --------------------------------------------------------------

    def write(self, kind: int, text: str) -> None:
        """Take `text` for stream `kind`: whole lines go now, the rest waits for its line's end."""
        with self.lock:
            text = self.partial[kind] + text
            cut = text.rfind("\n") + 1
            if cut == 0 and len(text) < LINE_MAX:
                self.partial[kind] = text
                return
            if cut == 0:
                cut = len(text)
            self.partial[kind] = text[cut:]
            self._send(kind, text[:cut])

    def flush(self, kind: int) -> None:
        with self.lock:
            text, self.partial[kind] = self.partial[kind], ""
            if text:
                self._send(kind, text)

    def stream(self, kind: int) -> _Stream:
        """A text stream writing here, for ``sys.stdout`` (`kind` OUT) or ``sys.stderr`` (ERR)."""
        return _Stream(self, kind)

    # -- under the lock ------------------------------------------------------------

    def _flush_partials(self) -> None:
        for kind in (OUT, ERR):
            text, self.partial[kind] = self.partial[kind], ""
            if text:
                self._send(kind, text)

    def _send(self, kind: int, text: str) -> None:
        data = text.encode("utf-8", "backslashreplace")
        task_id = self.task_id
        if task_id is not None:
            if self.cut:
                return
            self.wrote = True
            if self.used + len(data) > self.limit:
                self.cut = True
                kept = data[: max(0, self.limit - self.used)]
                if kept:
                    self._send_records(kind, kept, task_id)
                self.used = self.limit
                note = (
                    f"[zpool: task {task_id} wrote more than {self.limit} bytes; the rest of its output was dropped]\n"
                )
                self._send_records(ERR, note.encode(), task_id)
                return
            self.used += len(data)
        self._send_records(kind, data, task_id)

    def _send_records(self, kind: int, data: bytes, task_id: str | None) -> None:
        out = b""
        announce = self.announced != task_id
        if announce:
            # (a BEGIN without a task: what follows is the engine's own)
            out = pack(BEGIN, begin_payload(task_id, self.route) if task_id is not None else b"")
        for i in range(0, len(data), RECORD_MAX):
            record = pack(kind, data[i : i + RECORD_MAX])
            if len(out) + len(record) > WRITE_MAX:
                self._write(out)
                out = b""
            out += record
        self._write(out)
        if announce:  # (only once written: a KeyboardInterrupt in between has the next write announce again)
            self.announced = task_id

    def _write(self, data: bytes) -> None:
        if self.broken or not data:
            return
        try:
            os.write(self.fd, data)  # at most PIPE_BUF bytes: written whole, never interleaved
        except OSError:
            self.broken = True  # the controller is gone: this engine exits soon


class _Stream(io.TextIOBase):
    """``sys.stdout`` or ``sys.stderr`` of an engine whose output is collected (see :class:`TaskOutput`)."""

    encoding = "utf-8"
    errors = "backslashreplace"

    def __init__(self, output: TaskOutput, kind: int) -> None:
        super().__init__()
        self._output = output
        self._kind = kind
        self._fd = 1 if kind == OUT else 2
        self.name = "<stdout>" if kind == OUT else "<stderr>"

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        if s:
            self._output.write(self._kind, s)
        return len(s)

    def flush(self) -> None:
        self._output.flush(self._kind)

    def fileno(self) -> int:
        # The descriptor below (a pipe to the controller): a subprocess given sys.stdout writes there,
        # and its output reaches the caller as the engine's.
        return self._fd

    def isatty(self) -> bool:
        return False


class _CurrentStderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes records to whatever ``sys.stderr`` is when they come (as logging's last resort does)."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.setLevel(level)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def install(fd: int, limit: int, level: int) -> TaskOutput:
    """Make ``sys.stdout`` and ``sys.stderr`` write to the output pipe `fd`; return its :class:`TaskOutput`.

    Log records of tasks at `level` or above reach the task's stderr when
    no handler of the task's own takes them (logging's last resort, whose
    level becomes `level`; the root logger's too if it is lower than
    WARNING), so ``logging.warning(...)`` in a task is captured as a print
    would be, and a task's ``logging.basicConfig(...)`` still has its way.
    """
    output = TaskOutput(fd, limit)
    sys.stdout = output.stream(OUT)
    sys.stderr = output.stream(ERR)
    logging.lastResort = _CurrentStderr(level)
    if level < logging.WARNING:
        logging.getLogger().setLevel(level)
    return output
