"""Start, watch and stop the engine processes of a hidden local cluster."""

from __future__ import annotations

import logging
import os
import subprocess
import time
from typing import Sequence

from zpool._process import describe_exit, kill_process_tree
from zpool.controller.output import EngineOutput

__all__ = ["LocalEngines"]

logger = logging.getLogger(__name__)

# After a failed start, the next waits this long, doubling per failure in a row, up to the max.
RESTART_BACKOFF_S = 0.1
RESTART_BACKOFF_MAX_S = 5.0


class LocalEngines:
    """The engine processes this controller started itself.

    Parameters
    ----------
    argv : sequence of str
        Command line of one engine (``python -m zpool.engine ...``).
    max_failed_starts : int
        Engines in a row that may exit before getting ready before the
        launcher gives up, if no engine is up then (a broken environment
        would otherwise respawn engines forever). While some engines work,
        failed starts are retried with a growing back-off instead.
    log_file : str, optional
        The cluster's log, which giving up names (it is kept then).
    output : EngineOutput, optional
        Where the engines' output goes: each gets three pipes, read there
        (``--output-fd`` names the records pipe). None: the engines write
        to this process's stdout and stderr.
    """

    def __init__(
        self,
        argv: Sequence[str],
        max_failed_starts: int = 3,
        log_file: str | None = None,
        output: EngineOutput | None = None,
    ) -> None:
        self.argv = list(argv)
        # Collects what the engines print (their stdout, stderr and output pipe); None: they inherit ours.
        self.output = output
        self.log_file = log_file
        self.max_failed_starts = max_failed_starts
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.registered: set[int] = set()
        self.failed_starts = 0
        self.gave_up: str | None = None
        # When engines waiting for a back-off are to be started (monotonic seconds).
        self.due: list[float] = []
        # Engines stopped on purpose (maxtasksperchild): their exit is no failure.
        self.retired: set[int] = set()
        # The last error an engine reported while setting up (the pool's initializer).
        self.setup_error: str | None = None

    def start(self, n: int) -> None:
        """Start `n` engines: now, or after a back-off while recent starts have been failing."""
        if self.gave_up:
            return
        if self.failed_starts:
            delay = min(RESTART_BACKOFF_S * 2 ** (self.failed_starts - 1), RESTART_BACKOFF_MAX_S)
            self.due.extend([time.monotonic() + delay] * n)
            return
        for _ in range(n):
            self._spawn()

    def tick(self) -> None:
        """Start the engines whose back-off has passed (called often by the controller's loop)."""
        if not self.due:
            return
        now = time.monotonic()
        ready = [t for t in self.due if t <= now]
        self.due = [t for t in self.due if t > now]
        for _ in ready:
            if not self.gave_up:
                self._spawn()

    def _spawn(self) -> None:
        if self.output is None:
            proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, close_fds=True)
        else:
            pipes = [os.pipe() for _ in range(3)]  # records, stdout, stderr: (read, write) each
            (records, records_w), (out, out_w), (err, err_w) = pipes
            try:
                proc = subprocess.Popen(
                    [*self.argv, "--output-fd", str(records_w)],
                    stdin=subprocess.DEVNULL,
                    stdout=out_w,
                    stderr=err_w,
                    pass_fds=(records_w,),
                    close_fds=True,
                )
            except BaseException:
                for fd in (records, records_w, out, out_w, err, err_w):
                    os.close(fd)
                raise
            for fd in (records_w, out_w, err_w):  # (the engine's now: the pipes end when it does)
                os.close(fd)
            self.output.attach(proc.pid, records, out, err)
        self.procs[proc.pid] = proc
        logger.info("started engine process %d", proc.pid)

    def mark_registered(self, pid: int) -> None:
        """Record that engine `pid` is up and ready for tasks: its start succeeded."""
        if pid in self.procs:
            self.registered.add(pid)
            self.failed_starts = 0

    def starting(self) -> int:
        """Engines launched (or due to be) that have not become ready yet."""
        return sum(1 for pid in self.procs if pid not in self.registered and pid not in self.retired) + len(self.due)

    def setup_failed(self, pid: int, error: str) -> None:
        """Record why engine `pid` could not get ready (its initializer raised); it exits."""
        self.setup_error = error

    def retire(self, pid: int) -> None:
        """Engine `pid` was told to exit after its share of tasks; its exit is expected."""
        if pid in self.procs:
            self.retired.add(pid)

    def reap(self) -> list[tuple[int, str, bool, bool]]:
        """Collect engines that exited: ``(pid, how, had_registered, retired)`` each."""
        ended = []
        for pid, proc in list(self.procs.items()):
            code = proc.poll()
            if code is None:
                continue
            del self.procs[pid]
            registered = pid in self.registered
            retired = pid in self.retired
            self.registered.discard(pid)
            self.retired.discard(pid)
            how = describe_exit(code)
            if not registered and not retired:
                self.failed_starts += 1
                # Give up only with no engine up: while some work, keep trying (backing off).
                if self.failed_starts >= self.max_failed_starts and not self.registered:
                    if self.setup_error:
                        self.gave_up = (
                            f"{self.failed_starts} engines in a row failed to get ready; the last one said:\n"
                            f"{self.setup_error}"
                        )
                    else:
                        self.gave_up = (
                            f"{self.failed_starts} engine processes in a row exited ({how}) before registering;"
                            " their error output is on the terminal or in the cluster's log"
                        )
                    if self.log_file:
                        self.gave_up += f"\n(the cluster's log is kept in {self.log_file})"
                    logger.error("no engine can start: %s", self.gave_up)
            ended.append((pid, how, registered, retired))
        return ended

    def wait_exit(self, pid: int, timeout: float) -> bool:
        """Wait up to `timeout` seconds for engine `pid` to end; whether it has (:meth:`reap` collects it)."""
        proc = self.procs.get(pid)
        if proc is None:
            return True
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def kill(self, pid: int) -> None:
        proc = self.procs.get(pid)
        if proc is not None:
            proc.kill()

    def stop(self, timeout: float) -> None:
        """End every engine: registered ones were told to exit; kill what is left after `timeout`."""
        self.due.clear()
        procs = list(self.procs.values())
        for pid, proc in self.procs.items():
            if pid not in self.registered:  # still starting: nobody told it to stop
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                kill_process_tree([proc.pid], timeout=1.0)
                timeout = 0.1
        self.procs.clear()
