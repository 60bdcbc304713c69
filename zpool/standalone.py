"""Standalone clusters: a controller and engines that outlive any script, which Pools attach to by name.

Started by the ``zpool`` command (:mod:`zpool.cli`), each cluster has a
folder of its own, private to the user (mode 0700)::

    $ZPOOL_HOME/clusters/NAME/        ($ZPOOL_HOME: ~/.zpool by default)
        cluster.json      the connection file (mode 0600): addresses, key, controller pid
        controller.log    what the controller and the engines it started logged
        tasks.db          the task database (zpool.controller.taskdb; unless --db names another file or --no-db)

The sockets themselves (``ipc://`` endpoints, the engines' direct sockets
and run slots) live in a short private directory of their own, named in
``cluster.json``'s addresses, because a Unix socket's path holds at most
107 bytes (:func:`zpool.cluster.make_runtime_dir`); the controller removes
it when it exits, and ``cluster.json`` with it, so a folder whose
``cluster.json`` names a controller that is gone is *stale*: reported as
such, and cleaned by ``zpool cluster stop``.

:class:`AttachedCluster` is what a ``Pool(cluster=NAME)`` or
``Pool(connection=PATH)`` holds in place of the hidden cluster: it reads the
connection file and watches the controller, and never stops it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Sequence

import psutil
import zmq

from zpool import _shm
from zpool._process import caller_path, describe_exit, kill_process_group, python_command
from zpool._settings import ControllerSettings
from zpool._transport import host_id, is_tcp, member_socket
from zpool.cluster import (
    CURVE_KEY_FILE,
    ENDPOINTS,
    EngineProcess,
    check_tcp,
    engines_of,
    make_runtime_dir,
    tcp_connection,
)
from zpool.error import BrokenPoolError, ZPoolError
from zpool.launchers import Launcher, Slurm
from zpool.protocol import ConnectionInfo, MsgType, Session, new_key, recv_frames, send_frames

__all__ = [
    "DEFAULT_NAME",
    "AttachedCluster",
    "ClusterState",
    "CpuMeter",
    "ask",
    "cluster_folder",
    "cluster_status",
    "connection_path",
    "format_status",
    "home",
    "list_clusters",
    "start_cluster",
    "state_of",
    "stop_cluster",
    "wait_gone",
]

logger = logging.getLogger(__name__)

DEFAULT_NAME = "default"
CONNECTION_FILE = "cluster.json"
LOG_FILE = "controller.log"
DB_FILE = "tasks.db"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# How long `zpool cluster start` waits for the controller to answer and its engines to be up, in seconds.
READY_TIMEOUT_S = 120.0
# How long `zpool cluster stop` waits for the controller to exit after asking it to, before ending it.
STOP_TIMEOUT_S = 10.0


def home() -> str:
    """Where zpool keeps its standalone clusters' folders: ``$ZPOOL_HOME``, else ``~/.zpool``."""
    return os.path.abspath(os.environ.get("ZPOOL_HOME") or os.path.join(os.path.expanduser("~"), ".zpool"))


def cluster_folder(name: str) -> str:
    """The folder of cluster `name` (not created here).

    Raises
    ------
    ValueError
        If `name` is not 1 to 64 letters, digits, ``_``, ``.`` or ``-``,
        starting with a letter or digit.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"a cluster's name is 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit;"
            f" not {name!r}"
        )
    return os.path.join(home(), "clusters", name)


def connection_path(name: str) -> str:
    """The connection file of cluster `name`."""
    return os.path.join(cluster_folder(name), CONNECTION_FILE)


@dataclass(frozen=True)
class ClusterState:
    """What is known of a standalone cluster's folder."""

    name: str
    folder: str
    connection_file: str
    controller_pid: int | None
    running: bool
    # Engines taking tasks (None: the controller did not answer, or is not running).
    engines: int | None = None

    @property
    def stale(self) -> bool:
        """A connection file whose controller is gone (killed, or its host restarted)."""
        return not self.running and os.path.exists(self.connection_file)


def _is_controller(pid: int | None) -> bool:
    """Whether `pid` is a running zpool controller (not a zombie, nor another program that got its pid)."""
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return "zpool.controller" in " ".join(proc.cmdline())
    except psutil.Error:
        return False


def state_of(name: str, query: bool = False) -> ClusterState:
    """The state of cluster `name`'s folder; with `query`, ask a running controller how many engines it has."""
    folder = cluster_folder(name)
    path = os.path.join(folder, CONNECTION_FILE)
    pid: int | None = None
    info: ConnectionInfo | None = None
    try:
        info = ConnectionInfo.read(path)
        pid = info.controller_pid
    except (OSError, ValueError):
        pass
    running = _is_controller(pid)
    engines = None
    if running and query and info is not None:
        try:
            engines = len(ask(info, MsgType.QUEUE_REQUEST, {"brief": True}, timeout=2.0)["engines"])
        except ZPoolError:
            engines = None
    return ClusterState(name, folder, path, pid, running, engines)


def list_clusters(query: bool = True) -> list[ClusterState]:
    """Every cluster that has a folder, by name."""
    root = os.path.join(home(), "clusters")
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return []
    return [
        state_of(name, query) for name in names if _NAME.fullmatch(name) and os.path.isdir(os.path.join(root, name))
    ]


def ask(info: ConnectionInfo, msg_type: MsgType, content: dict[str, Any] | None = None, timeout: float = 5.0) -> Any:
    """Send the controller of `info` one signed request and return its reply's content.

    Raises
    ------
    ZPoolError
        If no valid reply comes within `timeout` seconds.
    """
    from zpool.protocol import encode

    session = Session(info.key)
    wanted = msg_type.value.replace("_request", "_reply")
    ctx: zmq.Context[Any] = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    member_socket(sock, info.client, info.curve)
    try:
        sock.connect(info.client)
        send_frames(sock, session.build(msg_type, content=encode(content or {})))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not sock.poll(int(left * 1000) + 1):
                raise ZPoolError(f"the controller at {info.client} did not answer within {timeout:g} s")
            try:
                msg = session.unpack(recv_frames(sock))
            except ZPoolError:
                continue
            if msg.msg_type == wanted:
                return msg.content
    finally:
        sock.close()


def _controller_argv(
    runtime: str,
    folder: str,
    n_engines: int,
    settings: ControllerSettings,
    log_level: str,
    db: str | None,
    db_max_mb: int | None,
) -> list[str]:
    db_args = [] if db is None else ["--db", db]
    if db is not None and db_max_mb is not None:
        db_args += ["--db-max-mb", str(db_max_mb)]
    return python_command(
        "zpool.controller",
        [
            "--connection-file",
            os.path.join(runtime, CONNECTION_FILE),
            "--engines",
            str(n_engines),
            *settings.to_argv(),
            "--log-file",
            os.path.join(folder, LOG_FILE),
            "--log-level",
            log_level,
            "--remove-dir",
            runtime,
            "--remove-file",
            os.path.join(folder, CONNECTION_FILE),
            "--engine-output",
            "forward",
            *db_args,
        ],
        caller_path(),
    )


def start_cluster(
    name: str,
    n_engines: int,
    settings: ControllerSettings | None = None,
    log_level: str = "WARNING",
    ready_timeout: float = READY_TIMEOUT_S,
    db: str | None = "",
    db_max_mb: int | None = None,
    ip: str | None = None,
    ports: Sequence[int] | None = None,
    location: str | None = None,
    insecure: bool = False,
    launcher: Launcher | None = None,
) -> tuple[ClusterState, subprocess.Popen[bytes]]:
    """Start cluster `name`: a controller with `n_engines` local engines, in a session of its own.

    Returns once the controller answers and `n_engines` engines take
    tasks. The controller's own output goes to its log. `db`: its task
    database ("": ``tasks.db`` in the cluster's folder; None: none).

    A cluster whose controller is gone (*stale*: it was killed) starts
    again at the same addresses with the same key, so that engines started
    by hand (``zpool engine``) join the new controller, and with the same
    task database, whose records survive.

    With `ip`, the controller listens on TCP at that address (for engines
    on other machines), at `ports` (client, engine, heartbeat; default:
    free ones), and the connection file names `location` (default: `ip`)
    as the address to reach it at. Unless the address is a loopback one or
    `insecure` is given, connections are encrypted and authenticated with
    CURVE (:mod:`zpool._transport`); the controller's secret key is kept in
    ``controller.key`` (mode 0600) in the cluster's folder.

    With a `launcher` (:mod:`zpool.launchers`: ssh, MPI, Slurm; needs
    `ip`), the controller also starts the launcher's engines elsewhere
    (:mod:`zpool.controller.remote`); this returns once they too take
    tasks, or raises as soon as the launcher says none will come (a
    refused Slurm job, say).

    Raises
    ------
    ZPoolError
        If a cluster of that name is running, or the controller exits or
        does not get its engines up within `ready_timeout` seconds (it is
        stopped then; its log is kept and named).
    """
    settings = (settings or ControllerSettings()).validate()
    check_tcp(ip, ports, location)
    remote_engines = 0
    if launcher is not None:
        remote_engines = launcher.engines
        if ip is None:
            raise ValueError("engines on other machines need a cluster on TCP: add --ip ADDRESS (this machine's)")
        if isinstance(launcher, Slurm):  # (a job may wait in the queue: the launcher's own bound applies)
            ready_timeout = max(ready_timeout, launcher.pending_timeout + ready_timeout)
    if n_engines < 0:
        raise ValueError(f"the number of engines must be at least 0, not {n_engines}")
    state = state_of(name)
    if state.running:
        raise ZPoolError(
            f"cluster {name!r} is running already (controller pid {state.controller_pid}); attach to it with"
            f" Pool(cluster={name!r}), or stop it first: zpool cluster stop --name {name}"
        )
    folder = state.folder
    os.makedirs(folder, mode=0o700, exist_ok=True)
    os.chmod(folder, 0o700)
    info = _restarted(state) if state.stale else None
    key_file = os.path.join(folder, CURVE_KEY_FILE)
    if info is not None:
        if is_tcp(info.client):
            runtime = _tcp_runtime(folder)
            ip = ip or info.client[len("tcp://") :].rsplit(":", 1)[0].strip("[]")
        else:
            runtime = os.path.dirname(info.client[len("ipc://") :])
        logger.warning("cluster %r: its controller (pid %s) is gone; starting it again", name, state.controller_pid)
    else:
        if state.stale:
            logger.warning("cluster %r: removing the stale connection file of pid %s", name, state.controller_pid)
        _remove(state.connection_file)
        _remove(key_file)
        runtime = make_runtime_dir() if ip is None else _tcp_runtime(folder)
        if ip is None:
            base = f"ipc://{runtime}"
            client, engine, heartbeat = (f"{base}/{endpoint}" for endpoint in ENDPOINTS)
            info = ConnectionInfo(
                client,
                engine,
                heartbeat,
                new_key(),
                shm_prefix=f"zpool-{os.urandom(6).hex()}" if _shm.available() else None,
            )
        else:
            info = tcp_connection(ip, ports, location, insecure, key_file)
    info = info._replace(controller_pid=None)
    info.write(os.path.join(runtime, CONNECTION_FILE))
    db_path = os.path.join(folder, DB_FILE) if db == "" else db
    log_path = os.path.join(folder, LOG_FILE)
    os.close(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    # What the controller itself writes (a crash before its log is set up) goes to its log too: it
    # outlives this command, whose terminal (or pipe) it must not hold.
    with open(log_path, "ab") as log:
        try:
            proc = subprocess.Popen(
                _controller_argv(runtime, folder, n_engines, settings, log_level, db_path, db_max_mb)
                + (["--ip", ip] if ip else [])
                + (["--curve-secret-file", key_file] if info.curve is not None else [])
                + (["--launcher", json.dumps(launcher.to_spec())] if launcher is not None else []),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                close_fds=True,
            )
        except OSError:
            shutil.rmtree(runtime, ignore_errors=True)
            raise
    path = os.path.join(folder, CONNECTION_FILE)
    try:
        info = info._replace(controller_pid=proc.pid)
        info.write(path)
        _wait_ready(info, proc, n_engines + remote_engines, ready_timeout, log_path)
    except BaseException as exc:  # Ctrl-C included
        _, kept = stop_cluster(name, timeout=2.0)
        if isinstance(exc, ZPoolError) and kept:
            raise ZPoolError(str(exc).replace(log_path, kept)) from None  # (where the log is now)
        raise
    return ClusterState(name, folder, path, proc.pid, True, n_engines + remote_engines), proc


def _tcp_runtime(folder: str) -> str:
    """The controller's own folder of a cluster on TCP (no Unix sockets: in the cluster's folder; mode 0700)."""
    runtime = os.path.join(folder, "run")
    os.makedirs(runtime, mode=0o700, exist_ok=True)
    os.chmod(runtime, 0o700)
    return runtime


def _restarted(state: ClusterState) -> ConnectionInfo | None:
    """The connection of a stale cluster, to start its controller again where it was; None if it cannot be."""
    try:
        info = ConnectionInfo.read(state.connection_file)
    except (OSError, ValueError):
        return None
    if is_tcp(info.client):  # (its keys: controller.key beside it, if it uses CURVE)
        has_key = os.path.exists(os.path.join(state.folder, CURVE_KEY_FILE))
        return info if has_key or info.curve is None else None
    if not info.client.startswith("ipc://"):
        return None
    runtime = os.path.dirname(info.client[len("ipc://") :])
    if not os.path.basename(runtime).startswith("zpool-"):
        return None
    try:
        os.makedirs(runtime, mode=0o700, exist_ok=True)
        os.chmod(runtime, 0o700)
        for entry in (*ENDPOINTS, CONNECTION_FILE):  # the dead controller's sockets, bound again
            _remove(os.path.join(runtime, entry))
    except OSError:
        return None
    if info.shm_prefix:
        _shm.remove_all(info.shm_prefix)
    return info


def _wait_ready(info: ConnectionInfo, proc: subprocess.Popen[bytes], n: int, timeout: float, log_path: str) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer from the controller"
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            raise ZPoolError(f"the controller exited with {describe_exit(code)} while starting; its log: {log_path}")
        try:
            status = ask(info, MsgType.QUEUE_REQUEST, {"brief": True}, timeout=1.0)
        except ZPoolError:
            continue
        if status.get("broken"):
            raise ZPoolError(f"no engine can start: {status['broken']}; the cluster's log: {log_path}")
        up = len(status.get("engines", ()))
        if up >= n:
            return
        last = f"{up} of {n} engines up"
        time.sleep(0.05)
    raise ZPoolError(f"the cluster did not get ready within {timeout:g} s ({last}); its log: {log_path}")


def stop_cluster(name: str, timeout: float = STOP_TIMEOUT_S, keep_db: bool = False) -> tuple[ClusterState, str | None]:
    """Stop cluster `name` and remove its folder (`keep_db`: all but its task database); a stale folder is only cleaned.

    The controller is asked to shut down (it ends its engines); if it has
    not exited within `timeout` seconds, its process group is killed.
    Returns the state the cluster was in, and where its log was kept (None:
    removed with the folder). The log is kept, beside the folder, when the
    controller had to be ended, was gone already (stale), or logged errors.

    Raises
    ------
    ZPoolError
        If there is no cluster of that name.
    """
    state = state_of(name)
    if not os.path.isdir(state.folder):
        raise ZPoolError(f"there is no cluster {name!r} (no folder {state.folder}); see: zpool cluster list")
    info: ConnectionInfo | None = None
    try:
        info = ConnectionInfo.read(state.connection_file)
    except (OSError, ValueError):
        pass
    clean = False
    if state.running and info is not None and state.controller_pid:
        try:
            ask(info, MsgType.SHUTDOWN_REQUEST, timeout=min(timeout, 5.0))
        except ZPoolError as exc:
            logger.warning("cluster %r: %s; ending the controller", name, exc)
        clean = _end(state.controller_pid, timeout)
    if info is not None:
        # What a controller killed with SIGKILL could not remove: its sockets' folder and segments.
        endpoint = info.client
        if endpoint.startswith("ipc://"):
            runtime = os.path.dirname(endpoint[len("ipc://") :])
            if os.path.basename(runtime).startswith("zpool-"):
                shutil.rmtree(runtime, ignore_errors=True)
        if info.shm_prefix:
            _shm.remove_all(info.shm_prefix)
    kept = None
    log = os.path.join(state.folder, LOG_FILE)
    if os.path.exists(log) and (not clean or _has_errors(log)):
        kept = f"{state.folder}-{time.strftime('%Y%m%d-%H%M%S')}.log"
        try:
            os.replace(log, kept)
        except OSError:
            kept = None
    if keep_db and os.path.exists(os.path.join(state.folder, DB_FILE)):
        # (tasks.db, and its -wal and -shm files after a controller killed mid-write)
        for entry in os.listdir(state.folder):
            if not entry.startswith(DB_FILE):
                path = os.path.join(state.folder, entry)
                shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else _remove(path)
    else:
        shutil.rmtree(state.folder, ignore_errors=True)
    return state, kept


def _has_errors(log: str) -> bool:
    try:
        with open(log, errors="replace") as f:
            return any(" ERROR " in line or " CRITICAL " in line or "Traceback" in line for line in f)
    except OSError:
        return False


def wait_gone(pid: int | None, timeout: float) -> bool:
    """Wait up to `timeout` s for controller `pid` of this host to exit; whether it did (True if unknown).

    (Not by its command line, which a process that is exiting already has no more.)
    """
    if not pid or not _is_controller(pid):
        return True
    try:
        proc = psutil.Process(pid)
    except psutil.Error:
        return True
    deadline = time.monotonic() + timeout
    while True:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.Error:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _end(pid: int, timeout: float) -> bool:
    """Wait up to `timeout` s for controller `pid` to exit, then SIGTERM, then SIGKILL its group; whether it left."""
    if wait_gone(pid, timeout):
        return True
    logger.warning("controller pid %d did not exit within %g s; ending it", pid, timeout)
    try:
        os.killpg(pid, signal.SIGTERM)
    except OSError:
        pass
    if not wait_gone(pid, 3.0):
        kill_process_group(pid)
    return False


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class AttachedCluster:
    """A running cluster a Pool attached to: where it is, and whether it is still there; never stopped here.

    Parameters
    ----------
    path : str
        Its connection file.
    name : str, optional
        Its name, when attached to by name (for messages).
    """

    def __init__(self, path: str, name: str | None = None) -> None:
        self.path = os.path.abspath(path)
        self.name = name
        self.info: ConnectionInfo | None = None
        self.log_path = os.path.join(os.path.dirname(self.path), LOG_FILE)
        self.keep_log = True

    def _what(self) -> str:
        return f"cluster {self.name!r}" if self.name else f"the cluster of {self.path}"

    def _how_to_start(self) -> str:
        if self.name:
            return f"start it with: zpool cluster start --name {self.name} -n N --daemon"
        return "start it (zpool cluster start), or pass the connection file of a running cluster"

    def start(self) -> ConnectionInfo:
        """Read the connection file; return where to connect.

        Raises
        ------
        BrokenPoolError
            If there is no connection file, it is malformed, or it names a
            controller of this host that is gone (a stale file).
        """
        try:
            info = ConnectionInfo.read(self.path)
        except FileNotFoundError:
            raise BrokenPoolError(f"{self._what()} is not running (no {self.path}); {self._how_to_start()}") from None
        except (OSError, ValueError) as exc:
            raise BrokenPoolError(f"cannot read the connection file of {self._what()}: {exc}") from None
        if info.controller_pid is not None and not _is_controller(info.controller_pid):
            raise BrokenPoolError(
                f"{self._what()} is not running: its connection file {self.path} names controller pid"
                f" {info.controller_pid}, which is gone (a stale file: the controller was killed, or the machine"
                f" restarted); clean it with zpool cluster stop{' --name ' + self.name if self.name else ''},"
                f" then {self._how_to_start()}"
            )
        self.info = info
        return info

    def failure(self) -> str | None:
        """Why the controller is gone, or None while it runs (or cannot be watched from here)."""
        info = self.info
        if info is None or info.controller_pid is None or _is_controller(info.controller_pid):
            return None
        return f"the controller of {self._what()} (pid {info.controller_pid}) is gone; see its log: {self.log_path}"

    def engine_processes(self) -> list[EngineProcess]:
        """The engines the controller started on this host (its children), oldest first."""
        info = self.info
        return [] if info is None or not info.controller_pid else engines_of(info.controller_pid)

    def pids(self) -> list[int]:
        """No process of an attached cluster belongs to the pool."""
        return []

    def stop(self, timeout: float = 0.0) -> None:
        """Nothing: the cluster outlives the pools attached to it (see ``Pool.shutdown_cluster``)."""


# -- zpool status -------------------------------------------------------------


def cluster_status(name: str, timeout: float = 5.0) -> dict[str, Any]:
    """What the controller of running cluster `name` says of its engines, clients and task database.

    Raises
    ------
    ZPoolError
        If the cluster is not running, or its controller does not answer.
    """
    state = state_of(name)
    if not state.running:
        why = f"its controller (pid {state.controller_pid}) is gone" if state.stale else "it is not running"
        raise ZPoolError(f"cluster {name!r}: {why}; start it with: zpool cluster start --name {name} --daemon")
    info = ConnectionInfo.read(state.connection_file)
    status: dict[str, Any] = ask(info, MsgType.QUEUE_REQUEST, {"detail": True}, timeout=timeout)
    status["controller_pid"] = state.controller_pid
    return status


class CpuMeter:
    """CPU use of this host's engine processes, between two looks (``psutil``'s ``cpu_percent``)."""

    def __init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}
        self.host = host_id()

    def look(self, status: dict[str, Any]) -> dict[int, float]:
        """Percent of one CPU each engine of this host used since the last look (none the first time)."""
        out: dict[int, float] = {}
        seen = set()
        for engine in status.get("engine_detail", []):
            pid = engine.get("pid")
            if not isinstance(pid, int) or engine.get("host_id") != self.host:  # (a pid of another machine)
                continue
            seen.add(pid)
            proc = self._procs.get(pid)
            try:
                if proc is None:
                    self._procs[pid] = proc = psutil.Process(pid)
                    proc.cpu_percent(None)  # (the first call starts the count)
                else:
                    out[pid] = proc.cpu_percent(None)
            except psutil.Error:
                self._procs.pop(pid, None)
        for pid in set(self._procs) - seen:
            del self._procs[pid]
        return out


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def format_status(name: str, status: dict[str, Any], cpu: dict[int, float] | None = None) -> str:
    """``zpool status``'s text: the cluster, a line per engine, a line per client, the task database."""
    now = float(status.get("time") or time.time())
    engines = status.get("engine_detail", [])
    queues = status.get("engines", {})
    lines = [
        f"cluster {name!r}: controller pid {status.get('controller_pid')}, up"
        f" {_duration(now - float(status.get('controller_started') or now))}, scheme {status.get('scheme')},"
        f" {sum(1 for e in engines if e.get('ready'))} engine(s) taking tasks"
        + (f", {status['starting']} starting" if status.get("starting") else "")
    ]
    if status.get("launcher"):
        lines.append(f"launcher: {status['launcher']}")
    if status.get("broken"):
        lines.append(f"no engine can start: {status['broken']}")
    ranked = any(e.get("rank") is not None for e in engines)
    if engines:
        rank = ("RANK",) if ranked else ()
        rows: list[tuple[str, ...]] = [
            ("ENGINE", "PID", "HOST", *rank, "UPTIME", "RUNNING", "QUEUED", "COMPLETED", "FAILED", "CPU%")
        ]
        for e in engines:
            queue = queues.get(str(e["id"]), {})
            pid = e.get("pid")
            load = (cpu or {}).get(pid) if isinstance(pid, int) else None
            rows.append(
                (
                    str(e["id"]),
                    str(pid or "-"),
                    str(e.get("host") or "-"),
                    *((str(e.get("rank", "-")),) if ranked else ()),
                    _duration(now - float(e.get("registered") or now)),
                    str(queue.get("running", 0)) if e.get("ready") else "starting",
                    str(queue.get("queued", 0)),
                    str(queue.get("completed", 0)),
                    str(queue.get("failed", 0)),
                    "-" if load is None else f"{load:.0f}",
                )
            )
        lines += ["", *_table(rows)]
    else:
        lines += ["", f"no engines: start some with `zpool engine --name {name}`"]
    clients = status.get("clients", {})
    db = status.get("db")
    recorded = (db or {}).get("clients", {})
    if clients or recorded:
        header: tuple[str, ...] = ("CLIENT", "QUEUED", "RUNNING", "COMPLETED", "FAILED")
        if db:
            header += ("RECORDS",)
        rows = [header]  # (the same type as the engines')
        for client in sorted(set(clients) | set(recorded)):
            counts = clients.get(client, {})
            row: tuple[str, ...] = (
                client,
                str(counts.get("queued", 0)),
                str(counts.get("running", 0)),
                str(counts.get("completed", 0)),
                str(counts.get("failed", 0)),
            )
            if db:
                row += (str(sum(recorded.get(client, {}).values())),)
            rows.append(row)
        lines += ["", *_table(rows), "(completed and failed: since the controller started; records: all kept)"]
    waiting = status.get("waiting", 0)
    lines += ["", f"tasks not placed yet: {status.get('unassigned', 0)} ready, {waiting} waiting for dependencies"]
    if db:
        lines.append(
            f"task database: {db['path']}, {db['records']} records, {db['payload_bytes'] / 2**20:.1f} MiB of"
            f" {db['max_bytes'] / 2**20:.0f} MiB" + (f"; last write failed: {db['failed']}" if db.get("failed") else "")
        )
    else:
        lines.append("task database: none (--no-db)")
    return "\n".join(lines)
