"""Module-level task functions shared by the benchmarks.

They live in their own small module (not in the benchmark script) so that
every back-end -- fork, spawn, zpool engines, the peers' workers (_peers.py) --
can import them by name without re-importing the benchmark script or numpy.
"""

from __future__ import annotations

import time


def noop(x):
    """Return the argument unchanged (latency / startup probe)."""
    return x


def square(x):
    """A tiny CPU task: x * x."""
    return x * x


def identity(x):
    """Return the argument unchanged (used for large-payload round trips)."""
    return x


def sleep_for(seconds):
    """Sleep for `seconds`, then return them (tasks of uneven length)."""
    time.sleep(seconds)
    return seconds


def spin(iterations):
    """Pure-Python busy work: `iterations` rounds of integer arithmetic (CPU-bound tasks)."""
    x = 0
    for i in range(iterations):
        x = (x * 31 + i) % 1_000_003
    return x
