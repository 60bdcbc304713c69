"""Heartbeat bookkeeping: which engines stopped answering.

The controller sends beat ``n`` to every engine each period; an engine's
heartbeat thread answers with the same number. An engine whose newest
answer is more than ``max_misses`` beats behind is declared dead. This
module only counts; the hub owns the socket.
"""

from __future__ import annotations

__all__ = ["HeartMonitor"]


class HeartMonitor:
    """Count missed beats per engine identity.

    Parameters
    ----------
    max_misses : int
        Beats an engine may leave unanswered before it is declared dead.
    """

    def __init__(self, max_misses: int) -> None:
        if max_misses < 1:
            raise ValueError(f"max_misses must be at least 1, not {max_misses}")
        self.max_misses = max_misses
        self.beat = 0
        self._answered: dict[bytes, int] = {}

    def add(self, ident: bytes) -> None:
        """Start watching `ident`; it is credited with the current beat."""
        self._answered[ident] = self.beat

    def remove(self, ident: bytes) -> None:
        self._answered.pop(ident, None)

    def pong(self, ident: bytes, beat: int) -> None:
        """Record that `ident` answered `beat`."""
        last = self._answered.get(ident)
        if last is not None and last < beat <= self.beat:
            self._answered[ident] = beat

    def missed(self, ident: bytes) -> int:
        return self.beat - self._answered.get(ident, self.beat)

    def tick(self) -> tuple[int, list[bytes]]:
        """Start a new beat; return its number and the engines now declared dead."""
        self.beat += 1
        dead = [ident for ident, last in self._answered.items() if self.beat - last > self.max_misses]
        return self.beat, dead
