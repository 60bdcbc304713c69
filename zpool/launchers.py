"""Where a cluster's engines run: on this machine, or started elsewhere through ssh, MPI or Slurm.

A launcher says how engines are started; the controller starts them as it
starts, reports their state (``zpool status``, its log) and ends them as
it stops. Give one to :func:`zpool.standalone.start_cluster` (the
``--launcher`` of ``zpool cluster start``) or to ``Pool(launcher=...)``::

    from zpool import Pool
    from zpool.launchers import MPI, SSH, Slurm

    Pool(launcher=SSH("node1:4,node2:4"), ip="10.0.0.1")
    Pool(launcher=MPI(8, mpiexec="mpiexec --hostfile hosts"), ip="10.0.0.1")
    Pool(launcher=Slurm(64, partition="short", time="1:00:00"), ip="10.0.0.1")

Engines started elsewhere connect back over TCP, so the cluster listens
on the address given as `ip` (encrypted with CURVE unless it is a
loopback address; see ``docs/security.md``). The ``mpi`` and ``slurm``
launchers run the engines with the connection file at the path it has
here, as is usual on clusters whose nodes share home directories; the
``ssh`` launcher copies it to each host.

Each launcher is plain data (:meth:`Launcher.to_spec`); the controller
side is :mod:`zpool.controller.remote`.
"""

from __future__ import annotations

import shlex
from typing import Any, ClassVar, Sequence

__all__ = ["MPI", "SSH", "Launcher", "Slurm", "from_spec", "parse_hosts"]

# How long a Slurm job may wait in the queue before the controller gives up on it (cancels it), in seconds.
SLURM_PENDING_TIMEOUT_S = 600.0


def parse_hosts(text: str) -> list[tuple[str, int]]:
    """``"a:4,b:2,c"`` as ``[("a", 4), ("b", 2), ("c", 1)]``.

    Raises
    ------
    ValueError
        If a host is empty or a count is not a positive int.
    """
    hosts = []
    for item in text.split(","):
        item = item.strip()
        host, _, count = item.rpartition(":") if ":" in item else (item, "", "1")
        if not host or not count.isdigit() or int(count) < 1:
            raise ValueError(f"hosts are HOST or HOST:N (N engines), separated by commas; not {item!r}")
        hosts.append((host, int(count)))
    if not hosts:
        raise ValueError("no hosts given")
    return hosts


def _command(value: str | Sequence[str], what: str) -> list[str]:
    words = shlex.split(value) if isinstance(value, str) else [str(w) for w in value]
    if not words:
        raise ValueError(f"{what} is empty: give the command (and its options) as a string or a list")
    return words


def _count(n: Any, what: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{what} takes a number of engines of at least 1, not {n!r}")
    return n


class Launcher:
    """How a cluster's engines are started elsewhere; see the subclasses."""

    kind: ClassVar[str] = ""
    python: str

    @property
    def engines(self) -> int:
        """How many engines it starts."""
        raise NotImplementedError

    def to_spec(self) -> dict[str, Any]:
        """Plain data (JSON) the controller rebuilds the launcher from."""
        return {"kind": self.kind, **{k: v for k, v in vars(self).items() if not k.startswith("_")}}

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.to_spec().items() if k != "kind")
        return f"{type(self).__name__}({fields})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Launcher) and self.to_spec() == other.to_spec()


class SSH(Launcher):
    """Engines on listed hosts, each started by an ``ssh`` session the controller holds.

    Parameters
    ----------
    hosts : str or list of (str, int)
        ``"host1:4,host2:4"`` (N engines on each; ``host`` alone is one),
        or pairs.
    ssh : str or list of str
        The ssh command and its options (``"ssh -F config -i key"``); it
        must log in without asking (keys, not passwords).
    python : str
        The Python on the hosts, with zpool installed (an absolute path is
        safest: login shells may put another first on ``PATH``).
    """

    kind = "ssh"

    def __init__(
        self, hosts: str | Sequence[tuple[str, int]], ssh: str | Sequence[str] = "ssh", python: str = "python3"
    ) -> None:
        pairs = parse_hosts(hosts) if isinstance(hosts, str) else [(str(h), _count(n, "a host")) for h, n in hosts]
        if not pairs:
            raise ValueError("SSH() needs at least one host")
        self.hosts: list[tuple[str, int]] = list(pairs)
        self.ssh = _command(ssh, "ssh")
        self.python = str(python)

    @property
    def engines(self) -> int:
        return sum(n for _, n in self.hosts)


class MPI(Launcher):
    """`n` engines started as the ranks of one ``mpiexec`` (each knows its rank; tasks may use mpi4py).

    Parameters
    ----------
    n : int
        Engines (MPI ranks).
    mpiexec : str or list of str
        The ``mpiexec`` command and its options (``"mpiexec --hostfile
        hosts"``; as root, Open MPI also wants ``--allow-run-as-root``).
        ``-n`` is added.
    python : str
        The Python on the hosts, with zpool installed.
    """

    kind = "mpi"

    def __init__(self, n: int, mpiexec: str | Sequence[str] = "mpiexec", python: str = "python3") -> None:
        self.n = _count(n, "MPI()")
        self.mpiexec = _command(mpiexec, "mpiexec")
        self.python = str(python)

    @property
    def engines(self) -> int:
        return self.n


class Slurm(Launcher):
    """`n` engines as the tasks of one Slurm batch job (``sbatch``, its step run by ``srun``; ``scancel`` at stop).

    Parameters
    ----------
    n : int
        Engines (the job's ``--ntasks``).
    account, partition, time : str, optional
        Passed to ``sbatch`` (``--time`` as Slurm writes it: ``"30"``,
        ``"1:00:00"``, ``"2-0"``).
    extra : str or list of str
        More ``sbatch`` options, as they are (``"--mem-per-cpu=2G
        --constraint=avx2"``).
    srun : str or list of str
        Options of the ``srun`` that runs the engines (``"--mpi=pmix"``, so
        that tasks may use mpi4py among the engines).
    pending_timeout : float
        Seconds the job may wait in the queue; then it is cancelled and
        the cluster reports it so.
    python : str
        The Python on the nodes, with zpool installed.
    sbatch : str
        The ``sbatch`` command (``squeue``, ``scontrol`` and ``scancel`` are
        looked up beside it).
    """

    kind = "slurm"

    def __init__(
        self,
        n: int,
        *,
        account: str | None = None,
        partition: str | None = None,
        time: str | None = None,
        extra: str | Sequence[str] = (),
        srun: str | Sequence[str] = (),
        pending_timeout: float = SLURM_PENDING_TIMEOUT_S,
        python: str = "python3",
        sbatch: str = "sbatch",
    ) -> None:
        self.n = _count(n, "Slurm()")
        self.account = account
        self.partition = partition
        self.time = time
        self.extra = shlex.split(extra) if isinstance(extra, str) else [str(w) for w in extra]
        self.srun = shlex.split(srun) if isinstance(srun, str) else [str(w) for w in srun]
        if not pending_timeout > 0:
            raise ValueError(f"pending_timeout must be a positive number of seconds, not {pending_timeout!r}")
        self.pending_timeout = float(pending_timeout)
        self.python = str(python)
        self.sbatch = str(sbatch)

    @property
    def engines(self) -> int:
        return self.n


_KINDS: dict[str, type[Launcher]] = {cls.kind: cls for cls in (SSH, MPI, Slurm)}


def from_spec(spec: dict[str, Any]) -> Launcher:
    """The launcher :meth:`Launcher.to_spec` described.

    Raises
    ------
    ValueError
        If the kind is unknown or a field is not valid.
    """
    fields = dict(spec)
    kind = fields.pop("kind", None)
    cls = _KINDS.get(str(kind))
    if cls is None:
        raise ValueError(f"unknown launcher {kind!r}: one of {', '.join(sorted(_KINDS))}")
    if cls is SSH:
        return SSH(fields.pop("hosts"), **fields)
    return cls(fields.pop("n"), **fields)  # type: ignore[call-arg]
