"""Progress bars: ``Pool.map(..., progress=True)`` and friends, ``AsyncResult.wait_interactive()``.

::

    blocking map(progress=True) ──follow(result) in the calling thread──▶ tqdm bar
    map_async(progress=True)    ──follow(result) in a thread "zpool-progress"──▶ tqdm bar
    imap(progress=True)         ──the iterator updates its bar per result taken──▶ tqdm bar

The bar is :mod:`tqdm`'s (``tqdm.auto``: a widget in a notebook, a text bar
on a terminal), with count, rate and time left. tqdm is an optional extra
(``pip install "zpool[progress]"``): zpool's run-time dependencies stay the
four it cannot do without, and asking for a bar without it says how to get
one. A result is followed by looking at how much of it is done every
:data:`INTERVAL_S` (a chunk that finishes moves the bar within that time),
never from the client's I/O thread, whose time a slow terminal must not take.
Standard library only, apart from tqdm, imported when a bar is drawn.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

__all__ = ["INTERVAL_S", "Counted", "follow", "follow_in_background", "make_bar", "require_tqdm"]

# How often a followed result is looked at, in seconds.
INTERVAL_S = 0.1


class Counted:
    """What a bar follows: how many units are done, of how many, what a unit is, and how to wait for the end.

    ``done()`` counts the units done; ``wait(seconds)`` returns once the
    whole is finished, or after `seconds`, saying which (a result's ``wait``).
    """

    __slots__ = ("done", "total", "unit", "wait")

    def __init__(self, done: Callable[[], int], total: int | None, unit: str, wait: Callable[[float], bool]) -> None:
        self.done = done
        self.total = total
        self.unit = unit
        self.wait = wait


def make_bar(total: int | None, desc: str, unit: str) -> Any:
    """A tqdm bar (``tqdm.auto``).

    Raises
    ------
    ImportError
        If tqdm is not installed, saying how to install it.
    """
    return _tqdm()(total=total, desc=desc, unit=unit, dynamic_ncols=True)


def follow(counted: Counted, desc: str, interval: float = INTERVAL_S, timeout: float | None = None) -> bool:
    """Draw a bar for `counted` until it is finished or `timeout` seconds pass; return whether it finished."""
    bar = make_bar(counted.total, desc, counted.unit)
    deadline = None if timeout is None else time.monotonic() + timeout
    shown = 0
    finished = False
    try:
        while True:
            now = counted.done()
            if now > shown:
                bar.update(now - shown)
                shown = now
            if finished:
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            # Wakes at the end at once; the last count is taken after it (all chunks done by then).
            left = interval if deadline is None else min(interval, max(0.0, deadline - time.monotonic()))
            finished = counted.wait(left)
    finally:
        bar.close()


def follow_in_background(result: Any) -> threading.Thread:
    """``result.wait_interactive()`` in a daemon thread of its own (call :func:`require_tqdm` first)."""
    thread = threading.Thread(target=result.wait_interactive, name="zpool-progress", daemon=True)
    thread.start()
    return thread


def require_tqdm() -> None:
    """Check, before any work is submitted, that a bar can be drawn.

    Raises
    ------
    ImportError
        If tqdm is not installed, saying how to install it.
    """
    _tqdm()


def _tqdm() -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise ImportError(
            "progress bars are drawn with tqdm, which is not installed: pip install 'zpool[progress]'"
            " (or pip install tqdm)"
        ) from None
    return tqdm
