"""What the engines this controller started print: read from their pipes, sent to the callers.

::

    engine ── output pipe (records: BEGIN task, OUT/ERR, END) ──▶ EngineOutput ──STREAM──▶ the task's client
           ── fd 1, fd 2 (C code, subprocesses, crashes) ──────▶   (engine's own) ──▶ every client, or the log

Each engine started by the controller (``Pool(output="forward")`` or
``"capture"``) gets three pipes (see :mod:`zpool._output`); the hub polls
their read ends with its sockets. A task's output goes to the client that
owns the task: named in BEGIN when the task was pushed to the engine (the
controller may not know it yet), else the one the scheduler holds it for.
The engine's own output (outside tasks, or written below Python) goes to
every client that connected, prefixed by the engine, under ``forward``;
under ``capture``, or before any client connected, into the cluster's log.

Before the hub handles an engine's replies of which one says its task
printed (the header's ``printed``), it reads that engine's records pipe
(:meth:`EngineOutput.read_pid`) and sends what it read first: the engine
wrote the task's END before sending its reply, so on the controller's way
a task's output always reaches its client before its result. (Replies of
tasks pushed to an engine go to the client directly, saying which tasks
printed: the client waits for their END.) Before
failing the tasks of an engine that died it reads the pipes to their end
(:meth:`EngineOutput.closed`): nothing the engine wrote is lost, and the
error quotes the engine's last lines on stderr.
"""

from __future__ import annotations

import codecs
import collections
import logging
import os
from typing import Any, Callable

from zpool._output import BEGIN, END, ERR, KIND_NAMES, OUT, RecordReader, split_begin

__all__ = ["EngineOutput"]

logger = logging.getLogger("zpool.engine.output")

# Lines of an engine's stderr kept, to quote when it dies.
TAIL_LINES = 20
TAIL_CHARS = 2000
# Bytes read from one pipe per pass of the hub's loop (more waits for the next pass).
READ_MAX = 1 << 16
# ... and at most this many when the hub must have all of it (an engine may write on and on).
DRAIN_MAX = 1 << 24


class _Pipe:
    """One read end: the records pipe (kind None) or fd 1 / fd 2 of an engine (kind OUT / ERR)."""

    __slots__ = ("decoders", "fd", "kind", "open", "pid", "reader")

    def __init__(self, fd: int, pid: int, kind: int | None) -> None:
        self.fd = fd
        self.open = True
        self.pid = pid
        self.kind = kind
        self.reader = RecordReader() if kind is None else None
        # (a character may be cut between two reads or two records)
        self.decoders = {k: codecs.getincrementaldecoder("utf-8")("replace") for k in (OUT, ERR)}


class _Engine:
    """What is known of one engine process's output."""

    __slots__ = ("label", "pipes", "route", "tail", "task_id")

    def __init__(self, pid: int, pipes: list[_Pipe]) -> None:
        self.label = f"engine pid {pid}"  # until it registers
        self.pipes = pipes
        self.task_id: str | None = None  # whose output the records pipe carries (the last BEGIN)
        self.route = b""
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)


class EngineOutput:
    """The output pipes of the local engines, and what they carry until it is sent.

    Parameters
    ----------
    forward : bool
        Send the engines' own output to the clients (``forward``); else log
        it (``capture``).

    The hub sets :attr:`owner` (the route of the client a task belongs to,
    by task id; None if unknown) and :attr:`send` (``send(route, content)``
    a STREAM message to a client; False if it is gone).
    """

    def __init__(self, forward: bool) -> None:
        self.forward = forward
        self.owner: Callable[[str], bytes | None] = lambda task_id: None
        self.send: Callable[[bytes, dict[str, Any]], bool] = lambda route, content: False
        self.clients: list[bytes] = []  # where the engines' own output goes (forward)
        self.by_fd: dict[int, _Pipe] = {}
        self.engines: dict[int, _Engine] = {}
        self.changed = False  # pipes were added or closed since the hub last looked (fds())
        # Parts read and not sent yet, per client (b"": the engines' own): [label, task id, kind, text].
        self._parts: dict[bytes, list[list[str]]] = {}

    # -- the launcher ------------------------------------------------------------

    def attach(self, pid: int, records: int, out: int, err: int) -> None:
        """Engine `pid` was started with these pipes' write ends: read theirs."""
        pipes = [_Pipe(records, pid, None), _Pipe(out, pid, OUT), _Pipe(err, pid, ERR)]
        for pipe in pipes:
            os.set_blocking(pipe.fd, False)
            self.by_fd[pipe.fd] = pipe
        self.engines[pid] = _Engine(pid, pipes)
        self.changed = True

    # -- the hub -----------------------------------------------------------------------

    def fds(self) -> list[int]:
        self.changed = False
        return list(self.by_fd)

    def registered(self, pid: int | None, engine_id: int) -> None:
        engine = self.engines.get(pid) if pid is not None else None
        if engine is not None:
            engine.label = f"engine {engine_id}"

    def connected(self, route: bytes) -> None:
        """A client connected: the engines' own output goes there too (forward)."""
        if route not in self.clients:
            self.clients.append(route)

    def read(self, fd: int) -> None:
        """Read what pipe `fd` holds now (up to :data:`READ_MAX` bytes)."""
        pipe = self.by_fd.get(fd)
        if pipe is not None:
            self._read(pipe, READ_MAX)

    def read_pid(self, pid: int | None) -> None:
        """Read all that engine `pid`'s records pipe holds now (before handling its replies).

        (Its fd 1 and fd 2 carry no task's output: they wait for the loop.)
        """
        engine = self.engines.get(pid) if pid is not None else None
        if engine is not None:
            self._read(engine.pipes[0], DRAIN_MAX)

    def closed(self, pid: int | None) -> str:
        """Engine `pid` is gone: read its pipes to their end and close them; its last lines on stderr."""
        engine = self.engines.get(pid) if pid is not None else None
        if pid is None or engine is None:
            return ""
        for pipe in engine.pipes:
            self._read(pipe, DRAIN_MAX)
        del self.engines[pid]
        for pipe in engine.pipes:
            if pipe.reader is not None and pipe.reader.pending:
                logger.warning(
                    "%s died in the middle of writing output: %d bytes cut short dropped",
                    engine.label,
                    pipe.reader.pending,
                )
            self._close(pipe)
        if engine.task_id is not None:
            self._part(engine, engine.route, engine.task_id, "end", "")  # (its client stops waiting for more)
        return "".join(engine.tail)[-TAIL_CHARS:]

    def close(self) -> None:
        """Read what is left, send it, close every pipe (the hub's end)."""
        for pid in list(self.engines):
            self.closed(pid)
        self.flush()

    def flush(self) -> None:
        """Send the parts read: one STREAM message per client, parts in the order read."""
        if not self._parts:
            return
        parts, self._parts = self._parts, {}
        for route, items in parts.items():
            if route:
                self.send(route, {"parts": _joined(items)})
            else:
                self._own(_joined(items))

    # -- reading -------------------------------------------------------------------------

    def _read(self, pipe: _Pipe, budget: int) -> None:
        engine = self.engines.get(pipe.pid)
        if engine is None or not pipe.open:
            return
        while budget > 0:
            try:
                data = os.read(pipe.fd, READ_MAX)
            except BlockingIOError:
                return
            except OSError as exc:
                logger.warning("reading the output of %s: %s", engine.label, exc)
                data = b""
            if not data:  # the engine (and any child holding the pipe) is gone
                self._close(pipe)
                return
            budget -= len(data)
            if pipe.reader is None:
                kind = pipe.kind
                assert kind is not None
                self._engine_text(engine, kind, pipe.decoders[kind].decode(data))
                continue
            for kind, payload in pipe.reader.feed(data):
                if kind == BEGIN:
                    if payload:
                        task_id, route = split_begin(payload)
                        engine.task_id, engine.route = task_id, route or (self.owner(task_id) or b"")
                    else:
                        engine.task_id, engine.route = None, b""
                elif kind == END:
                    if engine.task_id is not None:
                        for k in (OUT, ERR):
                            rest = pipe.decoders[k].decode(b"", final=True)
                            if rest:
                                self._task_text(engine, k, rest)
                        self._part(engine, engine.route, engine.task_id, "end", "")
                    engine.task_id, engine.route = None, b""
                elif kind in (OUT, ERR):
                    text = pipe.decoders[kind].decode(payload)
                    if engine.task_id is None:
                        self._engine_text(engine, kind, text)
                    else:
                        self._task_text(engine, kind, text)

    def _task_text(self, engine: _Engine, kind: int, text: str) -> None:
        if kind == ERR:
            engine.tail.extend(text.splitlines(keepends=True))
        assert engine.task_id is not None
        if engine.route:
            self._part(engine, engine.route, engine.task_id, KIND_NAMES[kind], text)
        # (else: a task no client owns any more, aborted or failed already: dropped)

    def _engine_text(self, engine: _Engine, kind: int, text: str) -> None:
        if not text:
            return
        if kind == ERR:
            engine.tail.extend(text.splitlines(keepends=True))
        self._part(engine, b"", "", KIND_NAMES[kind], text)

    def _part(self, engine: _Engine, route: bytes, task_id: str, kind: str, text: str) -> None:
        self._parts.setdefault(route, []).append([engine.label, task_id, kind, text])

    def _own(self, parts: list[list[str]]) -> None:
        """The engines' own output: to every client that connected (forward), else to the log."""
        if self.forward and self.clients:
            content = {"parts": parts}
            self.clients = [route for route in self.clients if self.send(route, content)]
            if self.clients:
                return
        for label, _, kind, text in parts:
            level = logging.WARNING if kind == "err" else logging.INFO
            for line in text.splitlines():
                logger.log(level, "[%s] %s", label, line)

    def _close(self, pipe: _Pipe) -> None:
        if pipe.open:
            pipe.open = False
            del self.by_fd[pipe.fd]
            os.close(pipe.fd)
            self.changed = True


def _joined(parts: list[list[str]]) -> list[list[str]]:
    """`parts` with runs of the same engine, task and stream made one."""
    out: list[list[str]] = []
    for part in parts:
        last = out[-1] if out else None
        if last is not None and last[:3] == part[:3] and part[2] != "end":
            last[3] += part[3]
        else:
            out.append(list(part))
    return out
