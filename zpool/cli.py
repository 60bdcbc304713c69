"""The ``zpool`` command (also ``python -m zpool``): standalone clusters that outlive any script.

::

    zpool cluster start -n 4 --daemon      # a controller and 4 engines, in the background
    python my_script.py                    # ... Pool(cluster="default") attaches to it
    zpool cluster list                     # which clusters there are, and their state
    zpool cluster stop                     # the controller and its engines exit; the folder goes

    zpool controller --name lab            # a controller alone, in the foreground
    zpool engine --name lab                # an engine joining it (from any terminal)

Every verb takes ``--help``. Errors say what to do and exit with status 1
(2 for bad arguments). See ``docs/standalone.md``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Sequence

from zpool._settings import ControllerSettings

if TYPE_CHECKING:
    from zpool.launchers import Launcher

# How long `zpool engine` waits for its controller to come back when it stops answering, in seconds.
ENGINE_RECONNECT_S = 600.0
DEFAULT_HELP = "the cluster's name (default: %(default)s); its folder is $ZPOOL_HOME/clusters/NAME (~/.zpool)"


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _parser() -> argparse.ArgumentParser:
    from zpool.standalone import DEFAULT_NAME

    p = argparse.ArgumentParser(
        prog="zpool",
        description="Standalone zpool clusters: start, list and stop them; run a controller or an engine.",
        epilog="Attach from Python with Pool(cluster=NAME) or Pool(connection=PATH).",
    )
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)

    cluster = verbs.add_parser(
        "cluster", help="start, stop or list clusters (a controller and local engines)", description="Manage clusters."
    )
    actions = cluster.add_subparsers(dest="action", metavar="ACTION", required=True)
    start = actions.add_parser(
        "start",
        help="start a controller and N local engines",
        description="Start a controller and N local engines. Without --daemon, they run until Ctrl-C;"
        " with it, this command returns once the engines are up and the cluster runs in the background"
        " until `zpool cluster stop`.",
    )
    start.add_argument(
        "-n",
        "--engines",
        type=int,
        default=None,
        help=f"engines (default: {_usable_cpus()}, the usable CPUs): local ones, or with --launcher mpi or slurm,"
        " those it starts (with --launcher ssh, local ones besides: default none)",
    )
    start.add_argument("--name", default=DEFAULT_NAME, help=DEFAULT_HELP)
    start.add_argument("--daemon", action="store_true", help="run in the background; return once the engines are up")
    start.add_argument("--log-level", default="WARNING", help="the cluster's log level (default: %(default)s)")
    _add_db_arguments(start)
    _add_network_arguments(start)
    ControllerSettings.add_arguments(start)
    stop = actions.add_parser(
        "stop",
        help="stop a cluster and remove its folder",
        description="Ask the cluster's controller to shut down (its engines with it), end it if it does not,"
        " and remove the cluster's folder; a stale folder (its controller gone) is only cleaned.",
    )
    stop.add_argument("--name", default=DEFAULT_NAME, help=DEFAULT_HELP)
    stop.add_argument(
        "--keep-db",
        action="store_true",
        help="keep the task database (tasks.db) in the folder: the next start with this name uses it again",
    )
    actions.add_parser(
        "list", help="list the clusters and their state", description="List the clusters and their state."
    )

    status = verbs.add_parser(
        "status",
        help="show a running cluster's engines, clients and task database",
        description="Show a running cluster's engines (pid, host, uptime, tasks running, queued and done,"
        " CPU use), its clients' tasks (queued, running, completed, failed) and its task database.",
    )
    status.add_argument("--name", default=DEFAULT_NAME, help=DEFAULT_HELP)
    status.add_argument(
        "--watch",
        nargs="?",
        type=float,
        const=2.0,
        default=None,
        metavar="SECONDS",
        help="show it again every SECONDS (default 2) until Ctrl-C",
    )

    controller = verbs.add_parser(
        "controller",
        help="run a controller in the foreground (engines join with `zpool engine`)",
        description="Run a controller in the foreground, until Ctrl-C or `zpool cluster stop`. Engines join it"
        " with `zpool engine --name NAME`; --engines N also starts N local engines.",
    )
    controller.add_argument("--name", default=DEFAULT_NAME, help=DEFAULT_HELP)
    controller.add_argument("--engines", type=int, default=0, help="local engines to start too (default: none)")
    controller.add_argument("--log-level", default="WARNING", help="the cluster's log level (default: %(default)s)")
    _add_db_arguments(controller)
    _add_network_arguments(controller)
    ControllerSettings.add_arguments(controller)

    engine = verbs.add_parser(
        "engine",
        help="run one engine in the foreground, joining a running cluster",
        description="Run one engine in the foreground, joining a running cluster; it takes tasks at once,"
        " and exits when the controller shuts down or stops answering.",
    )
    where = engine.add_mutually_exclusive_group()
    where.add_argument("--name", default=None, help=f"the cluster's name (default: {DEFAULT_NAME})")
    where.add_argument("--connection-file", default=None, help="the cluster's connection file (instead of --name)")
    engine.add_argument(
        "--log-level", default="WARNING", help="log level of the engine's messages (default: %(default)s)"
    )
    engine.add_argument(
        "--reconnect-timeout",
        type=float,
        default=ENGINE_RECONNECT_S,
        metavar="SECONDS",
        help="how long to wait for a controller that stopped answering to come back (it is started again"
        " with `zpool cluster start` at the same addresses), registering again; 0: exit at once"
        " (default: %(default)s)",
    )
    return p


def _ports(text: str) -> list[int]:
    try:
        ports = [int(p) for p in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--ports takes three ports, as 5801,5802,5803, not {text!r}") from None
    if len(ports) != 3:
        raise argparse.ArgumentTypeError(f"--ports takes three ports (client, engine, heartbeat), not {text!r}")
    return ports


def _add_network_arguments(p: argparse.ArgumentParser) -> None:
    net = p.add_argument_group(
        "network", "By default a cluster listens on private Unix sockets, for this machine only."
    )
    net.add_argument(
        "--ip",
        default=None,
        help="listen on TCP at this address instead, for engines and clients on other machines",
    )
    net.add_argument(
        "--ports", type=_ports, default=None, help="with --ip: the client, engine and heartbeat ports (default: free)"
    )
    net.add_argument(
        "--location",
        default=None,
        help="with --ip: the address or name the others reach this machine at, if not --ip (NAT, 0.0.0.0)",
    )
    net.add_argument(
        "--insecure",
        action="store_true",
        help="with --ip: do NOT encrypt (CURVE is on for every address but loopback); for trusted networks only",
    )
    launch = p.add_argument_group(
        "launchers",
        "Engines on other machines, started through ssh, MPI or Slurm; they connect back to --ip (docs/launchers.md).",
    )
    launch.add_argument(
        "--launcher",
        choices=("local", "ssh", "mpi", "slurm"),
        default="local",
        help="where engines run: local (this machine), ssh (on --hosts), mpi (one mpiexec of -n ranks)"
        " or slurm (one sbatch job of -n tasks); all but local need --ip",
    )
    launch.add_argument("--hosts", default=None, help="ssh: HOST:N,HOST:N (N engines on each)")
    launch.add_argument("--ssh", default="ssh", help="ssh: the ssh command and its options (default: ssh)")
    launch.add_argument(
        "--mpiexec", default="mpiexec", help="mpi: the mpiexec command and its options (-n is added; default: mpiexec)"
    )
    launch.add_argument("--account", default=None, help="slurm: sbatch --account")
    launch.add_argument("--partition", default=None, help="slurm: sbatch --partition")
    launch.add_argument("--time", default=None, help="slurm: sbatch --time (the job's time limit, as 1:00:00)")
    launch.add_argument(
        "--extra", default="", help="slurm: more sbatch options, as they are: --extra='--nodes=2 --mem=4G'"
    )
    launch.add_argument(
        "--srun", default="", help="slurm: options of the srun that runs the engines: --srun=--mpi=pmix (for mpi4py)"
    )
    launch.add_argument(
        "--pending-timeout",
        type=float,
        default=None,
        help="slurm: seconds the job may wait in the queue before it is cancelled and reported (default: 600)",
    )
    launch.add_argument("--sbatch", default="sbatch", help="slurm: the sbatch command (squeue, scancel beside it)")
    launch.add_argument(
        "--remote-python",
        default="python3",
        help="ssh, mpi, slurm: the Python on the hosts, with zpool installed (default: python3)",
    )


def _launcher(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Launcher | None:
    """The launcher the options describe (None: local engines only); exits with a usage error if they are wrong."""
    from zpool.launchers import MPI, SLURM_PENDING_TIMEOUT_S, SSH, Slurm

    kind = args.launcher
    if args.hosts and kind != "ssh":
        parser.error("--hosts goes with --launcher ssh (for mpi, pass hosts in --mpiexec, e.g. '--host a:4,b:4')")
    if kind == "local":
        return None
    if not args.ip:
        parser.error(f"--launcher {kind} needs --ip: this machine's address, which the engines connect to")
    try:
        if kind == "ssh":
            if not args.hosts:
                parser.error("--launcher ssh needs --hosts HOST:N,HOST:N")
            return SSH(args.hosts, ssh=args.ssh, python=args.remote_python)
        n = _usable_cpus() if args.engines is None else args.engines
        args.engines = 0  # (the engines are the launcher's, none local)
        if kind == "mpi":
            return MPI(n, mpiexec=args.mpiexec, python=args.remote_python)
        pending = SLURM_PENDING_TIMEOUT_S if args.pending_timeout is None else args.pending_timeout
        return Slurm(
            n,
            account=args.account,
            partition=args.partition,
            time=args.time,
            extra=args.extra,
            srun=args.srun,
            pending_timeout=pending,
            python=args.remote_python,
            sbatch=args.sbatch,
        )
    except ValueError as exc:
        parser.error(str(exc))
        raise  # (parser.error exits)


def _add_db_arguments(p: argparse.ArgumentParser) -> None:
    db = p.add_mutually_exclusive_group()
    db.add_argument(
        "--db",
        default="",
        metavar="PATH",
        help="the task database, an SQLite file (default: tasks.db in the cluster's folder)",
    )
    db.add_argument(
        "--no-db", action="store_true", help="keep no task database (results go only to the pool that submitted them)"
    )
    p.add_argument(
        "--db-max-mb",
        type=int,
        default=None,
        help="megabytes of calls and results the task database keeps; the oldest finished records are removed"
        " beyond (default: 1024)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``zpool`` command with `argv` (default: the process's arguments); return its exit status."""
    from zpool.error import ZPoolError

    parser = _parser()
    args = parser.parse_args(argv)
    if args.verb != "engine":
        # SIGTERM stops a cluster running in the foreground as Ctrl-C does, at any moment (a cluster
        # half started is stopped too).
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        if args.verb == "cluster":
            if args.action == "start":
                return _start(parser, args, foreground=not args.daemon)
            if args.action == "stop":
                return _stop(args)
            return _list()
        if args.verb == "controller":
            return _start(parser, args, foreground=True)
        if args.verb == "status":
            return _status(parser, args)
        return _engine(args)
    except (ZPoolError, ValueError) as exc:
        print(f"zpool: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130  # (interrupted while starting: what was started is stopped)


def _settings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> ControllerSettings:
    try:
        return ControllerSettings.from_args(args).validate()
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
        raise  # (parser.error exits)


def _start(parser: argparse.ArgumentParser, args: argparse.Namespace, foreground: bool) -> int:
    from zpool._process import describe_exit
    from zpool.standalone import start_cluster, stop_cluster

    launcher = _launcher(parser, args)
    if args.engines is None:
        args.engines = 0 if args.launcher == "ssh" else _usable_cpus()
    if args.engines < 0:
        parser.error(f"the number of engines must be at least 0, not {args.engines}")
    settings = _settings(parser, args)
    if args.db_max_mb is not None and args.db_max_mb < 1:
        parser.error(f"--db-max-mb must be at least 1, not {args.db_max_mb}")
    db = None if args.no_db else (os.path.abspath(args.db) if args.db else "")
    if args.insecure:
        print(
            "zpool: WARNING: --insecure: the cluster's traffic is not encrypted; anyone on the network can read"
            " it. Use it on a trusted network only.",
            file=sys.stderr,
        )
    state, proc = start_cluster(
        args.name,
        args.engines,
        settings,
        args.log_level,
        db=db,
        db_max_mb=args.db_max_mb,
        ip=args.ip,
        ports=args.ports,
        location=args.location,
        insecure=args.insecure,
        launcher=launcher,
    )
    print(
        f"cluster {state.name!r}: controller pid {state.controller_pid}, {state.engines} engine(s);"
        f" attach with Pool(cluster={state.name!r}) or Pool(connection={state.connection_file!r})",
        flush=True,
    )
    if not foreground:
        return 0
    # In the foreground: until Ctrl-C (or SIGTERM, or `zpool cluster stop` from elsewhere).
    try:
        while proc.poll() is None:
            time.sleep(0.2)
    except KeyboardInterrupt:
        print(f"\nstopping cluster {state.name!r}", file=sys.stderr, flush=True)
        _, kept = stop_cluster(state.name)
        if kept:
            print(f"its log is kept in {kept}", file=sys.stderr)
        return 0
    if proc.returncode != 0:
        print(
            f"zpool: the controller of cluster {state.name!r} exited with {describe_exit(proc.returncode)};"
            f" its log: {os.path.join(state.folder, 'controller.log')} (zpool cluster stop --name {state.name}"
            " cleans the folder)",
            file=sys.stderr,
        )
        return 1
    if os.path.isdir(state.folder):
        stop_cluster(state.name)  # (it was shut down, by a pool's shutdown_cluster: its folder goes too)
    return 0


def _status(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from zpool.standalone import CpuMeter, cluster_status, format_status

    if args.watch is not None and not args.watch > 0:
        parser.error(f"--watch takes a positive number of seconds, not {args.watch}")
    meter = CpuMeter()
    meter.look(cluster_status(args.name))  # (CPU use is measured between two looks)
    time.sleep(0.2 if args.watch is None else 0.0)
    clear = sys.stdout.isatty()
    try:
        while True:
            status = cluster_status(args.name)
            text = format_status(args.name, status, meter.look(status))
            if args.watch is None:
                print(text)
                return 0
            print(("\x1b[H\x1b[2J" if clear else "") + time.strftime("%H:%M:%S ") + text + "\n", flush=True)
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # (zpool status --watch | head)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error as Python exits
        return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # (SIGTERM stops a foreground cluster as Ctrl-C does)


def _stop(args: argparse.Namespace) -> int:
    from zpool.standalone import stop_cluster

    state, kept = stop_cluster(args.name, keep_db=args.keep_db)
    done = "stopped" if state.running else "was not running"
    print(f"cluster {state.name!r} {done}: its folder is removed{' but for its task database' if args.keep_db else ''}")
    if kept:
        print(f"its log is kept in {kept}")
    return 0


def _list() -> int:
    from zpool.standalone import home, list_clusters

    states = list_clusters()
    if not states:
        print(f"no clusters (in {os.path.join(home(), 'clusters')}); start one with: zpool cluster start -n N --daemon")
        return 0
    rows = [("NAME", "STATE", "CONTROLLER PID", "ENGINES", "CONNECTION FILE")]
    for s in states:
        state = "running" if s.running else ("stale" if s.stale else "stopped")
        rows.append(
            (
                s.name,
                state,
                str(s.controller_pid or "-"),
                "-" if s.engines is None else str(s.engines),
                s.connection_file if s.running else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def _engine(args: argparse.Namespace) -> int:
    from zpool.engine.__main__ import main as engine_main
    from zpool.error import ZPoolError
    from zpool.standalone import DEFAULT_NAME, connection_path, state_of

    path = args.connection_file
    if path is None:
        name = args.name or DEFAULT_NAME
        state = state_of(name)
        if not state.running:
            why = "its controller is gone (a stale folder)" if state.stale else "it is not running"
            raise ZPoolError(
                f"cannot join cluster {name!r}: {why}; start it with: zpool cluster start --name {name} --daemon"
                f" (or zpool controller --name {name})"
            )
        path = connection_path(name)
    elif not os.path.exists(path):
        raise ZPoolError(f"no connection file {path}: pass that of a running cluster, or --name NAME")
    if args.reconnect_timeout < 0:
        raise ValueError(f"--reconnect-timeout must be at least 0, not {args.reconnect_timeout}")
    return engine_main(
        ["--connection-file", path, "--log-level", args.log_level, "--reconnect-timeout", str(args.reconnect_timeout)]
    )


if __name__ == "__main__":
    sys.exit(main())
