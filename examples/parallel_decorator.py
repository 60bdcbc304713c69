"""Run ordinary functions in parallel with ``@pool.parallel`` and ``@pool.remote``.

* ``@pool.parallel()`` on functions written for a whole list or array:
  ``primes_in(numbers)`` keeps the primes of a list, ``row_norms(a)``
  returns one norm per row of a 2-d array, ``total(numbers)`` one sum. A
  call cuts the input into chunks, runs the function on each chunk on the
  engines, and joins the chunk results in input order: lists end to end,
  arrays along their first axis, any other result (a number) as one
  element each.
* ``.map(...)`` calls the function on each element instead, as the builtin
  ``map`` does, with several sequences zipped.
* ``ordered=False`` joins the chunk results as they finish.
* ``@pool.remote()`` runs each call on one engine (load-balanced), and
  ``@pool.engines.remote()`` on every engine.

Every parallel result is checked against the plain function called here
(``.func`` is the undecorated function).

Run::

    python examples/parallel_decorator.py
    python examples/parallel_decorator.py --limit 1_000_000 --rows 400_000 --processes 4
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import sys
import time

import numpy as np

import zpool


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    return all(n % d for d in range(3, math.isqrt(n) + 1, 2))


def collatz_steps(n: int) -> int:
    """Steps for `n` to reach 1 under n -> n/2 (even), 3n + 1 (odd)."""
    steps = 0
    while n != 1:
        n = n // 2 if n % 2 == 0 else 3 * n + 1
        steps += 1
    return steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=300_000, help="look for primes below this (default: %(default)s)")
    parser.add_argument("--rows", type=int, default=200_000, help="rows of the array (default: %(default)s)")
    parser.add_argument("--processes", type=int, default=None, help="engines (default: one per CPU)")
    args = parser.parse_args()
    if args.limit < 2 or args.rows < 1:
        parser.error("--limit must be at least 2 and --rows at least 1")

    with zpool.Pool(args.processes) as pool:
        pool.wait_for_engines()  # Pool() returns before the engines have registered

        # A function written for a whole list runs on chunks of it; the chunks' lists are concatenated.
        @pool.parallel()
        def primes_in(numbers):
            """The primes among `numbers`, in order."""
            return [n for n in numbers if is_prime(n)]

        print(f"decorated: {primes_in.__name__}{inspect.signature(primes_in)}: {primes_in.__doc__}")
        t0 = time.perf_counter()
        primes = primes_in(range(args.limit))
        t1 = time.perf_counter()
        serial = primes_in.func(range(args.limit))
        t2 = time.perf_counter()
        print(f"{len(primes):,} primes below {args.limit:,}; the last: {primes[-1]}")
        print(f"primes match serial result: {primes == serial}")
        print(f"time: {t1 - t0:.2f} s on the engines, {t2 - t1:.2f} s here")

        # Arrays are cut along their first axis, and the chunks' arrays concatenated.
        @pool.parallel()
        def row_norms(a):
            return np.linalg.norm(a, axis=1)

        a = np.random.default_rng(7).standard_normal((args.rows, 8))
        norms = row_norms(a)
        print(f"row norms: {type(norms).__name__} of shape {norms.shape}")
        print(f"row norms match serial result: {np.allclose(norms, row_norms.func(a))}")

        # A result that is neither a list nor an array counts as one element: one partial sum per chunk.
        @pool.parallel(chunksize=1000)
        def total(numbers):
            return sum(numbers)

        partial = total(range(args.limit))
        print(f"partial sums: {len(partial)} (one per chunk of 1000)")
        print(f"sum of partial sums matches serial result: {sum(partial) == total.func(range(args.limit))}")

        # .map: element-wise, load-balanced, like the builtin map; several sequences are zipped.
        steps = pool.parallel(collatz_steps).map(range(1, args.limit // 10))
        print(f"collatz: longest chain below {args.limit // 10:,} takes {max(steps)} steps")
        print(f"collatz map matches serial result: {steps == list(map(collatz_steps, range(1, args.limit // 10)))}")
        xs, ys = range(10**6, 10**6 + 50), range(10**4, 10**4 + 50)
        print(f"gcd map matches serial result: {pool.parallel(math.gcd).map(xs, ys) == list(map(math.gcd, xs, ys))}")

        # ordered=False: chunk results joined as they finish (one item per chunk here).
        @pool.parallel(ordered=False, chunksize=1)
        def slow_echo(items):
            time.sleep(0.02 * items[0])
            return list(items)

        finished = slow_echo([5, 1, 4, 2, 3])
        print(f"unordered: finished as {finished}")
        print(f"unordered holds the same items: {sorted(finished) == [1, 2, 3, 4, 5]}")

        # @pool.remote(): each call is one task on some engine; block=False returns an AsyncResult.
        @pool.remote()
        def factorize(n):
            """Prime factors of `n`, smallest first."""
            factors, d = [], 2
            while d * d <= n:
                while n % d == 0:
                    factors.append(d)
                    n //= d
                d += 1
            return [*factors, n] if n > 1 else factors

        n = 2**2 * 3 * 1_000_003 * 999_983
        factors = factorize(n)
        print(f"factors of {n}: {factors}")
        print(f"remote factors multiply back: {math.prod(factors) == n}")

        offset = 1000  # a closure: the decorated function takes `offset` with it

        @pool.remote(block=False)
        def shifted(x):
            return x + offset

        result = shifted(1)
        print(f"remote with block=False: {type(result).__name__}, value {result.get(timeout=30)}")

        # @pool.engines.remote(): every call runs on every engine of the view, one result per engine.
        @pool.engines.remote()
        def engine_pid():
            return os.getpid()

        pids = engine_pid()
        print(f"one answer per engine: {len(pids) == len(pool.engines) and len(set(pids)) == len(pids)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
