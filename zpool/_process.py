"""Process helpers: starting zpool's own processes, ending process trees, naming exit codes, watching a parent."""

from __future__ import annotations

import os
import signal
import sys
from typing import TYPE_CHECKING, Iterable, Sequence

if TYPE_CHECKING:
    import psutil

# psutil is imported where needed: engines watching their own parent never need it,
# and it costs a tenth of an engine's start-up time.

__all__ = [
    "LOG_FORMAT",
    "ParentWatch",
    "caller_path",
    "describe_exit",
    "kill_process_group",
    "kill_process_tree",
    "python_command",
]

# The hidden cluster's log records: when, which logger (zpool.controller.hub, zpool.scheduler,
# zpool.engine.worker...), which process, how grave, what.
LOG_FORMAT = "%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s"

# Run by a fresh interpreter before it imports anything of its own: the import
# path becomes exactly the one given on the command line (``PATH... --``), then
# the package's ``__main__.main()`` runs with the arguments after ``--``.
_BOOTSTRAP = (
    "import sys;i=sys.argv.index('--');sys.path[:]=sys.argv[1:i];del sys.argv[1:i+1]"
    ";from {package}.__main__ import main;sys.exit(main())"
)


def _start_dir() -> str | None:
    """The directory this program started in, as early as zpool can tell."""
    recorded = getattr(sys.modules.get("multiprocessing.process"), "ORIGINAL_DIR", None)
    if recorded:
        return str(recorded)
    try:
        return os.path.abspath(os.getcwd())
    except OSError:  # the working directory was removed
        return None


# Recorded when zpool is first imported (zpool/__init__.py imports this module).
START_DIR = _start_dir()


def caller_path() -> list[str]:
    """This process's ``sys.path`` made absolute, for processes that must import what it imports.

    ``''`` (the working directory of ``python -c``, notebooks and the
    interactive prompt) becomes the directory this program started in
    (``multiprocessing.process.ORIGINAL_DIR``, or the working directory
    when ``zpool`` was first imported), as the standard library's spawn
    does, so an ``os.chdir()`` since does not change what is found;
    other relative entries are resolved against the working directory now.
    """
    start = START_DIR or os.path.abspath(os.curdir)
    paths = [start if p == "" else os.path.abspath(p) for p in sys.path if isinstance(p, str)]
    return list(dict.fromkeys(paths))


def python_command(package: str, args: Sequence[str], path: Sequence[str]) -> list[str]:
    """The command line that runs ``package.__main__.main()`` importing from exactly `path`.

    Unlike ``python -m package``, which puts the working directory first on
    the import path, nothing is imported from anywhere but `path` (after
    the interpreter's own start-up: ``site``). So a directory another user
    can write (``/tmp``, a shared project folder) that the caller does not
    import from cannot plant a ``zpool/``, ``zmq.py`` or ``numpy/`` in
    zpool's hidden processes. The interpreter's options (``-O``, ``-X``,
    ``-W``...) are passed on, as the standard library's spawn does.
    """
    import subprocess  # (not at the top: engines import this module, and never start processes)

    if any(p == "--" for p in path):
        raise ValueError("an import path entry cannot be '--'")
    flags: list[str] = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]
    code = _BOOTSTRAP.format(package=package)
    return [sys.executable, *flags, "-c", code, *path, "--", *args]


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
