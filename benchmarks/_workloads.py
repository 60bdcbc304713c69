"""Module-level task functions shared by the benchmarks.

They live in their own small module (not in the benchmark script) so that
every back-end -- fork, spawn or zpool engines -- can import them by name
without re-importing the benchmark script or numpy.
"""

from __future__ import annotations


def noop(x):
    """Return the argument unchanged (latency / startup probe)."""
    return x


def square(x):
    """A tiny CPU task: x * x."""
    return x * x


def identity(x):
    """Return the argument unchanged (used for large-payload round trips)."""
    return x
