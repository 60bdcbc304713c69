"""The hidden local cluster: a controller and its engines as child processes.

:class:`LocalCluster` makes a private directory (mode 0700) holding the
ZeroMQ ``ipc://`` endpoints, the connection file with the random key (mode
0600) and the controller's log, then starts ``python -m zpool.controller``
in a session of its own (so a Ctrl-C meant for the caller does not kill the
workers mid-task). The controller starts and supervises the engines, and
exits, ending them, when this process goes away, however it goes.

Engines run with the caller's environment, working directory and
``sys.path`` (passed as ``PYTHONPATH``), so whatever the caller imports by
name, they can import too.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import psutil
import zmq

from zpool import _shm
from zpool._process import describe_exit, kill_process_group, kill_process_tree
from zpool.error import ZPoolError
from zpool.protocol import ConnectionInfo, new_key, write_frames

__all__ = ["ClusterSettings", "LocalCluster"]

logger = logging.getLogger(__name__)

LOG_TAIL_CHARS = 2000


@dataclass(frozen=True)
class ClusterSettings:
    n_engines: int
    scheme: str = "leastload"
    hwm: int | None = None
    heartbeat_interval: float = 1.0
    heartbeat_misses: int = 10
    log_level: str = "WARNING"
    # Retire an engine after this many tasks (maxtasksperchild); None: never.
    max_tasks_per_engine: int | None = None
    # Serialized call (frames) every engine runs before its first task: the initializer.
    engine_setup: tuple[bytes, ...] = ()
    # Large buffers through shared memory (where the host has /dev/shm).
    shared_memory: bool = True
    # Finished tasks the controller remembers: the newest so many, of the last so many seconds.
    record_window: int = 100_000
    record_age: float = 3600.0


class LocalCluster:
    """Start, watch and stop a controller with `n_engines` local engines."""

    def __init__(self, settings: ClusterSettings) -> None:
        self.settings = settings
        self.workdir: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: ConnectionInfo | None = None

    def start(self) -> ConnectionInfo:
        """Launch the controller (which launches the engines); return where to connect."""
        if not zmq.has("ipc"):
            raise ZPoolError(
                "this platform's ZeroMQ has no ipc:// transport, which zpool's hidden local cluster needs"
                " (it keeps the cluster private to this user); zpool runs on Linux and macOS"
            )
        self.workdir = tempfile.mkdtemp(prefix="zpool-")
        os.chmod(self.workdir, 0o700)
        base = f"ipc://{self.workdir}"
        info = ConnectionInfo(
            f"{base}/client",
            f"{base}/engine",
            f"{base}/heartbeat",
            new_key(),
            mp_authkey=bytes(multiprocessing.current_process().authkey),
            shm_prefix=f"zpool-{os.urandom(6).hex()}" if self.settings.shared_memory and _shm.available() else None,
        )
        path = os.path.join(self.workdir, "cluster.json")
        info.write(path)
        if self.settings.engine_setup:
            write_frames(os.path.join(self.workdir, "engine-setup.bin"), self.settings.engine_setup)
        argv = self._controller_argv(path)
        try:
            self.proc = subprocess.Popen(
                argv, env=_child_env(), stdin=subprocess.DEVNULL, start_new_session=True, close_fds=True
            )
        except OSError:
            shutil.rmtree(self.workdir, ignore_errors=True)
            raise
        self.info = info
        return info

    def _controller_argv(self, connection_file: str) -> list[str]:
        s = self.settings
        assert self.workdir is not None
        argv = [
            sys.executable,
            "-m",
            "zpool.controller",
            "--connection-file",
            connection_file,
            "--engines",
            str(s.n_engines),
            "--parent-pid",
            str(os.getpid()),
            "--scheme",
            s.scheme,
            "--heartbeat-interval",
            str(s.heartbeat_interval),
            "--heartbeat-misses",
            str(s.heartbeat_misses),
            "--log-file",
            self.log_path,
            "--log-level",
            s.log_level,
            "--remove-dir",
            self.workdir,
        ]
        argv += ["--record-window", str(s.record_window), "--record-age", repr(float(s.record_age))]
        if s.hwm is not None:
            argv += ["--hwm", str(s.hwm)]
        if s.max_tasks_per_engine is not None:
            argv += ["--max-tasks-per-engine", str(s.max_tasks_per_engine)]
        if s.engine_setup:
            argv += ["--engine-setup", os.path.join(self.workdir, "engine-setup.bin")]
        return argv

    @property
    def log_path(self) -> str:
        assert self.workdir is not None
        return os.path.join(self.workdir, "controller.log")

    def pids(self) -> list[int]:
        """Pids of the controller and every engine it runs."""
        return [p.pid for p in self._tree()]

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
        return f"the controller process (pid {self.proc.pid}) ended with {describe_exit(code)}{self._log_tail()}"

    def _log_tail(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                text = f.read()[-LOG_TAIL_CHARS:].strip()
        except OSError:
            return ""
        return f"; its log ends:\n{text}" if text else ""

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
        if self.info is not None and self.info.shm_prefix:
            _shm.remove_all(self.info.shm_prefix)  # what processes killed mid-send left behind


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [os.path.abspath(p or os.curdir) for p in sys.path]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(p for p in paths if p))
    return env
