"""Data that stays on the workers: zpool's direct interface versus multiprocessing.Pool, in one run.

An iterative computation over a large matrix (power iteration: ``x <- A x / |A x|``)
is where keeping data on the workers pays. Figures (``processes=2`` unless
``--processes N``; a float64 matrix of ``--megabytes`` MB, ``--iterations`` steps):

1. zpool, data on the engines: ``scatter`` the rows of ``A`` once, then per
   step ``view.apply(block_product, x)`` on a view of every engine, and join
   the blocks; only the vector travels;
2. multiprocessing, blocks sent each step: ``pool.map`` over the row blocks,
   each task carrying its block and ``x`` (what a map-only API invites);
3. multiprocessing, matrix in the initializer: every worker receives the whole
   matrix once (``initargs``), each step maps ``(start, stop, x)`` row ranges
   (the best a pool without addressable workers can do).

For each: set-up seconds (scatter, or pool start with the initializer), and
seconds per step after one untimed warm-up step; every result is checked
against numpy in this process. Run it with ``OPENBLAS_NUM_THREADS=1`` (or
your BLAS's equivalent) on small machines: two workers each starting one
BLAS thread per core oversubscribe the cores, whichever pool runs them.
Also the direct call's round trip: ``pool.engines[0].apply(noop)`` and
``pool.engines.apply(noop)`` (every engine), beside ``pool.apply(noop)``.
Ratios > 1 mean zpool is faster.

Run::

    python benchmarks/bench_direct.py            # 200 MB, 10 steps
    python benchmarks/bench_direct.py --quick    # 32 MB, 5 steps
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
from typing import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for _p in (REPO, HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from _workloads import noop  # noqa: E402

from zpool._partition import even_bounds  # noqa: E402


def block_product(x):
    """This engine's rows of A times x (A is in the engine's namespace, bound by scatter)."""
    global A
    return A @ x


def product_of(block, x):
    return block @ x


def keep_matrix(matrix):
    global A
    A = matrix


def rows_product(bounds, x):
    global A  # bound by the initializer
    start, stop = bounds
    return A[start:stop] @ x


def reference(matrix, x0, steps: int):
    import numpy as np

    x = x0
    for _ in range(steps):
        y = matrix @ x
        x = y / np.linalg.norm(y)
    return x


def iterate(blocks_of: Callable[[object], list], x0, steps: int) -> tuple[float, object]:
    """Power iteration with ``blocks_of(x)`` giving the row blocks of A @ x: seconds per step, and x.

    One untimed warm-up step first, for every pool alike.
    """
    import numpy as np

    blocks_of(x0)
    x = x0
    t0 = time.perf_counter()
    for _ in range(steps):
        y = np.concatenate(blocks_of(x))
        x = y / np.linalg.norm(y)
    return (time.perf_counter() - t0) / steps, x


def zpool_direct(matrix, x0, steps: int, processes: int) -> tuple[float, float, object]:
    from zpool import Pool

    with Pool(processes) as pool:
        pool.apply(noop, (0,))  # started
        t0 = time.perf_counter()
        pool.scatter("A", matrix)
        setup = time.perf_counter() - t0
        view = pool.engines
        per_step, x = iterate(lambda x: view.apply(block_product, x), x0, steps)
    return setup, per_step, x


def mp_blocks(matrix, x0, steps: int, processes: int) -> tuple[float, float, object]:
    with multiprocessing.Pool(processes) as pool:
        pool.apply(noop, (0,))
        blocks = [matrix[a:b] for a, b in even_bounds(len(matrix), processes)]
        per_step, x = iterate(lambda x: pool.starmap(product_of, [(b, x) for b in blocks], chunksize=1), x0, steps)
    return 0.0, per_step, x


def mp_initializer(matrix, x0, steps: int, processes: int) -> tuple[float, float, object]:
    t0 = time.perf_counter()
    with multiprocessing.Pool(processes, initializer=keep_matrix, initargs=(matrix,)) as pool:
        pool.map(noop, range(processes * 4), chunksize=1)  # every worker has run its initializer
        setup = time.perf_counter() - t0
        bounds = even_bounds(len(matrix), processes)
        per_step, x = iterate(lambda x: pool.starmap(rows_product, [(b, x) for b in bounds], chunksize=1), x0, steps)
    return setup, per_step, x


def latency(processes: int, calls: int) -> dict[str, float]:
    from zpool import Pool

    out = {}
    with Pool(processes) as pool:
        one, every = pool.engines[0], pool.engines
        for name, call in (
            ("pool.apply (load-balanced)", lambda: pool.apply(noop, (1,))),
            ("engines[0].apply", lambda: one.apply(noop, 1)),
            (f"engines.apply ({processes} engines)", lambda: every.apply(noop, 1)),
        ):
            for _ in range(calls // 10):
                call()
            times = []
            for _ in range(calls):
                t0 = time.perf_counter()
                call()
                times.append(time.perf_counter() - t0)
            out[name] = statistics.median(times) * 1e6
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--megabytes", type=int, default=200)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="32 MB, 5 steps, fewer latency calls")
    args = parser.parse_args(argv)
    if args.quick:
        args.megabytes, args.iterations = 32, 5
    import numpy as np

    n = int((args.megabytes * 1e6 / 8) ** 0.5)
    rng = np.random.default_rng(0)
    matrix = rng.random((n, n))
    x0 = np.ones(n) / n**0.5
    expected = reference(matrix, x0, args.iterations)
    print(f"power iteration: {n} x {n} float64 matrix ({matrix.nbytes / 1e6:.0f} MB), {args.iterations} steps,")
    print(f"{args.processes} workers; seconds (lower is better)\n")
    rows = []
    for name, run in (
        ("zpool: scatter once, engines.apply per step", zpool_direct),
        ("multiprocessing: blocks sent every step", mp_blocks),
        ("multiprocessing: whole matrix in the initializer", mp_initializer),
    ):
        setup, per_step, x = run(matrix, x0, args.iterations, args.processes)
        ok = bool(np.allclose(x, expected))
        rows.append((name, setup, per_step, ok))
    zp_total = rows[0][1] + rows[0][2] * args.iterations
    print(f"{'':50} {'set-up':>8} {'per step':>9} {'total':>8} {'zpool ratio':>12}  result")
    for name, setup, per_step, ok in rows:
        total = setup + per_step * args.iterations
        verdict = "ok" if ok else "WRONG"
        print(f"{name:50} {setup:8.3f} {per_step:9.4f} {total:8.3f} {total / zp_total:11.2f}x  {verdict}")
    print("\ndirect call round trip, median microseconds (lower is better)")
    for name, micros in latency(args.processes, 200 if args.quick else 1000).items():
        print(f"  {name:34} {micros:8.0f}")
    return 0 if all(ok for *_, ok in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
