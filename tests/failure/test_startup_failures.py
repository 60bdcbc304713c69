"""A cluster that cannot start says so instead of hanging."""

from __future__ import annotations

import sys
import threading

import pytest
import zmq

import zpool
from zpool._settings import ControllerSettings
from zpool.controller.hub import Hub
from zpool.controller.launcher import LocalEngines
from zpool.protocol import REPLY_COLUMNS, Batch, BatchWriter, ConnectionInfo, MsgType, Session, new_key, recv_frames
from zpool.serialize import dumps_call

T = 60


def test_controller_that_cannot_start_raises_broken_pool(monkeypatch):
    # A controller command that exits at once with status 3 stands in for a broken installation.
    monkeypatch.setattr(
        "zpool.cluster.LocalCluster._controller_argv",
        lambda self, path: ["/bin/sh", "-c", "echo 'zpool test: broken interpreter' >&2; exit 3"],
    )
    with pytest.raises(zpool.BrokenPoolError, match=r"controller process .* ended with exit code 3"):
        zpool.Pool(1)


def test_engines_that_cannot_start_fail_tasks_with_the_reason(tmp_path):
    base = f"ipc://{tmp_path}"
    info = ConnectionInfo(f"{base}/c", f"{base}/e", f"{base}/h", new_key())
    engines = LocalEngines([sys.executable, "-c", "raise SystemExit(7)"], max_failed_starts=3)
    hub = Hub(info, ControllerSettings(heartbeat_interval=0.2), engines)
    engines.start(1)
    loop = threading.Thread(target=hub.run, daemon=True)
    loop.start()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(info.client)
    session = Session(info.key)
    try:
        request = BatchWriter()
        request.add("t-1", dumps_call(abs, (-1,)))
        sock.send_multipart(session.build(MsgType.APPLY_REQUEST, request.fields(), buffers=request.buffers()))
        assert sock.poll(T * 1000), "the task was neither run nor failed"
        reply = session.unpack(recv_frames(sock))
        batch = Batch(reply.header, reply.buffers, REPLY_COLUMNS)
        assert batch.ids == ["t-1"] and batch.columns["status"] == ["error"]
        error = __import__("json").loads(bytes(batch.payload(0)[0]))
        assert error["ename"] == "BrokenPoolError"
        assert "3 engine processes in a row exited (exit code 7) before registering" in error["evalue"]
    finally:
        hub._state = type(hub._state).STOPPING
        loop.join(T)
        sock.close()
        ctx.term()
