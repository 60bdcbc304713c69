"""Heartbeat bookkeeping: missed beats and dead engines."""

from __future__ import annotations

import pytest

from zpool.controller.heartbeat import HeartMonitor


def test_misses_count_up_and_reset_on_pong():
    hm = HeartMonitor(max_misses=5)
    hm.add(b"a")
    assert hm.missed(b"a") == 0
    assert hm.tick() == (1, [])
    assert hm.tick() == (2, [])
    assert hm.missed(b"a") == 2
    hm.pong(b"a", 1)
    assert hm.missed(b"a") == 1
    hm.pong(b"a", 2)
    assert hm.missed(b"a") == 0


def test_new_engine_is_credited_with_the_current_beat():
    hm = HeartMonitor(max_misses=2)
    for _ in range(10):
        hm.tick()
    hm.add(b"late")
    assert hm.missed(b"late") == 0
    assert hm.tick() == (11, [])
    assert hm.missed(b"late") == 1


def test_pong_for_old_beat_ignored():
    hm = HeartMonitor(max_misses=5)
    hm.add(b"a")
    for _ in range(3):
        hm.tick()
    hm.pong(b"a", 3)
    hm.pong(b"a", 1)  # late answer to an earlier beat must not move it back
    assert hm.missed(b"a") == 0
    hm.tick()
    hm.pong(b"a", 2)
    assert hm.missed(b"a") == 1


def test_pong_for_future_beat_ignored():
    hm = HeartMonitor(max_misses=5)
    hm.add(b"a")
    hm.tick()
    hm.tick()
    hm.pong(b"a", 10)
    assert hm.missed(b"a") == 2
    hm.tick()
    hm.tick()
    hm.tick()
    assert hm.missed(b"a") == 5  # not credited with beat 10 now that 5 is current


def test_dead_after_max_misses():
    hm = HeartMonitor(max_misses=2)
    hm.add(b"silent")
    hm.add(b"alive")
    for expected_beat in (1, 2):
        beat, dead = hm.tick()
        assert (beat, dead) == (expected_beat, [])
        hm.pong(b"alive", beat)
    beat, dead = hm.tick()
    assert (beat, dead) == (3, [b"silent"])
    assert hm.missed(b"silent") == 3
    hm.pong(b"alive", beat)
    assert hm.tick() == (4, [b"silent"])  # reported until removed


def test_remove_stops_tracking():
    hm = HeartMonitor(max_misses=1)
    hm.add(b"a")
    hm.tick()
    assert hm.tick() == (2, [b"a"])
    hm.remove(b"a")
    assert hm.tick() == (3, [])
    assert hm.missed(b"a") == 0
    hm.pong(b"a", 3)  # an answer from a removed engine does not bring it back
    assert hm.tick() == (4, [])
    hm.remove(b"never-added")  # harmless


def test_pong_from_unknown_engine_ignored():
    hm = HeartMonitor(max_misses=1)
    hm.tick()
    hm.pong(b"stranger", 1)
    hm.tick()
    hm.tick()
    assert hm.tick() == (4, [])


@pytest.mark.parametrize("max_misses", [0, -1])
def test_max_misses_below_one_rejected(max_misses):
    with pytest.raises(ValueError, match=rf"^max_misses must be at least 1, not {max_misses}$"):
        HeartMonitor(max_misses)
