"""Warm engines: ``Pool(preload=...)`` imports modules on the engines while they have no task (zpool._preload)."""

from __future__ import annotations

import os
import subprocess
import sys
import types

import psutil
import pytest

import zpool
from tests import _tasks
from tests._wait import wait_until
from zpool import _preload


def engine_cmdlines(pool) -> list[list[str]]:
    return [psutil.Process(p.pid).cmdline() for p in pool._pool]


# Run in a process of its own, so that the package it imports is not preloaded by every later test's pool.
DEFAULT_SCRIPT = """
import sys
import networkx  # an installed package the caller has loaded
import zpool

def loaded(name):
    return name in sys.modules

if __name__ == "__main__":
    with zpool.Pool(2) as pool:
        import time
        deadline = time.monotonic() + 60
        # Never imported by a task: only the preload brings it to the engines.
        while not all(pool.engines[i].apply(loaded, "networkx") for i in pool.engines.ids):
            assert time.monotonic() < deadline, "networkx not preloaded within 60 s"
            time.sleep(0.2)  # (engines preload once idle for 50 ms)
        assert all(pool.engines[i].apply(loaded, "networkx.algorithms") for i in pool.engines.ids)
    print("preloaded")
"""


def test_installed_packages_the_caller_loaded_are_preloaded_by_default(tmp_path):
    script = tmp_path / "default_preload.py"
    script.write_text(DEFAULT_SCRIPT)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "preloaded", done.stdout + done.stderr


# Engines preload once no task has run for 50 ms (zpool.engine.worker.PRELOAD_IDLE_S): probe less often.
IDLE = 0.2


def test_preload_false_imports_nothing():
    with zpool.Pool(1, preload=False) as pool:
        assert pool.apply(_tasks.square, (3,)) == 9
        assert not any("--preload" in cmd for cmd in engine_cmdlines(pool))
        assert not pool.apply(_tasks.has_module, ("networkx",))


def test_named_modules_are_preloaded_and_a_failing_one_is_logged(tmp_path, monkeypatch):
    (tmp_path / "zpool_preload_exits.py").write_text("raise SystemExit(3)\n")
    (tmp_path / "zpool_preload_raises.py").write_text("raise RuntimeError('broken on purpose')\n")
    (tmp_path / "zpool_preload_fine.py").write_text("VALUE = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # the engines import from the caller's path
    names = ["zpool_preload_exits", "no_such_module_zpool", "zpool_preload_raises", "zpool_preload_fine"]
    with zpool.Pool(1, preload=names) as pool:
        pids = [p.pid for p in pool._pool]
        preloaded = lambda: pool.apply(_tasks.has_module, ("zpool_preload_fine",))  # noqa: E731
        wait_until(preloaded, what="the good module preloaded", poll=IDLE)
        assert [p.pid for p in pool._pool] == pids  # the engine that met the failures is the one serving
        assert pool.map(_tasks.square, range(4)) == [0, 1, 4, 9]
        log = wait_until(lambda: _warned(pool._cluster.log_path, 3), what="three warnings in the log")
    for name, why in [
        ("zpool_preload_exits", "SystemExit: 3"),
        ("no_such_module_zpool", "ModuleNotFoundError"),
        ("zpool_preload_raises", "RuntimeError: broken on purpose"),
    ]:
        assert f"could not import {name} ({why}" in log


def test_a_replacement_engine_preloads_too(tmp_path, monkeypatch):
    (tmp_path / "zpool_preload_marker.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with zpool.Pool(1, preload=["zpool_preload_marker"]) as pool:
        first = pool.apply(_tasks.getpid)
        wait_until(lambda: pool.apply(_tasks.has_module, ("zpool_preload_marker",)), what="preloaded", poll=IDLE)
        os.kill(first, 9)
        wait_until(lambda: pool.apply(_tasks.getpid) != first, what="a replacement engine")
        replaced = lambda: pool.apply(_tasks.has_module, ("zpool_preload_marker",))  # noqa: E731
        wait_until(replaced, what="preloaded by the replacement", poll=IDLE)


@pytest.mark.parametrize(
    "preload, exc, match",
    [
        ("numpy", TypeError, "preload must be True"),
        (3, TypeError, "preload must be True"),
        (["numpy", "not a module"], ValueError, "'not a module' is not a module name"),
        ([b"numpy"], ValueError, "is not a module name"),
    ],
)
def test_bad_preload_is_refused_in_the_caller(preload, exc, match):
    with pytest.raises(exc, match=match):
        zpool.Pool(1, preload=preload)


def test_what_is_preloaded_by_default():
    site = os.path.join("venv", "lib", "python3.11", "site-packages")

    def module(name: str, path: str | None, spec_name: str | None = None) -> types.ModuleType:
        m = types.ModuleType(name)
        m.__file__ = path
        m.__spec__ = types.SimpleNamespace(name=spec_name or name) if path is not None else None
        return m

    modules = {
        "scipy": module("scipy", f"/{site}/scipy/__init__.py"),
        "scipy.optimize": module("scipy.optimize", f"/{site}/scipy/optimize/__init__.py"),
        "scipy.optimize._minimize": module("scipy.optimize._minimize", f"/{site}/scipy/optimize/_minimize.py"),
        "emcee": module("emcee", "/usr/lib/python3/dist-packages/emcee/__init__.py"),
        "json": module("json", "/usr/lib/python3.11/json/__init__.py"),  # the standard library
        "mymodel": module("mymodel", "/home/me/project/mymodel.py"),  # the caller's own
        "pytest": module("pytest", f"/{site}/pytest/__init__.py"),  # a tool, not a library
        "zpool": module("zpool", f"/{site}/zpool/__init__.py"),
        "os.path": module("os.path", "/usr/lib/python3.11/posixpath.py", "posixpath"),  # an alias
        "builtin_thing": module("builtin_thing", None),
        "__main__": module("__main__", f"/{site}/script.py"),
        "gone": None,
    }
    assert _preload.installed_modules(modules) == ("emcee", "scipy", "scipy.optimize")
    import numpy  # noqa: F401  (zpool's own dependency, installed)

    assert "numpy" in _preload.installed_modules()
    assert not any(name.partition(".")[0] in _preload.NEVER for name in _preload.installed_modules(sys.modules))


def _warned(path: str, count: int) -> str | None:
    """The log's text once it holds `count` preload warnings."""
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    return text if text.count("preload: could not import") >= count else None
