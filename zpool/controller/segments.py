"""Shared-memory segments passing through the controller, and when to unlink them.

A large argument travels in a shared-memory segment (``zpool._shm``); the
task's payload holds only a *manifest* naming it. The client says how many
tasks use each segment (one array may be an argument of a whole ``map``);
the controller counts down as those tasks are done for good (answered,
failed, not to run again) and unlinks a segment when none is left. The
segments of results that will reach no client (a retried task's reply, a
client gone) are unlinked at once. The payloads are never deserialized:
only the manifest's names and count are read.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Iterable

from zpool import _shm

if TYPE_CHECKING:
    from zpool.controller.tasks import Task
    from zpool.protocol import Batch

__all__ = ["SegmentLedger"]


class SegmentLedger:
    """Segments of task arguments -> how many live tasks still refer to them.

    Parameters
    ----------
    prefix : str or None
        The cluster's segment name prefix (``ConnectionInfo.shm_prefix``);
        None: no shared memory, and nothing to do.
    """

    def __init__(self, prefix: str | None) -> None:
        self.prefix = prefix
        self._users: collections.Counter[str] = collections.Counter()

    def claim(self, tasks: Iterable[Task]) -> None:
        """Note the segments the payloads of new `tasks` refer to."""
        prefix = self.prefix
        if not prefix:
            return
        for task in tasks:
            names = _shm.manifest_names(task.frames, prefix)
            if names:
                task.segments = names
                # As many users as the sender declared, counted once: the other tasks
                # sharing the segments may arrive after the first has finished.
                users = _shm.manifest_users(task.frames[0])
                for name in names:
                    if name not in self._users:
                        self._users[name] = users

    def release(self, task: Task) -> None:
        """`task` is done for good: unlink the segments of its arguments no other live task needs."""
        names, task.segments = task.segments, None
        for name in names or ():
            left = self._users[name] - 1
            if left > 0:
                self._users[name] = left
                continue
            self._users.pop(name, None)
            _shm.unlink(name)

    def discard(self, batch: Batch, indices: Iterable[int]) -> None:
        """Reply payloads that will reach no client: unlink the segments of their results."""
        prefix = self.prefix
        if not prefix:
            return
        for i in indices:
            _shm.release(batch.payload(i), prefix)
