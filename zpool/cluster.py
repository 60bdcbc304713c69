"""The hidden local cluster: a controller and its engines as child processes.

:class:`LocalCluster` makes a private directory (mode 0700) holding the
ZeroMQ ``ipc://`` endpoints, the connection file with the random key (mode
0600) and the controller's log, then starts the controller
(``zpool.controller.__main__``) in a session of its own (so a Ctrl-C meant for the caller does not kill the
workers mid-task). The controller starts and supervises the engines, and
exits, ending them, when this process goes away, however it goes.

Engines run with the caller's environment and working directory, and
import from exactly the caller's ``sys.path`` (:func:`zpool._process.python_command`):
whatever the caller imports by name, they can import too, and nothing
else, not even what lies in the working directory unless the caller
imports from there itself.

The endpoints are Unix sockets, whose paths hold at most
:data:`MAX_SOCKET_PATH` bytes: where the temporary directory's path is too
long for that (CI runners, tox and pytest folders, HPC job directories),
the cluster's directory goes in the first short one of ``$XDG_RUNTIME_DIR``,
``/tmp``, ``/var/tmp`` and ``/dev/shm``.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Sequence

import psutil
import zmq

from zpool import _shm
from zpool._output import OUTPUT_LIMIT
from zpool._preload import write_list
from zpool._process import caller_path, describe_exit, kill_process_group, kill_process_tree, python_command
from zpool._settings import ControllerSettings
from zpool._transport import free_ports, is_loopback, new_curve_keys, tcp_address
from zpool.error import BrokenPoolError, ZPoolError
from zpool.launchers import Launcher
from zpool.protocol import ConnectionInfo, new_key, write_frames

__all__ = [
    "ENDPOINTS",
    "ClusterSettings",
    "EngineProcess",
    "LocalCluster",
    "check_tcp",
    "engines_of",
    "make_runtime_dir",
    "tcp_connection",
]

logger = logging.getLogger(__name__)

LOG_TAIL_CHARS = 2000
# Bytes a Unix socket's path may hold (sun_path less its terminating NUL): 107 on Linux, 103 on macOS.
MAX_SOCKET_PATH = 103 if sys.platform == "darwin" else 107
# The controller's CURVE keys (a cluster on TCP), in the cluster's private directory.
CURVE_KEY_FILE = "controller.key"
# The endpoints' names in the cluster's directory; the longest decides whether a directory is short enough.
ENDPOINTS = ("client", "engine", "heartbeat")
# Where the cluster's directory goes when the temporary directory's path is too long, in order.
SHORT_DIRS = ("XDG_RUNTIME_DIR", "/tmp", "/var/tmp", "/dev/shm")


@dataclass(frozen=True)
class ClusterSettings:
    """What a hidden cluster is started with: its engines, and the controller's settings."""

    n_engines: int
    controller: ControllerSettings = field(default_factory=ControllerSettings)
    log_level: str = "WARNING"
    # Serialized call (frames) every engine runs before its first task: the initializer.
    engine_setup: tuple[bytes, ...] = ()
    # Large buffers through shared memory (where the host has /dev/shm).
    shared_memory: bool = True
    # Modules the engines import while idle (zpool._preload).
    preload: tuple[str, ...] = ()
    # What becomes of what the engines print (zpool._output.OUTPUT_MODES), and how much of it per task.
    output: str = "inherit"
    output_limit: int = OUTPUT_LIMIT
    # Engines started elsewhere (zpool.launchers), instead of local ones: the cluster listens on TCP at `ip`
    # (the others reach it at `location`, if not `ip`), with CURVE unless `insecure` or a loopback address.
    launcher: Launcher | None = None
    ip: str | None = None
    location: str | None = None
    insecure: bool = False


class EngineProcess:
    """A local engine process, as ``multiprocessing.Pool._pool`` lists its workers: ``pid``, ``name``, ``is_alive()``.

    For code that reads the standard library's private worker list
    (progress bars, monitoring); see ``docs/migrating.md``.
    """

    def __init__(self, proc: psutil.Process) -> None:
        self._proc = proc
        self.pid: int = proc.pid
        self.name = f"zpool-engine-{proc.pid}"

    def is_alive(self) -> bool:
        try:
            return self._proc.is_running() and self._proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def __repr__(self) -> str:
        return f"<EngineProcess name={self.name!r} pid={self.pid} {'alive' if self.is_alive() else 'ended'}>"


def engines_of(controller_pid: int) -> list[EngineProcess]:
    """The engine processes controller `controller_pid` runs now (its children), oldest first."""
    try:
        children = psutil.Process(controller_pid).children()
    except psutil.Error:
        return []
    procs = []
    for child in children:
        try:
            procs.append((child.create_time(), child.pid, EngineProcess(child)))
        except psutil.Error:
            continue
    return [proc for _, _, proc in sorted(procs, key=lambda item: item[:2])]


class LocalCluster:
    """Start, watch and stop a controller with `n_engines` local engines."""

    def __init__(self, settings: ClusterSettings) -> None:
        self.settings = settings
        self.workdir: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: ConnectionInfo | None = None
        # The cluster's log: beside its directory (which goes when it stops), private to the user,
        # removed at the end unless kept (see stop).
        self.log_path = ""
        self.keep_log = False  # the pool failed: keep the log whatever it says

    def start(self) -> ConnectionInfo:
        """Launch the controller (which launches the engines); return where to connect."""
        if not zmq.has("ipc"):
            raise ZPoolError(
                "this platform's ZeroMQ has no ipc:// transport, which zpool's hidden local cluster needs"
                " (it keeps the cluster private to this user); zpool runs on Linux and macOS"
            )
        self.workdir = make_runtime_dir()
        self.log_path = self.workdir + ".log"
        os.close(os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        authkey = bytes(multiprocessing.current_process().authkey)
        if self.settings.launcher is not None:
            s = self.settings
            assert s.ip is not None
            try:
                info = tcp_connection(s.ip, None, s.location, s.insecure, os.path.join(self.workdir, CURVE_KEY_FILE))
            except BaseException:
                shutil.rmtree(self.workdir, ignore_errors=True)
                _remove(self.log_path)
                raise
            info = info._replace(mp_authkey=authkey)
        else:
            base = f"ipc://{self.workdir}"
            client, engine, heartbeat = (f"{base}/{name}" for name in ENDPOINTS)
            shm = self.settings.shared_memory and _shm.available()
            info = ConnectionInfo(
                client,
                engine,
                heartbeat,
                new_key(),
                mp_authkey=authkey,
                shm_prefix=f"zpool-{os.urandom(6).hex()}" if shm else None,
            )
        path = os.path.join(self.workdir, "cluster.json")
        info.write(path)
        if self.settings.engine_setup:
            write_frames(os.path.join(self.workdir, "engine-setup.bin"), self.settings.engine_setup)
        if self.settings.preload:
            write_list(os.path.join(self.workdir, "engine-preload.txt"), self.settings.preload)
        argv = self._controller_argv(path)
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True, close_fds=True)
        except OSError:
            shutil.rmtree(self.workdir, ignore_errors=True)
            _remove(self.log_path)
            raise
        self.info = info
        return info

    def _controller_argv(self, connection_file: str) -> list[str]:
        s = self.settings
        assert self.workdir is not None
        args = [
            "--connection-file",
            connection_file,
            "--engines",
            str(s.n_engines),
            "--parent-pid",
            str(os.getpid()),
            *s.controller.to_argv(),
            "--log-file",
            self.log_path,
            "--log-level",
            s.log_level,
            "--remove-dir",
            self.workdir,
        ]
        if s.engine_setup:
            args += ["--engine-setup", os.path.join(self.workdir, "engine-setup.bin")]
        if s.preload:
            args += ["--engine-preload", os.path.join(self.workdir, "engine-preload.txt")]
        if s.output != "inherit":
            args += ["--engine-output", s.output, "--output-limit", str(s.output_limit)]
        if s.launcher is not None:
            args += ["--launcher", json.dumps(s.launcher.to_spec()), "--ip", "0.0.0.0" if s.ip == "*" else str(s.ip)]
            if os.path.exists(os.path.join(self.workdir, CURVE_KEY_FILE)):
                args += ["--curve-secret-file", os.path.join(self.workdir, CURVE_KEY_FILE)]
        return python_command("zpool.controller", args, caller_path())

    def pids(self) -> list[int]:
        """Pids of the controller and every engine it runs."""
        return [p.pid for p in self._tree()]

    def engine_processes(self) -> list[EngineProcess]:
        """The engine processes running now (the controller's children), oldest first."""
        return [] if self.proc is None else engines_of(self.proc.pid)

    def _tree(self) -> list[psutil.Process]:
        if self.proc is None:
            return []
        try:
            proc = psutil.Process(self.proc.pid)
            return [proc, *proc.children(recursive=True)]
        except psutil.Error:
            return []

    def failure(self) -> str | None:
        """Why the controller is gone, or None while it runs."""
        if self.proc is None:
            return "the cluster was never started"
        code = self.proc.poll()
        if code is None:
            return None
        self.keep_log = True
        return (
            f"the controller process (pid {self.proc.pid}) ended with {describe_exit(code)}{self._log_tail()}"
            f"\n(the cluster's log is kept in {self.log_path})"
        )

    def _log_tail(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                text = f.read()[-LOG_TAIL_CHARS:].strip()
        except OSError:
            return ""
        return f"; its log ends:\n{text}" if text else ""

    def _log_has_errors(self) -> bool:
        """Whether an ERROR or CRITICAL record is in the cluster's log."""
        try:
            with open(self.log_path, errors="replace") as f:
                return any(" ERROR " in line or " CRITICAL " in line for line in f)
        except OSError:
            return False

    def stop(self, timeout: float = 5.0) -> None:
        """Wait up to `timeout` s for the controller and engines to exit, then kill what is left."""
        tree = self._tree()
        proc, self.proc = self.proc, None
        if proc is not None:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning("controller pid %d did not exit in %.1f s; killing its processes", proc.pid, timeout)
        _, alive = psutil.wait_procs(tree, timeout=3.0)
        if alive:
            kill_process_tree([p.pid for p in alive], timeout=2.0)
        if proc is not None:
            # The controller led its own process group (start_new_session):
            # anything still in it was started by a task and outlived its engine.
            kill_process_group(proc.pid)
        if proc is not None and proc.returncode is None:
            proc.wait(2.0)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
            failed = proc is not None and proc.returncode not in (0, None)
            if self.keep_log or failed or self._log_has_errors():
                logger.warning("the hidden cluster's log is kept in %s", self.log_path)
            else:
                _remove(self.log_path)
        if self.info is not None and self.info.shm_prefix:
            _shm.remove_all(self.info.shm_prefix)  # what processes killed mid-send left behind


def check_tcp(ip: str | None, ports: Sequence[int] | None, location: str | None) -> None:
    """Refuse TCP options that do not go together (ValueError, saying which)."""
    if ip is None:
        if ports or location:
            raise ValueError("--ports and --location go with --ip (the address to listen on)")
        return
    if ip in ("0.0.0.0", "::", "*") and not location:
        raise ValueError(
            f"--ip {ip} listens on every interface: name the address other machines reach this one at with --location"
        )
    if ports is not None and (len(ports) != 3 or len(set(ports)) != 3 or not all(0 < p < 65536 for p in ports)):
        raise ValueError(f"--ports takes three different ports (client, engine, heartbeat), not {list(ports)}")


def tcp_connection(
    ip: str, ports: Sequence[int] | None, location: str | None, insecure: bool, key_file: str
) -> ConnectionInfo:
    """The connection of a new cluster on TCP; its controller's CURVE keys written to `key_file` (mode 0600).

    CURVE is on unless the address is a loopback one or `insecure` is given.
    """
    bind = "0.0.0.0" if ip == "*" else ip
    chosen = list(ports) if ports else free_ports(bind, 3)
    client, engine, heartbeat = (tcp_address(location or bind, port) for port in chosen)
    curve = None
    if not insecure and not is_loopback(client):
        server, curve = new_curve_keys()
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"public": server.public, "secret": server.secret}, f)
    elif insecure and not is_loopback(client):
        logger.warning(
            "cluster on %s WITHOUT encryption (--insecure): anyone on the network can read the tasks and results,"
            " and, knowing the key, run code on the engines",
            client,
        )
    # No shared memory: its engines may be on other machines (zpool._transport.host_id).
    return ConnectionInfo(client, engine, heartbeat, new_key(), curve=curve)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _fits(directory: str) -> bool:
    """Whether the endpoints of a cluster directory made in `directory` fit in a Unix socket's path."""
    longest = max(len(name) for name in ENDPOINTS)
    # mkdtemp's name: "zpool-" and 8 random characters.
    return len(os.fsencode(os.path.abspath(directory))) + len("/zpool-12345678/") + longest <= MAX_SOCKET_PATH


def make_runtime_dir() -> str:
    """A new private directory (mode 0700) whose endpoints' paths fit in a Unix socket's.

    Raises
    ------
    BrokenPoolError
        If neither the temporary directory nor any of :data:`SHORT_DIRS` is
        short enough and writable.
    """
    tmp = tempfile.gettempdir()
    candidates = [tmp]
    for name in SHORT_DIRS:
        directory = os.environ.get(name, "") if not name.startswith("/") else name
        if directory and directory not in candidates:
            candidates.append(directory)
    for directory in candidates:
        if not _fits(directory) or not os.path.isdir(directory) or not os.access(directory, os.W_OK | os.X_OK):
            continue
        try:
            workdir = tempfile.mkdtemp(prefix="zpool-", dir=directory)
        except OSError:
            continue
        os.chmod(workdir, 0o700)
        if directory != tmp:
            logger.info("the temporary directory %s is too long for socket paths; the cluster is in %s", tmp, workdir)
        return workdir
    raise BrokenPoolError(
        f"no directory for the hidden cluster's sockets: their paths hold at most {MAX_SOCKET_PATH} bytes, and the"
        f" temporary directory {tmp!r} ({len(os.fsencode(tmp))} bytes) is too long, as are (or cannot be written)"
        f" {', '.join(repr(d) for d in candidates[1:]) or 'the alternatives'}; set TMPDIR to a short directory"
        " of your own (export TMPDIR=/tmp, say)"
    )
