"""An engine's notices of pushed tasks: several clients' requests merged into one message for the controller.

``zpool.engine.pushed.PushedTasks._merged`` writes them, the controller's
``_with_routes`` reads each task's client back; both are checked here on
real signed messages, without processes.
"""

from __future__ import annotations

import os
import tempfile

import pytest

from zpool.controller.hub import _with_routes
from zpool.engine.pushed import PushedTasks
from zpool.error import ProtocolError
from zpool.protocol import Batch, BatchWriter, MsgType, Session, new_key


def request(session: Session, route: bytes, tasks: list[tuple[str, list[bytes]]]):
    batch = BatchWriter()
    for task_id, frames in tasks:
        batch.add(task_id, frames)
    fields = batch.fields()
    fields.update(pushed=True, route=route.hex())
    frames = session.build(MsgType.APPLY_REQUEST, fields, buffers=batch.buffers())
    msg = session.unpack(frames)
    return frames, Batch(msg.header, msg.buffers), route


@pytest.fixture
def pushed():
    where = tempfile.mkdtemp(prefix="zp-", dir="/tmp")  # (a socket's path must be short)
    tasks = PushedTasks(f"unix://{where}/d1", Session(new_key()))
    yield tasks
    tasks.close()
    os.rmdir(where)


def test_requests_of_several_clients_merge_into_one_message_that_names_each_tasks_client(pushed):
    client = Session(pushed.session.key)
    a, b = b"c" + os.urandom(15), b"c" + os.urandom(15)
    big = os.urandom(100_000)  # a task of frames of its own, beside inline ones
    requests = [
        request(client, a, [("t1", [b"one"]), ("t2", [b"two"])]),
        request(client, a, [("t3", [b"three"])]),
        request(client, b, [("t4", [b"head", big])]),
        request(client, a, [("t5", [b"five"])]),
    ]
    controller = Session(pushed.session.key)
    msg = controller.unpack(pushed._merged(requests))  # signed with the cluster's key: it verifies
    assert msg.header["pushed"] is True
    assert msg.header["routes"] == [[a.hex(), 3], [b.hex(), 1], [a.hex(), 1]]  # runs, in order
    batch = Batch(msg.header, msg.buffers)
    seen = [
        (task_id, route, [bytes(f) for f in batch.payload(i)])
        for i, task_id, route in _with_routes(msg.header, batch.ids)
    ]
    assert seen == [
        ("t1", a, [b"one"]),
        ("t2", a, [b"two"]),
        ("t3", a, [b"three"]),
        ("t4", b, [b"head", big]),
        ("t5", a, [b"five"]),
    ]


def test_one_request_names_its_client_in_route():
    route = b"c" + os.urandom(15)
    assert _with_routes({"route": route.hex()}, ["x", "y"]) == [(0, "x", route), (1, "y", route)]


@pytest.mark.parametrize(
    "header",
    [
        {},  # no route at all
        {"route": "not hex"},
        {"route": ""},
        {"routes": "ab"},
        {"routes": [["ab", 1]]},  # covers 1 of 2 tasks
        {"routes": [["ab", 3]]},  # more tasks than there are
        {"routes": [["ab", 0], ["cd", 2]]},
        {"routes": [["ab", "2"]]},
        {"routes": [["ab"]]},
        {"routes": [[7, 2]]},
    ],
)
def test_malformed_routes_are_refused(header):
    with pytest.raises(ProtocolError, match="routes"):
        _with_routes(header, ["x", "y"])
