"""What tasks print: forwarded with their engine's name, and kept on each result.

A small parameter sweep whose tasks report as they go, as simulation
code often does: ``print`` for progress, ``logging`` for trouble. With the
default ``Pool(output="forward")`` their lines show here as they come,
each prefixed with its engine; with ``output="capture"`` they are only
kept, and read back per task afterwards.

Run:  python examples/worker_output.py [--points 6] [--steps 3]
"""

from __future__ import annotations

import argparse
import logging
import math

from zpool import Pool

log = logging.getLogger("sweep")


def simulate(rate: float, steps: int) -> float:
    """Integrate dx/dt = -rate * x from x = 1, reporting as it goes."""
    x, dt = 1.0, 0.5
    for step in range(steps):
        x -= rate * x * dt
        print(f"rate {rate:.2f}: step {step + 1}/{steps}, x = {x:.4f}")
    if x < 0:
        log.warning("rate %.2f: x went negative (%.3f): the step is too long for this rate", rate, x)
    return x


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--points", type=int, default=6, help="rates in the sweep")
    p.add_argument("--steps", type=int, default=3, help="steps per simulation")
    args = p.parse_args()
    rates = [0.5 + 2.5 * i / max(1, args.points - 1) for i in range(args.points)]

    print("-- forwarded as the tasks print:")
    with Pool(2) as pool:
        finals = pool.starmap(simulate, [(rate, args.steps) for rate in rates])
    exact = [math.exp(-rate * 0.5 * args.steps) for rate in rates]
    print("-- final x, and the exact exp(-rate t):")
    for rate, x, e in zip(rates, finals, exact):
        print(f"rate {rate:.2f}: {x:+.4f}  (exact {e:.4f})")

    print("-- kept per task, read back afterwards:")
    with Pool(2, output="capture") as pool:
        result = pool.starmap_async(simulate, [(rate, args.steps) for rate in rates], chunksize=1)
        result.get()
    troubled = [rate for rate, err in zip(rates, result.stderr) if "negative" in err]
    print(f"{len(troubled)} of {len(rates)} rates warned: {', '.join(f'{r:.2f}' for r in troubled)}")
    last_lines = [out.splitlines()[-1] for out in result.stdout]
    print(f"the last line of the first task: {last_lines[0]!r}")


if __name__ == "__main__":
    main()
