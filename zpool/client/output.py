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
    """Writes the engines' output here, each line prefixed with its engine.

    Only whole lines are written (a carriage return ends one too, so a
    progress bar redrawn in place shows), so that lines of two engines
    never run into each other: a line an engine leaves open waits for its
    end, or for its task's end.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # (the I/O thread and a caller in a blocking call both receive)
        self._held: dict[tuple[str, str], str] = {}  # (engine label, kind) -> the start of a line left open

    def write(self, parts: list[list[str]]) -> None:
        with self._lock:
            touched: set[str] = set()
            for label, _, kind, text in parts:
                if kind == "end":  # a line the task left open ends with it
                    for each in ("out", "err"):
                        held = self._held.pop((label, each), None)
                        if held is not None:
                            self._emit(each, f"[{label}] {held}\n")
                            touched.add(each)
                    continue
                if kind not in ("out", "err") or not text:
                    continue
                key = (label, kind)
                lines = (self._held.pop(key, "") + text).splitlines(keepends=True)
                if not lines[-1].endswith(("\n", "\r")):
                    self._held[key] = lines.pop()
                if lines:
                    prefix = f"[{label}] "
                    self._emit(kind, "".join(prefix + line for line in lines))
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
