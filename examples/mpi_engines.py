"""Engines started by mpiexec: load-balanced tasks, and MPI collectives among the engines (mpi4py).

A pool whose engines are the ranks of one ``mpiexec`` (zpool.launchers.MPI).
Its tasks run as on any pool (``pool.map``), and a function run on every
engine at once (``pool.engines.apply``) may talk MPI: here each rank
integrates a slice of 4 / (1 + x^2) over [0, 1] and ``allreduce`` sums the
slices into pi. Needs Open MPI's (or MPICH's) ``mpiexec`` and mpi4py.

    python examples/mpi_engines.py --engines 4
    python examples/mpi_engines.py --engines 8 --mpiexec "mpiexec --hostfile hosts" --ip 10.0.0.5
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from zpool import Pool
from zpool.launchers import MPI


def pi_slice(points: int) -> tuple[int, int, float]:
    """This rank's share of the midpoint rule for pi, summed over all ranks with MPI."""
    from mpi4py import MPI as mpi

    comm = mpi.COMM_WORLD
    step = 1.0 / points
    mine = np.arange(comm.rank, points, comm.size)  # every size-th midpoint, from this rank's
    x = (mine + 0.5) * step
    part = float(np.sum(4.0 / (1.0 + x * x)) * step)
    return comm.rank, comm.size, comm.allreduce(part)


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    return all(n % d for d in range(2, int(n**0.5) + 1))


def main() -> int:
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []  # (Open MPI refuses root without it)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engines", type=int, default=4, help="MPI ranks, each an engine")
    p.add_argument("--mpiexec", default=" ".join(["mpiexec", "--oversubscribe", *root]), help="mpiexec and options")
    p.add_argument("--ip", default="127.0.0.1", help="this machine's address, which the engines connect to")
    p.add_argument("--points", type=int, default=2_000_000, help="midpoints for pi")
    args = p.parse_args()

    launcher = MPI(args.engines, mpiexec=args.mpiexec, python=sys.executable)
    with Pool(launcher=launcher, ip=args.ip) as pool:
        view = pool.engines
        print(f"{len(view)} engines, MPI ranks {view.ranks}, on {sorted(set(view.hosts))}")

        # Load-balanced tasks, as on any pool; each result says which rank ran it.
        primes = pool.map(is_prime, range(50_000), chunksize=2_000)
        print(f"primes below 50,000: {sum(primes)}")
        result = pool.apply_async(is_prime, (104_729,))
        result.get()
        print(f"104,729 is prime: {result.get()} (ran on rank {result.metadata.engine_rank})")

        # One call on every engine at once: the ranks talk MPI among themselves.
        answers = view.apply(pi_slice, args.points)
        ranks = sorted(rank for rank, _, _ in answers)
        estimates = {round(total, 12) for _, _, total in answers}
        print(f"allreduce over ranks {ranks}: every rank has pi ~= {answers[0][2]:.10f}")
        print(f"all ranks agree: {len(estimates) == 1}; error {abs(answers[0][2] - np.pi):.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
