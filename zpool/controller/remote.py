"""Engines on other machines, started through the system's ``ssh`` client (``zpool cluster start --launcher ssh``).

The controller starts them when it starts and ends them when it stops:

* **start**: for each host, the connection file is copied to
  ``~/.zpool/remote/<cluster id>.json`` there (mode 0600, through ssh's
  standard input: no ``scp`` needed), then one ``ssh HOST PYTHON -m
  zpool.engine --connection-file ...`` per engine, each kept running here
  as the ssh session that holds it;
* **stop**: the sessions are ended, and one more ssh per host ends any
  engine of this cluster still running there and removes the copy.

Engines end by themselves too, whatever becomes of ssh: the controller
tells them to shut down as it stops, and an engine whose controller falls
silent exits after the heartbeat tolerance (they are started with
``--reconnect-timeout 0``). An ssh session that ends early is reported
with what ssh printed (unknown host, refused key, no Python there); the
engines that did register are used as any others.

Hosts are given as ``HOST:N`` (N engines, default 1); ``ssh`` options
(``-F config``, ``-i key``, ``-p port``) pass through as they are.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
import time
from typing import Sequence

__all__ = ["SSHEngines", "parse_hosts"]

logger = logging.getLogger(__name__)

# How long the copy of the connection file, and the clean-up on each host, may take, in seconds.
SSH_TIMEOUT_S = 30.0


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


class SSHEngines:
    """Engines on `hosts`, each started by an ssh session this controller holds.

    Parameters
    ----------
    hosts : list of (host, count)
    connection_file : str
        The cluster's connection file here, copied to each host.
    cluster_id : str
        Names the copy on the hosts (and finds its engines there at stop).
    ssh : sequence of str
        The ssh command and its options (``["ssh", "-F", "config"]``).
    python : str
        The Python on the hosts, with zpool installed.
    log_level : str
        The engines' log level (what they log goes to this controller's log, through ssh).
    """

    def __init__(
        self,
        hosts: Sequence[tuple[str, int]],
        connection_file: str,
        cluster_id: str,
        ssh: Sequence[str] = ("ssh",),
        python: str = "python3",
        log_level: str = "WARNING",
    ) -> None:
        self.hosts = list(hosts)
        self.connection_file = connection_file
        self.remote_file = f".zpool/remote/{cluster_id}.json"  # (relative: in the remote user's home)
        self.ssh = list(ssh)
        self.python = python
        self.log_level = log_level
        self.sessions: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.reported: set[int] = set()

    def _ssh(self, host: str, command: str) -> list[str]:
        return [*self.ssh, "-o", "BatchMode=yes", host, command]

    def start(self) -> None:
        """Copy the connection file to each host, then start its engines (a host that fails is logged)."""
        with open(self.connection_file, "rb") as f:
            connection = f.read()
        for host, count in self.hosts:
            remote = shlex.quote(self.remote_file)
            copy = f"umask 077 && mkdir -p .zpool/remote && cat > {remote}"
            try:
                done = subprocess.run(
                    self._ssh(host, copy), input=connection, capture_output=True, timeout=SSH_TIMEOUT_S
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                logger.error("ssh launcher: cannot reach %s: %s", host, exc)
                continue
            if done.returncode != 0:
                logger.error(
                    "ssh launcher: cannot copy the connection file to %s (ssh exited %d): %s",
                    host,
                    done.returncode,
                    done.stderr.decode(errors="replace").strip()[-500:],
                )
                continue
            engine = (
                f"exec {shlex.quote(self.python)} -m zpool.engine --connection-file {remote}"
                f" --reconnect-timeout 0 --log-level {shlex.quote(self.log_level)}"
            )
            for _ in range(count):
                proc = subprocess.Popen(
                    self._ssh(host, engine), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=None
                )
                self.sessions.append((host, proc))
            logger.info("ssh launcher: %d engine(s) started on %s", count, host)

    def tick(self) -> None:
        """Log the sessions that ended while the cluster runs (once each)."""
        for host, proc in self.sessions:
            code = proc.poll()
            if code is not None and proc.pid not in self.reported:
                self.reported.add(proc.pid)
                level = logging.INFO if code == 0 else logging.WARNING
                logger.log(level, "ssh launcher: an engine's session on %s ended (exit status %d)", host, code)

    def running(self) -> int:
        """Sessions still up."""
        return sum(1 for _, proc in self.sessions if proc.poll() is None)

    def stop(self, timeout: float = 5.0) -> None:
        """End the sessions, then, on each host, any engine of this cluster left, and the copy of the file."""
        deadline = time.monotonic() + timeout
        for _, proc in self.sessions:  # (the engines were told to shut down: most sessions end by themselves)
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.terminate()
        for _, proc in self.sessions:
            try:
                proc.wait(2.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        remote = shlex.quote(self.remote_file)
        # ("[-]-": the pattern does not match this command's own shell)
        clean = f"pkill -f -- {shlex.quote('[-]-connection-file ' + self.remote_file)}; rm -f {remote}; true"
        for host, _ in self.hosts:
            try:
                subprocess.run(self._ssh(host, clean), capture_output=True, timeout=SSH_TIMEOUT_S)
            except (OSError, subprocess.TimeoutExpired) as exc:
                logger.warning("ssh launcher: could not clean up on %s: %s", host, exc)
