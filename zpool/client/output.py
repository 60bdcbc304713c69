"""What the engines printed, written to this process's own ``sys.stdout`` and ``sys.stderr`` (``output="forward"``).

The controller sends it in STREAM messages (:mod:`zpool.controller.output`)
as parts ``[engine label, task id, kind, text]``, in the order each engine
wrote them; kind is ``"out"``, ``"err"`` or ``"end"`` (the task's output is
complete). Each line is prefixed with its engine (``[engine 1] ...``).
Written to whatever ``sys.stdout`` and ``sys.stderr`` are when it arrives,
so it shows in a notebook's cell and in pytest's capture.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

from zpool.error import ProtocolError

__all__ = ["Forwarder", "parse_parts"]

logger = logging.getLogger(__name__)


def parse_parts(content: Any) -> list[list[str]]:
    """The parts of a STREAM message's content; ProtocolError if it is malformed."""
    parts = content.get("parts") if isinstance(content, dict) else None
    if not isinstance(parts, list) or not all(
        isinstance(p, list) and len(p) == 4 and all(isinstance(f, str) for f in p) for p in parts
    ):
        raise ProtocolError("a stream message without a list of [engine, task id, kind, text] parts")
    return parts


class Forwarder:
    """Writes the engines' output here, each line prefixed with its engine."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # (the I/O thread and a caller in a blocking call both receive)
        # (engine label, kind) whose last text did not end its line: the next text goes on without a prefix.
        self._open: set[tuple[str, str]] = set()

    def write(self, parts: list[list[str]]) -> None:
        with self._lock:
            touched: set[str] = set()
            for label, _, kind, text in parts:
                if kind == "end":  # a task's line left open is ended with it
                    for each in ("out", "err"):
                        if (label, each) in self._open:
                            self._open.discard((label, each))
                            self._emit(each, "\n")
                            touched.add(each)
                    continue
                if kind not in ("out", "err") or not text:
                    continue
                key = (label, kind)
                prefix = f"[{label}] "
                pieces = []
                for i, line in enumerate(text.splitlines(keepends=True)):
                    if i > 0 or key not in self._open:
                        pieces.append(prefix)
                    pieces.append(line)
                if text.endswith(("\n", "\r")):
                    self._open.discard(key)
                else:
                    self._open.add(key)
                self._emit(kind, "".join(pieces))
                touched.add(kind)
            for kind in touched:
                stream = sys.stdout if kind == "out" else sys.stderr
                try:
                    stream.flush()
                except Exception:
                    pass

    @staticmethod
    def _emit(kind: str, text: str) -> None:
        stream = sys.stdout if kind == "out" else sys.stderr
        if stream is None:  # (pythonw)
            return
        try:
            stream.write(text)
        except Exception as exc:  # a closed or broken stream: the text is still kept per task
            logger.debug("could not write an engine's output here: %s", exc)
