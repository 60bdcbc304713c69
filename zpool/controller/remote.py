"""Engines started elsewhere, by a launcher of :mod:`zpool.launchers`: ssh, MPI or Slurm.

The controller starts them as it starts, watches them while it runs (a
thread calls :meth:`RemoteEngines.poll` every second) and ends them as it
stops. Each kind keeps a one-line :meth:`~RemoteEngines.describe` for
``zpool status``, logs its changes, and sets :attr:`~RemoteEngines.failure`
once none of its engines will come (a refused or cancelled job, an
``mpiexec`` that ended, hosts that cannot be reached): the hub then
reports the cluster as broken, unless other engines serve it, and fails
the tasks that would otherwise wait for ever.

Engines end by themselves too, whatever becomes of their launcher: the
controller tells them to shut down as it stops, and an engine whose
controller falls silent exits after the heartbeat tolerance (they are
started with ``--reconnect-timeout 0``).

* **ssh** (:class:`SSHEngines`): for each host, the connection file is
  copied to ``~/.zpool/remote/<cluster id>.json`` there (mode 0600,
  through ssh's standard input), then one ``ssh HOST PYTHON -m
  zpool.engine ...`` per engine is kept running here. At stop, the
  sessions end, and one more ssh per host ends any engine of this cluster
  left there and removes the copy.
* **mpi** (:class:`MPIEngines`): one ``mpiexec -n N PYTHON -m zpool.engine
  ...``; each engine reports its rank. At stop, ``mpiexec`` is given the
  engines' own exit, then SIGTERM (which it passes to the ranks).
* **slurm** (:class:`SlurmEngines`): a batch script whose one step runs
  the engines with ``srun``, submitted with ``sbatch``; ``squeue`` (and
  ``scontrol`` once it left the queue) tell its state. A job pending
  longer than the launcher's ``pending_timeout`` is cancelled. At stop:
  ``scancel``.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import threading
import time
from typing import Any

from zpool.launchers import MPI, SSH, Launcher, Slurm

__all__ = ["MPIEngines", "RemoteEngines", "SSHEngines", "SlurmEngines", "start_remote"]

logger = logging.getLogger(__name__)

# How long one command of a launcher (a copy through ssh, sbatch, squeue, scancel) may take, in seconds.
COMMAND_TIMEOUT_S = 30.0
# How often the launcher's state is looked at, in seconds.
POLL_INTERVAL_S = 1.0
# Why a pending Slurm job is held: it will not start without an administrator (scontrol release).
SLURM_HELD = frozenset(("launch failed requeued held", "JobHeldAdmin", "JobHeldUser"))
# Slurm job states after which its engines are gone.
SLURM_ENDED = frozenset(
    "BOOT_FAIL CANCELLED COMPLETED DEADLINE FAILED NODE_FAIL OUT_OF_MEMORY PREEMPTED REVOKED TIMEOUT".split()
)


def _tail(data: bytes | str | None, limit: int = 500) -> str:
    text = data.decode(errors="replace") if isinstance(data, bytes) else (data or "")
    return text.strip()[-limit:]


class RemoteEngines:
    """Engines a launcher starts elsewhere, as the controller sees them (see the module docstring).

    Parameters
    ----------
    launcher : zpool.launchers.Launcher
    connection_file : str
        The cluster's connection file, here.
    cluster_id : str
        Names what the launcher makes (a job name, the copies on hosts).
    folder : str
        The controller's own folder (private): where a batch script and
        the job's output go.
    log_level : str
        The engines' log level.
    """

    def __init__(
        self, launcher: Launcher, connection_file: str, cluster_id: str, folder: str, log_level: str = "WARNING"
    ) -> None:
        self.launcher = launcher
        self.connection_file = connection_file
        self.cluster_id = cluster_id
        self.folder = folder
        self.log_level = log_level
        # Why none of its engines will come (None: they may); read by the hub's thread.
        self.failure: str | None = None
        self.stopping = False
        self._thread: threading.Thread | None = None

    def engine_argv(self, connection_file: str | None = None) -> list[str]:
        """The command that runs one engine there."""
        return [
            self.launcher.python,
            "-m",
            "zpool.engine",
            "--connection-file",
            connection_file or self.connection_file,
            "--reconnect-timeout",
            "0",
            "--log-level",
            self.log_level,
        ]

    def fail(self, why: str) -> None:
        """None of its engines will come: say why, once."""
        if self.failure is None:
            self.failure = why
            logger.error("%s launcher: %s", self.launcher.kind, why)

    def start(self) -> None:
        raise NotImplementedError

    def poll(self) -> None:
        """Look at the engines' state; log what changed (a thread calls it every second)."""

    def describe(self) -> str:
        """Their state in a line (``zpool status``)."""
        raise NotImplementedError

    def stop(self, timeout: float = 5.0) -> None:
        raise NotImplementedError

    def watch(self) -> None:
        """Poll in a thread of its own until :meth:`stop`."""

        def run() -> None:
            while not self.stopping:
                try:
                    self.poll()
                except Exception:  # (a launcher command that misbehaves must not end the watch)
                    logger.exception("%s launcher: looking at the engines' state failed", self.launcher.kind)
                time.sleep(POLL_INTERVAL_S)

        self._thread = threading.Thread(target=run, name=f"zpool-{self.launcher.kind}-launcher", daemon=True)
        self._thread.start()


class SSHEngines(RemoteEngines):
    """Engines on the launcher's hosts, each started by an ssh session this controller holds."""

    launcher: SSH

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.remote_file = f".zpool/remote/{self.cluster_id}.json"  # (relative: in the remote user's home)
        self.sessions: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.reported: set[int] = set()
        self.unreachable: list[str] = []

    def _ssh(self, host: str, command: str) -> list[str]:
        return [*self.launcher.ssh, "-o", "BatchMode=yes", host, command]

    def start(self) -> None:
        """Copy the connection file to each host, then start its engines (a host that fails is logged)."""
        with open(self.connection_file, "rb") as f:
            connection = f.read()
        remote = shlex.quote(self.remote_file)
        engine = "exec " + shlex.join(self.engine_argv(self.remote_file))
        for host, count in self.launcher.hosts:
            copy = f"umask 077 && mkdir -p .zpool/remote && cat > {remote}"
            try:
                done = subprocess.run(
                    self._ssh(host, copy), input=connection, capture_output=True, timeout=COMMAND_TIMEOUT_S
                )
                why = "" if done.returncode == 0 else f"ssh exited {done.returncode}: {_tail(done.stderr)}"
            except (OSError, subprocess.TimeoutExpired) as exc:
                why = str(exc)
            if why:
                logger.error("ssh launcher: cannot copy the connection file to %s (%s)", host, why)
                self.unreachable.append(f"{host} ({why})")
                continue
            for _ in range(count):
                proc = subprocess.Popen(
                    self._ssh(host, engine), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=None
                )
                self.sessions.append((host, proc))
            logger.info("ssh launcher: %d engine(s) started on %s", count, host)
        if not self.sessions:
            self.fail("no host could be reached: " + "; ".join(self.unreachable))

    def poll(self) -> None:
        """Log the sessions that ended while the cluster runs (once each); all ended is a failure."""
        codes = []
        for host, proc in self.sessions:
            code = proc.poll()
            codes.append(code)
            if code is not None and proc.pid not in self.reported:
                self.reported.add(proc.pid)
                level = logging.INFO if code == 0 or self.stopping else logging.WARNING
                logger.log(level, "ssh launcher: an engine's session on %s ended (exit status %d)", host, code)
        if codes and None not in codes and not self.stopping:
            statuses = ", ".join(sorted({str(c) for c in codes}))
            self.fail(
                f"every ssh session ended (exit status {statuses}): no more engines will come through them (those"
                " registered work on if only the connections dropped); what ssh printed (an unknown host, a refused"
                " key, no zpool for the remote Python) is in the controller's log"
            )

    def running(self) -> int:
        """Sessions still up."""
        return sum(1 for _, proc in self.sessions if proc.poll() is None)

    def describe(self) -> str:
        hosts = ", ".join(f"{h}:{n}" for h, n in self.launcher.hosts)
        text = f"ssh: {self.running()} of {self.launcher.engines} session(s) up ({hosts})"
        return text + (f"; unreachable: {', '.join(self.unreachable)}" if self.unreachable else "")

    def stop(self, timeout: float = 5.0) -> None:
        """End the sessions, then, on each host, any engine of this cluster left, and the copy of the file."""
        self.stopping = True
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
        for host, _ in self.launcher.hosts:
            try:
                subprocess.run(self._ssh(host, clean), capture_output=True, timeout=COMMAND_TIMEOUT_S)
            except (OSError, subprocess.TimeoutExpired) as exc:
                logger.warning("ssh launcher: could not clean up on %s: %s", host, exc)


class MPIEngines(RemoteEngines):
    """The launcher's engines as the ranks of one ``mpiexec``."""

    launcher: MPI

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [*self.launcher.mpiexec, "-n", str(self.launcher.n), *self.engine_argv()]
        try:
            # Its own process group: stopping it reaches whatever it started here.
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=None, start_new_session=True
            )
        except OSError as exc:
            self.fail(f"cannot run {self.launcher.mpiexec[0]!r}: {exc}")
            return
        logger.info("mpi launcher: %s (pid %d)", shlex.join(argv), self.proc.pid)

    def poll(self) -> None:
        proc = self.proc
        if proc is None or self.stopping or self.failure is not None:
            return
        code = proc.poll()
        if code is not None:
            # What it printed went to this controller's log, just above.
            self.fail(f"mpiexec (pid {proc.pid}) exited with status {code}; its {self.launcher.n} engine(s) are gone")

    def describe(self) -> str:
        proc = self.proc
        if proc is None:
            return f"mpi: not started ({self.failure})"
        code = proc.poll()
        state = "running" if code is None else f"exited with status {code}"
        return f"mpi: mpiexec pid {proc.pid}, {self.launcher.n} rank(s), {state}"

    def stop(self, timeout: float = 5.0) -> None:
        self.stopping = True
        proc = self.proc
        if proc is None:
            return
        try:
            proc.wait(timeout)  # (the engines were told to shut down: mpiexec ends with them)
            return
        except subprocess.TimeoutExpired:
            pass
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except OSError:
                pass
            try:
                proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                logger.warning("mpi launcher: mpiexec (pid %d) outlived signal %s", proc.pid, sig.name)


class SlurmEngines(RemoteEngines):
    """The launcher's engines as the tasks of one Slurm batch job."""

    launcher: Slurm

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.job: str | None = None
        self.submitted = 0.0
        self.state = "not submitted"
        self.reason = ""
        self.nodes = ""
        self._unanswered_logged = -60.0  # (monotonic time of the last warning that Slurm did not answer)

    def _tool(self, name: str) -> str:
        """``squeue``, ``scancel``...: beside the launcher's ``sbatch`` if that is a path."""
        folder = os.path.dirname(self.launcher.sbatch)
        return os.path.join(folder, name) if folder else name

    def _run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, stdin=subprocess.DEVNULL)

    def start(self) -> None:
        script = os.path.join(self.folder, "slurm-job.sh")
        srun = shlex.join([self._tool("srun"), *self.launcher.srun, *self.engine_argv()])
        with open(script, "w") as f:
            f.write(f"#!/bin/sh\n# zpool cluster {self.cluster_id}: one engine per task of this job.\nexec {srun}\n")
        launcher = self.launcher
        argv = [
            launcher.sbatch,
            "--parsable",
            f"--job-name=zpool-{self.cluster_id}",
            f"--ntasks={launcher.n}",
            f"--output={os.path.join(self.folder, 'slurm-%j.out')}",
        ]
        for option in ("account", "partition", "time"):
            value = getattr(launcher, option)
            if value:
                argv.append(f"--{option}={value}")
        argv += [*launcher.extra, script]
        try:
            done = self._run(argv)
        except (OSError, subprocess.TimeoutExpired) as exc:
            self.fail(f"cannot submit the job ({shlex.join(argv)}): {exc}")
            return
        if done.returncode != 0:
            self.fail(f"Slurm refused the job (sbatch exited {done.returncode}): {_tail(done.stderr)}")
            return
        self.job = done.stdout.strip().split(";")[0]
        self.submitted = time.monotonic()
        self.state = "SUBMITTED"
        logger.info("slurm launcher: job %s submitted: %s", self.job, shlex.join(argv))

    def _look(self) -> tuple[str, str, str] | None:
        """The job's (state, reason, nodes); ("", "", "") if Slurm no longer knows it; None if Slurm did not answer."""
        assert self.job is not None
        done = self._run([self._tool("squeue"), "-h", "-j", self.job, "-o", "%T|%r|%N"])
        if done.returncode != 0 and "invalid job id" not in done.stderr.lower():
            self._unanswered("squeue", done)
            return None
        line = done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else ""
        if line:
            state, reason, nodes = [*line.split("|"), "", ""][:3]
            return state, reason, nodes
        # Left the queue: scontrol still knows how it ended (for MinJobAge seconds).
        done = self._run([self._tool("scontrol"), "-o", "show", "job", self.job])
        if done.returncode != 0:
            if "invalid job id" in done.stderr.lower():
                return "", "", ""
            self._unanswered("scontrol", done)
            return None
        fields = dict(w.split("=", 1) for w in done.stdout.split() if "=" in w)
        return fields.get("JobState", ""), fields.get("Reason", ""), fields.get("NodeList", "")

    def _unanswered(self, tool: str, done: subprocess.CompletedProcess[str]) -> None:
        """Slurm did not answer (its controller restarting, say): the job's state is unknown, not ended."""
        now = time.monotonic()
        if now - self._unanswered_logged > 60.0:
            self._unanswered_logged = now
            logger.warning(
                "slurm launcher: %s about job %s failed (exit %d): %s; asking again",
                tool,
                self.job,
                done.returncode,
                _tail(done.stderr),
            )

    def poll(self) -> None:
        if self.job is None or self.stopping or self.failure is not None:
            return
        looked = self._look()
        if looked is None or self.stopping:
            return
        state, reason, nodes = looked
        if (state, reason) != (self.state, self.reason):
            where = f" on {nodes}" if state == "RUNNING" and nodes else ""
            why = f" ({reason})" if reason and reason != "None" else ""
            logger.info("slurm launcher: job %s is %s%s%s", self.job, state or "gone", where, why)
        self.state, self.reason, self.nodes = state, reason, nodes
        if state == "PENDING" and reason in SLURM_HELD:
            self._cancel()
            self.fail(
                f"Slurm holds job {self.job} (reason: {reason}): it would not start by itself, so it was cancelled;"
                f" the nodes' slurmd logs say why (a launch that failed puts the job on hold)"
            )
        elif state == "PENDING":
            waited = time.monotonic() - self.submitted
            if waited > self.launcher.pending_timeout:
                self._cancel()
                self.fail(
                    f"Slurm job {self.job} was still pending after {waited:.0f} s (reason: {reason or 'none given'});"
                    " it was cancelled. Ask for fewer or smaller engines, another partition, or a longer"
                    " pending timeout"
                )
        elif state in SLURM_ENDED or not state:
            self.fail(
                f"Slurm job {self.job} ended: {state or 'gone from the queue'}"
                + (f" ({reason})" if reason and reason != "None" else "")
                + f"; its output: {os.path.join(self.folder, f'slurm-{self.job}.out')}"
            )

    def _cancel(self) -> None:
        try:
            done = self._run([self._tool("scancel"), self.job or ""])
            if done.returncode != 0:
                logger.warning("slurm launcher: scancel %s: %s", self.job, _tail(done.stderr))
        except (OSError, subprocess.TimeoutExpired) as exc:
            logger.warning("slurm launcher: scancel %s failed: %s", self.job, exc)

    def describe(self) -> str:
        if self.job is None:
            return f"slurm: no job ({self.failure or 'not submitted'})"
        text = f"slurm: job {self.job} {self.state or 'gone'}"
        if self.state == "RUNNING" and self.nodes:
            text += f" on {self.nodes}"
        elif self.reason and self.reason != "None":
            text += f" ({self.reason})"
        return text + f", {self.launcher.n} task(s)"

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel the job (its engines were told to shut down), and wait a little for Slurm to end it."""
        self.stopping = True
        if self.job is None:
            return
        self._cancel()
        deadline = time.monotonic() + timeout
        state = self.state
        while time.monotonic() < deadline:
            try:
                looked = self._look()
            except (OSError, subprocess.TimeoutExpired):
                return
            if looked is None:
                time.sleep(0.2)
                continue
            state = looked[0]
            if not state or state in SLURM_ENDED:
                logger.info("slurm launcher: job %s ended (%s)", self.job, state or "gone")
                return
            time.sleep(0.2)
        logger.warning("slurm launcher: job %s was still %s %g s after scancel", self.job, state, timeout)


_RUNNERS: dict[str, type[RemoteEngines]] = {"ssh": SSHEngines, "mpi": MPIEngines, "slurm": SlurmEngines}


def start_remote(
    launcher: Launcher, connection_file: str, cluster_id: str, folder: str, log_level: str = "WARNING"
) -> RemoteEngines:
    """Start `launcher`'s engines and watch them (see the module docstring)."""
    runner = _RUNNERS[launcher.kind](launcher, connection_file, cluster_id, folder, log_level)
    runner.start()
    runner.watch()
    return runner
