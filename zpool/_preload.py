"""Warm engines: which modules the engines import before their first task, and the importing.

A forked ``multiprocessing`` worker starts with every module its parent had
loaded; a zpool engine is a fresh interpreter, so the first task that needs
scipy or numpy pays for importing them (0.1 to 1 s for a scientific stack).
``Pool(preload=...)`` names modules the engines import ahead, as
``multiprocessing``'s ``set_forkserver_preload`` does for the forkserver.

Two halves, both free of zpool's sockets:

* the caller's: :func:`resolve` turns the ``preload`` argument into module
  names; by default (``True``) :func:`installed_modules`, the installed
  packages the caller has loaded, with their public submodules;
* the engine's: :class:`Preloader` imports them one by one in the engine's
  main thread while it has no task, so a task never waits for more than the
  one import under way, and no module is ever imported by two threads at
  once (a task importing a module half-imported by another thread could see
  it half-initialized). A module that fails to import is reported in the
  log, once, and the engine serves all the same.

What is preloaded by default, and why: modules whose file lies in a
``site-packages`` or ``dist-packages`` directory (installed distributions:
numpy, scipy, emcee, ...), loaded in the caller when the pool is created,
whose dotted names have no private (``_``) part. Their import is what the
caller already did, and a task that uses them by reference would import them
on the engine anyway. Left out: the standard library (cheap, and mostly
loaded by the engine already), the caller's own modules outside
``site-packages`` (importing a module of a project may do things its author
meant to run once: name them to preload them), ``__main__`` (never: that is
your script), zpool and its transport, and tools that have no place in a
worker: test runners, debuggers, notebook kernels and GUI toolkits
(:data:`NEVER`).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import time
from typing import Iterable

__all__ = ["NEVER", "Preloader", "installed_modules", "read_list", "resolve", "write_list"]

logger = logging.getLogger(__name__)

# Top-level packages never preloaded by default: zpool and its own transport, test and
# development tools, notebook kernels, debuggers and GUI toolkits (importing one in a worker
# may open windows, grab a display or install hooks). Named explicitly, they are imported.
NEVER = frozenset(
    {
        "zpool",
        "zmq",
        "psutil",
        "dill",
        "pytest",
        "_pytest",
        "pluggy",
        "iniconfig",
        "hypothesis",
        "coverage",
        "pytest_timeout",
        "xdist",
        "IPython",
        "ipykernel",
        "ipywidgets",
        "jupyter_client",
        "jupyter_core",
        "traitlets",
        "tornado",
        "comm",
        "debugpy",
        "pydevd",
        "_pydevd_bundle",
        "prompt_toolkit",
        "jedi",
        "parso",
        "pygments",
        "matplotlib_inline",
        "nest_asyncio",
        "setuptools",
        "pkg_resources",
        "_distutils_hack",
        "pip",
        "wheel",
        "PyQt5",
        "PyQt6",
        "PySide2",
        "PySide6",
        "wx",
        "gi",
        "pygame",
        "pyglet",
        "kivy",
    }
)
_INSTALLED_DIRS = ("site-packages", "dist-packages")


def installed_modules(modules: dict[str, object] | None = None) -> tuple[str, ...]:
    """The installed, public modules loaded in this process (`modules`: ``sys.modules``), sorted.

    See the module's docstring for what counts.
    """
    found = []
    for name, module in list((sys.modules if modules is None else modules).items()):
        if module is None or name == "__main__" or any(part.startswith("_") for part in name.split(".")):
            continue
        if name.partition(".")[0] in NEVER:
            continue
        spec = getattr(module, "__spec__", None)
        path = getattr(module, "__file__", None)
        if spec is None or getattr(spec, "name", None) != name or not isinstance(path, str):
            continue  # an alias (os.path), a namespace without a file, or something made up at run time
        parts = path.replace("\\", "/").split("/")
        if any(d in parts for d in _INSTALLED_DIRS):
            found.append(name)
    return tuple(sorted(found))


def resolve(preload: bool | Iterable[str] | None) -> tuple[str, ...]:
    """The module names the `preload` argument of ``Pool`` stands for.

    Raises
    ------
    TypeError
        `preload` is neither a bool, None, nor an iterable of module names.
    ValueError
        A name is not a dotted module name.
    """
    if preload is None or preload is False:
        return ()
    if preload is True:
        return installed_modules()
    if isinstance(preload, (str, bytes)) or not isinstance(preload, Iterable):
        raise TypeError(
            "preload must be True (the installed packages this process has loaded), False (none),"
            f" or a list of module names, not {preload!r}"
        )
    names = []
    for name in preload:
        if not isinstance(name, str) or not all(part.isidentifier() for part in name.split(".")):
            raise ValueError(f"preload names modules (like 'scipy.optimize'); {name!r} is not a module name")
        names.append(name)
    return tuple(dict.fromkeys(names))


def write_list(path: str, names: Iterable[str]) -> None:
    """Write module names for :func:`read_list` (one per line, private to the user)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("".join(f"{name}\n" for name in names))


def read_list(path: str) -> list[str]:
    """The module names :func:`write_list` wrote; none (and a warning) if the file cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    except OSError as exc:
        logger.warning("cannot read the modules to preload from %s: %s", path, exc)
        return []


class Preloader:
    """Imports `names` one per :meth:`step`, in order, skipping those already loaded (engine's main thread)."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = list(names)
        self.next = 0
        self.failed: list[str] = []
        self.began: float | None = None

    @property
    def done(self) -> bool:
        return self.next >= len(self.names)

    def step(self) -> None:
        """Import the next module not loaded yet (at most one import)."""
        if self.began is None:
            self.began = time.monotonic()
        modules = sys.modules
        while self.next < len(self.names):
            name = self.names[self.next]
            self.next += 1
            if name in modules:
                continue
            try:
                importlib.import_module(name)
            except BaseException as exc:  # a module may raise anything, SystemExit included
                if isinstance(exc, KeyboardInterrupt):
                    raise
                self.failed.append(name)
                why = f"{type(exc).__name__}: {exc}"
                logger.warning("preload: could not import %s (%s); the engine goes on without it", name, why)
            break
        if self.done:
            logger.info(
                "preloaded %d module(s) in %.2f s (%d failed)",
                len(self.names) - len(self.failed),
                time.monotonic() - self.began,
                len(self.failed),
            )
