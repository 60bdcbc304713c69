"""zpool.ProcessPoolExecutor where code expects concurrent.futures.ProcessPoolExecutor.

Three ways programs use a process executor, each unchanged but for the import:
``executor.map``, ``submit`` with ``as_completed``, and asyncio's
``loop.run_in_executor`` (a library that takes an executor). The work is
counting primes below a bound, by trial division: CPU-bound, in pure Python.

    python examples/executor_drop_in.py --limit 200000 --chunks 8
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import math
import time

from zpool import ProcessPoolExecutor  # was: from concurrent.futures import ProcessPoolExecutor


def count_primes(start: int, stop: int) -> int:
    """How many primes lie in [start, stop)."""
    found = 0
    for n in range(max(start, 2), stop):
        if all(n % d for d in range(2, math.isqrt(n) + 1)):
            found += 1
    return found


def bounds(limit: int, chunks: int) -> list[tuple[int, int]]:
    step = -(-limit // chunks)
    return [(i, min(i + step, limit)) for i in range(0, limit, step)]


async def with_asyncio(executor: concurrent.futures.Executor, parts: list[tuple[int, int]]) -> int:
    loop = asyncio.get_running_loop()
    counts = await asyncio.gather(*(loop.run_in_executor(executor, count_primes, a, b) for a, b in parts))
    return sum(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=200_000, help="count the primes below this (default 200,000)")
    parser.add_argument("--chunks", type=int, default=8, help="pieces of work (default 8)")
    parser.add_argument("--workers", type=int, default=None, help="engines (default: one per CPU)")
    args = parser.parse_args()
    parts = bounds(args.limit, args.chunks)
    starts, stops = zip(*parts)

    with ProcessPoolExecutor(max_workers=args.workers) as executor:
        t0 = time.perf_counter()
        by_map = sum(executor.map(count_primes, starts, stops))
        print(f"map: {by_map} primes below {args.limit} ({time.perf_counter() - t0:.2f} s)")

        futures = {executor.submit(count_primes, a, b): (a, b) for a, b in parts}
        by_completion = 0
        for future in concurrent.futures.as_completed(futures):
            by_completion += future.result()
            assert isinstance(future.metadata["engine_id"], int)  # zpool's futures also say where each call ran
        print(f"as_completed: {len(futures)} parts, {by_completion} primes")

        by_asyncio = asyncio.run(with_asyncio(executor, parts))
        print(f"asyncio run_in_executor: {by_asyncio} primes")

    here = count_primes(0, args.limit)
    print(f"the same as counted here: {by_map == by_completion == by_asyncio == here}")


if __name__ == "__main__":
    main()
