"""A call whose message the controller refuses as a replay fails saying so.

The controller answers a message it drops with a ``reject_notice`` giving
the reason; the client fails the tasks that message carried with
``AuthenticationError``. For a bad signature the likely cause is an
argument modified while in flight; for a replay it is a duplicated message,
and the error must say that, not blame an argument.
"""

from __future__ import annotations

import pytest

import zpool
from tests import _tasks
from zpool.protocol import MsgType

T = 60


@pytest.mark.timeout(120)
def test_call_whose_message_is_a_duplicate_fails_as_a_replay(pool):
    conn = pool._conn
    original_build = conn.session.build
    first: list[list] = []

    def build_or_repeat(msg_type, fields=None, **kwargs):
        """The first apply_request, then that same message again in place of every later one."""
        frames = original_build(msg_type, fields, **kwargs)
        if msg_type != MsgType.APPLY_REQUEST:
            return frames
        if not first:
            first.append(frames)
        return first[0]

    conn.session.build = build_or_repeat
    try:
        assert pool.apply_async(_tasks.square, (3,)).get(T) == 9
        duplicated = pool.apply_async(_tasks.square, (4,))
        with pytest.raises(zpool.AuthenticationError) as caught:
            duplicated.get(T)
    finally:
        del conn.session.build
    text = str(caught.value)
    assert text.startswith(
        "the controller refused the message carrying this call as a replay (AuthenticationError: replayed message "
    ), text
    assert "it had received a message with the same signature already" in text
    assert "misbehaving peer" in text and "call it again" in text
    assert "modified" not in text
    assert pool.apply(_tasks.square, (5,)) == 25
