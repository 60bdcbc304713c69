"""The hidden cluster's log: Pool(log_level=...), the zpool logger hierarchy, and the log kept when a pool fails."""

from __future__ import annotations

import glob
import os
import re
import signal
import tempfile

import pytest

import zpool
from tests import _tasks
from tests._wait import wait_until

T = 60


def _cluster_logs() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "zpool-*.log")))


def _read(path: str) -> str:
    with open(path, errors="replace") as f:
        return f.read()


def test_a_pool_that_ends_well_leaves_no_log():
    before = _cluster_logs()
    with zpool.Pool(1, preload=False) as pool:
        log = pool._cluster.log_path
        assert os.path.exists(log) and os.stat(log).st_mode & 0o777 == 0o600  # private, as the connection file
        assert pool.apply(_tasks.square, (3,)) == 9
    assert not os.path.exists(log)
    assert _cluster_logs() == before


def test_log_level_debug_shows_the_controller_scheduler_and_engine_loggers():
    pool = zpool.Pool(2, preload=False, log_level="debug")
    try:
        log = pool._cluster.log_path
        pool.map(_tasks.square, range(50), chunksize=1)
        pool.apply_async(_tasks.raise_value_error, ("x",), retries=1).wait(T)  # the scheduler logs the retry

        def retry_logged() -> str | None:
            text = _read(log)
            return text if "retries left" in text else None

        text = wait_until(retry_logged, T, "the scheduler's retry logged")
        names = set(re.findall(r" (zpool\.[a-z_.]+)\[\d+\] (?:DEBUG|INFO|WARNING|ERROR) ", text))
        assert "zpool.scheduler" in names
        assert any(n.startswith("zpool.controller.") for n in names), names
        assert any(n.startswith("zpool.engine.") for n in names), names
        assert "placed again (0 retries left)" in text
    finally:
        pool.terminate()
        pool.join()


def test_log_level_is_checked():
    for bad in ("LOUD", 7, None):
        with pytest.raises(ValueError, match="log_level must be one of CRITICAL, ERROR, WARNING, INFO, DEBUG"):
            zpool.Pool(1, log_level=bad)
    import logging

    pool = zpool.Pool(1, preload=False, log_level=logging.INFO)  # a logging number works too
    try:
        assert pool._cluster.settings.log_level == "INFO"
    finally:
        pool.terminate()
        pool.join()


def test_a_pool_whose_engines_cannot_start_keeps_its_log_and_names_it():
    pool = zpool.Pool(1, initializer=_tasks.init_fails, initargs=("no config file",), preload=False)
    try:
        log = pool._cluster.log_path
        with pytest.raises(zpool.BrokenPoolError) as info:
            pool.apply_async(_tasks.square, (2,)).get(T)
        assert f"the cluster's log is kept in {log}" in str(info.value)
    finally:
        pool.terminate()
        pool.join()
    assert os.path.exists(log)
    assert "no config file" in _read(log)
    os.unlink(log)


def test_a_pool_whose_controller_died_keeps_its_log_and_names_it():
    pool = zpool.Pool(1, preload=False)
    try:
        log = pool._cluster.log_path
        pool.apply(_tasks.square, (2,))
        os.kill(pool._cluster.proc.pid, signal.SIGKILL)
        with pytest.raises(zpool.BrokenPoolError) as info:
            pool.apply_async(_tasks.sleep_then, (30,)).get(T)
        assert f"(the cluster's log is kept in {log})" in str(info.value)
    finally:
        pool.terminate()
        pool.join()
    assert os.path.exists(log)
    os.unlink(log)
