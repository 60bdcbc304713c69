"""A standalone cluster: one script submits work and leaves, a later one fetches the results by id.

What you would do in a terminal, here in one file::

    zpool cluster start -n 2 --daemon     # a controller and two engines, in the background
    python submit.py                       # Pool(cluster="default"): apply_async, save the task ids, detach
    python collect.py                      # Pool(cluster="default"): get_result(ids), db_query(...)
    zpool status                           # the engines, and each client's tasks
    zpool cluster stop

The cluster lives in a temporary ``$ZPOOL_HOME``, so that this example
leaves nothing in ``~/.zpool``. Each "script" is a ``with Pool(...)`` block:
the first submits random walks, one of which fails, and detaches
(``pool.detach()``) without waiting for them; the second, another client of the cluster, fetches the results
from the task database, failures included, and queries the records.

Run::

    python examples/standalone_cluster.py
    python examples/standalone_cluster.py --walks 40 --engines 4
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

from zpool import Pool


def zpool_command(*args: str) -> str:
    """Run the ``zpool`` command (as ``python -m zpool``); what it printed."""
    done = subprocess.run([sys.executable, "-m", "zpool", *args], capture_output=True, text=True, check=True)
    return done.stdout


def walk(seed: int, steps: int = 100_000) -> float:
    """The farthest a random walk of `steps` steps gets from 0 (the walk of seed 13 fails, on purpose)."""
    if seed == 13:
        raise ValueError("seed 13 is unlucky")
    rng = np.random.default_rng(seed)
    return float(np.abs(np.cumsum(rng.choice([-1, 1], size=steps))).max())


def submit(n_walks: int) -> list[str]:
    """The first script: submit the walks, and leave without waiting; the task ids, to come back with."""
    pool = Pool(cluster="default")
    results = [pool.apply_async(walk, (seed,)) for seed in range(n_walks)]
    print(f"submitted {n_walks} walks as client {pool.client_id}")
    left = pool.detach()  # (leaving a `with` block would end them: terminate)
    print(f"detached, leaving {len(left)} walk(s) running or queued")
    return [r.msg_ids[0] for r in results]


def collect(ids: list[str]) -> None:
    """A later script, another client: the results by id, from the task database, and the records."""
    with Pool(cluster="default") as pool:
        # One result per task, so that a failed walk does not hide the others (those still
        # running are answered as they finish).
        fetched = {task_id: pool.get_result(task_id) for task_id in ids}
        reached = []
        for task_id, result in fetched.items():
            try:
                reached.append(result.get(60))
            except ValueError as exc:
                print(f"task {task_id} failed: {type(exc).__name__}: {exc}")
        print(f"fetched {len(reached)} results by id; the farthest walk reached {max(reached):.0f}")
        failed = pool.db_query(status="error")
        print(f"records of failed tasks: {[r['id'] for r in failed]}")
        done = pool.db_query(status="ok")
        per_engine = {e: sum(1 for r in done if r["engine"] == e) for e in sorted({r["engine"] for r in done})}
        print(f"walks per engine: {per_engine}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--walks", type=int, default=20)
    parser.add_argument("--engines", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="zpool-example-") as home:
        os.environ["ZPOOL_HOME"] = home  # (the zpool command runs with it too)
        print(zpool_command("cluster", "start", "-n", str(args.engines), "--daemon").strip())
        try:
            ids = submit(args.walks)
            collect(ids)
            print(zpool_command("status"))
        finally:
            print(zpool_command("cluster", "stop").strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
