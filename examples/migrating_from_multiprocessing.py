"""The same pool code on ``multiprocessing`` and on zpool, with the results compared.

:func:`run` takes a pool class and uses it the way typical
``multiprocessing`` code does: an ``initializer`` that sets a global of
``__main__`` in every worker, ``map``, ``starmap``, ``imap`` over a
generator, ``imap_unordered``, ``apply_async`` with a ``callback``, and a
task exception caught by its own type (a class defined in this script).

The script runs :func:`run` twice, first with
``multiprocessing.get_context("spawn").Pool``, then with ``zpool.Pool``,
checks that both return the same results, and prints the time each took
(pool start-up included).

Run::

    python examples/migrating_from_multiprocessing.py

Notes
-----
Nothing in :func:`run` knows which pool it was given: switching is the
one-line change ``from zpool import Pool``. The ``if __name__ ==
"__main__":`` guard at the bottom is there for the standard library's
``spawn`` start method, whose workers import this script; zpool's engines
never import it and would not need the guard. See ``docs/migrating.md``
for the differences you can observe.
"""

from __future__ import annotations

import math
import multiprocessing
import sys
import time
from typing import Any, Callable, Iterator

import zpool

# Per-worker state, set by init_worker() in every worker before its first task.
GAIN: float | None = None


class BadReading(ValueError):
    """A sensor reading outside the valid range."""


def init_worker(gain: float) -> None:
    """Store the calibration gain in this worker's global namespace."""
    global GAIN
    GAIN = gain


def calibrate(raw: int) -> float:
    """Scale one raw reading by the worker's gain; negative readings are invalid."""
    if raw < 0:
        raise BadReading(f"negative reading: {raw}")
    assert GAIN is not None, "the initializer did not run"
    return round(raw * GAIN, 6)


def distance(x: int, y: int) -> float:
    """Calibrated length of the vector (x, y)."""
    assert GAIN is not None, "the initializer did not run"
    return round(math.hypot(x, y) * GAIN, 6)


def readings(n: int) -> Iterator[int]:
    """Produce `n` raw readings one at a time, as a sensor log reader would."""
    for i in range(n):
        yield (i * 37) % 101


def total(values: list[float]) -> float:
    """Sum of `values`, rounded."""
    return round(sum(values), 6)


def run(Pool: Callable[..., Any]) -> dict[str, Any]:
    """Run the workload on a pool made by `Pool`; return every result, by method.

    Parameters
    ----------
    Pool : callable
        ``multiprocessing.get_context("spawn").Pool`` or ``zpool.Pool``:
        anything with the signature of :class:`multiprocessing.pool.Pool`.

    Returns
    -------
    dict
        One entry per pool method used, holding what it returned.
    """
    results: dict[str, Any] = {}
    seen_by_callback: list[float] = []
    with Pool(2, initializer=init_worker, initargs=(0.5,)) as pool:
        results["map"] = pool.map(calibrate, range(2000))
        results["starmap"] = pool.starmap(distance, [(i, 2 * i + 1) for i in range(1000)])
        # imap reads the generator as the workers go; results come back in input order.
        results["imap"] = list(pool.imap(calibrate, readings(3000), chunksize=50))
        # imap_unordered yields results as they finish: sort them to compare.
        results["imap_unordered"] = sorted(pool.imap_unordered(calibrate, readings(3000), chunksize=50))
        ar = pool.apply_async(total, (results["map"],), callback=seen_by_callback.append)
        results["apply_async"] = ar.get(timeout=60)
        # The callback has run by the time get() returns, with both pools.
        results["callback"] = list(seen_by_callback)
        try:
            pool.apply(calibrate, (-7,))
        except BadReading as exc:  # the task's own exception type, with the remote traceback as cause
            results["exception"] = (type(exc).__name__, str(exc), type(exc.__cause__).__name__)
        else:
            raise AssertionError("calibrate(-7) did not raise BadReading")
        # Let the queued work finish and the workers exit cleanly before leaving the block.
        pool.close()
        pool.join()
    return results


def timed(Pool: Callable[..., Any]) -> tuple[dict[str, Any], float]:
    """Return what ``run(Pool)`` returned, and how many seconds it took."""
    start = time.perf_counter()
    results = run(Pool)
    return results, time.perf_counter() - start


def main() -> int:
    before, before_s = timed(multiprocessing.get_context("spawn").Pool)
    after, after_s = timed(zpool.Pool)
    same = before == after
    print(f"multiprocessing (spawn): {before_s:6.2f} s")
    print(f"zpool:                   {after_s:6.2f} s")
    print(f"compared: {', '.join(before)}")
    print(f"identical results: {same}")
    if not same:
        for key in before:
            if before[key] != after.get(key):
                print(f"  {key} differs", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
