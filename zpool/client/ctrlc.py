"""Holding a Ctrl-C off while a message is sent or a reply settled (the blocking-call path).

A message cut short corrupts the socket it was being sent on, and a reply
read and not settled leaves its result pending forever: these steps of
``Connection.call_now`` run whole, and a Ctrl-C arriving meanwhile is
raised right after.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]
import signal
import threading
from typing import Any

__all__ = ["HoldCtrlC", "default_int_handler", "get_handler", "sigint_handler"]


class HoldCtrlC:
    """Holds a Ctrl-C off the main thread for the duration of a ``with`` block, then raises it.

    Only the main thread ever gets ``KeyboardInterrupt``; elsewhere this does
    nothing. In the main thread, SIGINT's handler is swapped for one that
    notes the signal, and put back at the end of the block, where the noted
    Ctrl-C is raised (unless another exception is on its way already).
    """

    __slots__ = ("_noted", "_previous", "needed")

    def __init__(self) -> None:
        self.needed = threading.current_thread() is threading.main_thread()
        self._noted = False
        self._previous: Any = None

    def _note(self, signum: int, frame: Any) -> None:
        self._noted = True

    def __enter__(self) -> None:
        if self.needed:
            self._noted = False
            self._previous = _set_handler(_SIGINT, self._note)

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        if self.needed:
            _set_handler(_SIGINT, self._previous)
            if self._noted and kind is None:
                raise KeyboardInterrupt


# The C functions under signal.signal and signal.getsignal, which wrap them in enum
# conversions costing several microseconds per call: a blocking call swaps the handler
# a few times on its way.
_set_handler = _signal.signal
get_handler = _signal.getsignal
_SIGINT = int(signal.SIGINT)
default_int_handler = signal.default_int_handler


def sigint_handler() -> Any:
    """SIGINT's handler now (as ``signal.getsignal(signal.SIGINT)``, without its enum conversion)."""
    return get_handler(_SIGINT)
