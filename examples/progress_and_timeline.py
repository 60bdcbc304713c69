"""A progress bar while uneven tasks run, then their timeline: which engine ran what, and when.

64 tasks of uneven length (most short, a few long) go to the pool at once;
a bar counts them as they finish, then a per-engine Gantt chart of the run
is saved as a PNG, showing how evenly the engines were kept busy.

    python examples/progress_and_timeline.py --tasks 64 --out timeline.png

Needs the extras: pip install "zpool[progress,timeline]" (tqdm, matplotlib).
"""

from __future__ import annotations

import argparse
import random
import time

from zpool import Pool


def work(seconds: float) -> float:
    """Stand-in for a task of uneven cost (a simulation step, a fit)."""
    time.sleep(seconds)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=64, help="how many tasks (default 64)")
    parser.add_argument("--processes", type=int, default=2, help="engines (default 2)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every task's length (default 1)")
    parser.add_argument("--out", default="timeline.png", help="where to save the chart (default timeline.png)")
    args = parser.parse_args()
    rng = random.Random(7)
    # Skewed: most tasks take 2-20 ms, one in eight 40-100 ms.
    lengths = [
        args.scale * (rng.uniform(0.04, 0.1) if rng.random() < 0.125 else rng.uniform(0.002, 0.02))
        for _ in range(args.tasks)
    ]
    with Pool(args.processes) as pool:
        pool.map(work, [0.0] * args.processes)  # the engines are up and warm
        t0 = time.perf_counter()
        result = pool.map_async(work, lengths, chunksize=1)
        result.wait_interactive()  # the bar: count, rate, time left
        wall = time.perf_counter() - t0
        assert result.get() == lengths
        ideal = max(sum(lengths) / args.processes, max(lengths))
        print(f"{args.tasks} tasks, {sum(lengths):.2f} s of work on {args.processes} engines:")
        print(f"wall {wall:.3f} s, ideal {ideal:.3f} s, wall/ideal {wall / ideal:.2f}")
        ax = result.timeline(args.out)
        print(f"timeline saved to {args.out}: {ax.get_title()}")


if __name__ == "__main__":
    main()
