"""Lambdas and closures run remotely; remote exceptions come back with their traceback.

``multiprocessing.Pool`` cannot send a lambda or a closure to its workers
(plain pickle refuses them); zpool sends them by value with dill. When a
task raises, the caller gets the same exception type, with the traceback
from the engine attached as ``__cause__``.

Run::

    python examples/lambdas_and_errors.py
"""

from __future__ import annotations

import sys
import traceback

import zpool


def make_scaler(factor: float):
    """Return a closure: a function that remembers `factor`."""

    def scale(x: float) -> float:
        return x * factor

    return scale


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def mean_of_groups(groups: list[list[float]]) -> list[float]:
    return [mean(g) for g in groups]


def main() -> int:
    with zpool.Pool(2) as pool:
        # A lambda, through map().
        squares = pool.map(lambda x: x * x, range(8))
        print("lambda: ", squares)

        # A closure: `factor` travels with the function.
        triple = make_scaler(3)
        print("closure:", pool.map(triple, [1, 2, 3]))

        # A lambda that captures a local variable, through apply().
        offset = 100
        print("apply:  ", pool.apply(lambda a, b: a + b + offset, (1, 2)))

        # A remote exception: the second group is empty, so mean() divides by zero
        # on an engine. The caller catches it as the ordinary ZeroDivisionError.
        try:
            pool.apply(mean_of_groups, ([[1.0, 2.0], []],))
        except ZeroDivisionError as exc:
            print()
            print(f"caught {type(exc).__name__}: {exc}")
            print(f"its __cause__ is a {type(exc.__cause__).__name__} holding the engine's traceback.")
            print("The full chain, as Python would print it:")
            print()
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stdout)

        # apply_async() does not raise; the AsyncResult holds the failure.
        ar = pool.apply_async(int, ("not a number",))
        ar.wait()
        print(f"apply_async(int, ...): successful() = {ar.successful()}, exception = {ar.exception()!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
