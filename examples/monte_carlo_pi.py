"""Estimate pi by Monte Carlo sampling, in parallel on a zpool.Pool.

Each task draws points uniformly in the unit square with numpy and counts
those inside the quarter circle; pi is about 4 * inside / total. The work
is split into ``--chunks`` tasks, each with its own independent random
stream, and sent to a ``zpool.Pool()`` with one engine per CPU.

Run::

    python examples/monte_carlo_pi.py
    python examples/monte_carlo_pi.py --samples 200_000_000 --chunks 64
"""

from __future__ import annotations

import argparse
import collections
import math
import sys
import time

import numpy as np

import zpool

# Points drawn per numpy call inside a task: bounds a task's memory (~32 MB).
BLOCK = 2_000_000


def count_inside(seed: np.random.SeedSequence, n: int) -> int:
    """Draw `n` points in the unit square; return how many fall in the unit circle."""
    rng = np.random.default_rng(seed)
    inside = 0
    for start in range(0, n, BLOCK):
        m = min(BLOCK, n - start)
        x = rng.random(m)
        y = rng.random(m)
        inside += int(np.count_nonzero(x * x + y * y <= 1.0))
    return inside


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=50_000_000, help="points in total (default: %(default)s)")
    parser.add_argument("--chunks", type=int, default=32, help="tasks to split them into (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=12345, help="random seed (default: %(default)s)")
    args = parser.parse_args()
    if args.samples < 1 or args.chunks < 1:
        parser.error("--samples and --chunks must be at least 1")

    chunks = min(args.chunks, args.samples)
    # Split the samples as evenly as possible; one independent stream per task.
    sizes = [args.samples // chunks + (i < args.samples % chunks) for i in range(chunks)]
    seeds = np.random.SeedSequence(args.seed).spawn(chunks)

    t0 = time.perf_counter()
    with zpool.Pool() as pool:
        pool.wait_for_engines()  # Pool() returns before the engines have registered
        t1 = time.perf_counter()
        results = [pool.apply_async(count_inside, (seed, n)) for seed, n in zip(seeds, sizes)]
        inside = sum(r.get() for r in results)
        t2 = time.perf_counter()
        per_engine = collections.Counter(r.metadata.engine_id for r in results)

    estimate = 4.0 * inside / args.samples
    print(f"pi ~= {estimate:.6f}  (error {estimate - math.pi:+.2e}, {args.samples:,} samples, {chunks} task(s))")
    print(f"time: {t2 - t1:.2f} s computing, {t1 - t0:.2f} s starting the pool")
    print("tasks per engine:")
    for engine_id, count in sorted(per_engine.items()):
        print(f"  engine {engine_id}: {count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
