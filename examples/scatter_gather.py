"""Scatter data over the engines, compute where it lives, gather the pieces: two small workloads.

1. Matrix-vector products. The rows of a random ``--size`` x ``--size``
   matrix are scattered over the engines once (each engine holds a
   contiguous block of rows, sent without copying); the vector is pushed;
   ``execute("y = A @ x")`` computes each block's product where the block
   lives, and ``gather("y")`` joins the pieces into one array. Then
   ``--iterations`` steps of power iteration reuse the scattered blocks:
   only the vector travels at each step, as the argument of
   ``pool.engines.apply``.
2. A word count. ``--lines`` lines of generated text are scattered as
   lists; ``sync_imports`` makes ``Counter`` available on the engines,
   ``execute`` counts each engine's lines, and ``pull`` brings the partial
   counts back to be added up here.

Every result is checked against the same computation done serially with
numpy and ``collections.Counter`` in this process.

Run::

    python examples/scatter_gather.py
    python examples/scatter_gather.py --size 4000 --lines 200_000 --processes 4
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import zpool

WORDS = "the of and to in is was for on that with as by at from his her an which are".split()


def block_product(x: np.ndarray) -> np.ndarray:
    """On an engine: its block of rows of the matrix times `x`.

    `A` is the engine's own global, bound by ``pool.scatter("A", ...)``:
    a function from ``__main__`` runs with the engine's namespace as its
    globals. ``global A`` says so (and keeps linters content); an engine
    without it raises ``NameError``.
    """
    global A
    return A @ x


def make_corpus(lines: int, rng: np.random.Generator) -> list[str]:
    """Lines of 5 to 15 words drawn from a small vocabulary, the first words far more often."""
    weights = 1.0 / np.arange(1, len(WORDS) + 1)
    weights /= weights.sum()
    lengths = rng.integers(5, 16, size=lines)
    drawn = rng.choice(len(WORDS), size=int(lengths.sum()), p=weights)
    out = []
    start = 0
    for n in lengths:
        out.append(" ".join(WORDS[i] for i in drawn[start : start + n]))
        start += n
    return out


def power_iteration(product, x: np.ndarray, iterations: int) -> tuple[float, np.ndarray]:
    """Estimate the largest eigenvalue of a matrix given by `product`, starting from `x`."""
    estimate = 0.0
    for _ in range(iterations):
        y = product(x)
        estimate = float(np.linalg.norm(y))
        x = y / estimate
    return estimate, x


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=3000, help="rows and columns of the matrix (default: %(default)s)")
    parser.add_argument("--iterations", type=int, default=20, help="power iteration steps (default: %(default)s)")
    parser.add_argument("--lines", type=int, default=50_000, help="lines of text to count (default: %(default)s)")
    parser.add_argument("--processes", type=int, default=None, help="engines (default: one per CPU)")
    parser.add_argument("--seed", type=int, default=2024, help="random seed (default: %(default)s)")
    args = parser.parse_args()
    if args.size < 1 or args.iterations < 1 or args.lines < 1:
        parser.error("--size, --iterations and --lines must be at least 1")

    rng = np.random.default_rng(args.seed)
    matrix = rng.random((args.size, args.size))
    vector = rng.random(args.size)
    corpus = make_corpus(args.lines, rng)

    with zpool.Pool(args.processes) as pool:
        pool.wait_for_engines()  # Pool() returns before the engines have registered
        engines = pool.engines
        print(f"engines: {engines.ids}")

        # 1. y = A @ x, each engine multiplying its own block of rows.
        t0 = time.perf_counter()
        pool.scatter("A", matrix)  # contiguous row blocks, lengths differing by at most one
        t1 = time.perf_counter()
        pool.push({"x": vector})
        pool.execute("y = A @ x")
        product = pool.gather("y")  # the blocks' products, joined in engine order
        t2 = time.perf_counter()
        serial = matrix @ vector
        t3 = time.perf_counter()
        pool.execute("n_rows = len(A)")
        print(f"rows per engine: {pool.pull('n_rows')}")
        print(f"matrix-vector product matches serial result: {np.allclose(product, serial)}")

        # Power iteration: the matrix stays on the engines, only the vector travels.
        def distributed(x: np.ndarray) -> np.ndarray:
            return np.concatenate(engines.apply(block_product, x))

        t4 = time.perf_counter()
        value, _ = power_iteration(distributed, vector, args.iterations)
        t5 = time.perf_counter()
        expected, _ = power_iteration(lambda x: matrix @ x, vector, args.iterations)
        print(f"largest eigenvalue ~= {value:.6f} after {args.iterations} steps")
        print(f"power iteration matches serial result: {np.isclose(value, expected)}")

        # 2. A word count: scatter the lines, count where they are, add the partial counts here.
        with pool.sync_imports():
            from collections import Counter  # bound here and on every engine
        t6 = time.perf_counter()
        pool.scatter("lines", corpus)  # a list is cut into lists
        pool.execute("counts = Counter(word for line in lines for word in line.split())")
        counts = sum(pool.pull("counts"), Counter())  # one partial count per engine
        t7 = time.perf_counter()
        expected_counts = Counter(word for line in corpus for word in line.split())
        top = ", ".join(f"{word} {n}" for word, n in counts.most_common(3))
        print(f"{sum(counts.values()):,} words in {len(corpus):,} lines; most common: {top}")
        print(f"word counts match serial result: {counts == expected_counts}")
        pool.clear()  # empty the engines' namespaces

    mib = matrix.nbytes / 2**20
    print(f"time: scatter of {mib:.0f} MiB {t1 - t0:.3f} s")
    print(f"time: one product {t2 - t1:.4f} s on the engines, {t3 - t2:.4f} s here")
    print(f"time: {args.iterations} power iteration steps {t5 - t4:.3f} s; word count {t7 - t6:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
