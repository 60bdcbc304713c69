"""Process helpers: ending process trees, naming exit codes, watching a parent."""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    import psutil

# psutil is imported where needed: engines watching their own parent never need it,
# and it costs a tenth of an engine's start-up time.

__all__ = ["ParentWatch", "describe_exit", "kill_process_group", "kill_process_tree"]


def describe_exit(returncode: int | None) -> str:
    """Say how a process ended, naming the signal: ``'SIGKILL(-9)'``, ``'exit code 1'``."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"{signal.Signals(-returncode).name}({returncode})"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


def kill_process_tree(pids: Iterable[int], timeout: float = 3.0) -> None:
    """Terminate `pids` and all their descendants; SIGKILL whatever outlives `timeout`."""
    import psutil

    procs: list[psutil.Process] = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            procs += proc.children(recursive=True)
            procs.append(proc)
        except psutil.Error:
            continue
    for proc in procs:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=timeout)


def kill_process_group(pgid: int, spare_self: bool = False) -> None:
    """SIGKILL every process of group `pgid` (e.g. children a task started).

    With `spare_self`, the calling process (a member) is left alive.
    """
    if not spare_self:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return
    import psutil

    me = os.getpid()
    for proc in psutil.process_iter():
        try:
            if proc.pid != me and os.getpgid(proc.pid) == pgid:
                proc.kill()
        except (OSError, psutil.Error):
            continue


class ParentWatch:
    """Tell whether the process that started us is still there.

    When it is our actual parent, its death re-parents us, which
    ``os.getppid()`` shows at the cost of one system call. Otherwise the
    process is watched through psutil, which also guards against pid reuse.
    """

    def __init__(self, parent_pid: int | None = None) -> None:
        self.parent_pid = os.getppid() if parent_pid is None else parent_pid
        self._direct = os.getppid() == self.parent_pid
        self._proc: psutil.Process | None = None
        if not self._direct:
            import psutil

            try:
                self._proc = psutil.Process(self.parent_pid)
            except psutil.Error:
                self._proc = None

    def alive(self) -> bool:
        if self._direct:
            return os.getppid() == self.parent_pid
        if self._proc is None:
            return False
        import psutil

        try:
            return self._proc.is_running() and self._proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False
