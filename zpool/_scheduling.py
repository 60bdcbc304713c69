"""The scheduling half of :class:`~zpool.Pool` (DESIGN §5): flags, abort, purge, resubmit, controller queries.

:class:`_SchedulingMethods` is mixed into ``Pool``, as
:class:`zpool.view._NamespaceMethods` is for the engines' namespaces:
``set_flags``/``temp_flags``/``flags`` (what every call gets: ``after``,
``follow``, ``timeout``, ``retries``, ``targets``, ``track``), ``abort``,
``purge_results``, ``resubmit``, ``queue_status`` and ``wait_for_engines``.
Everything goes through the pool's :class:`~zpool.client.submitter.Submitter`.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from zpool._decorators import check_flag
from zpool.asyncresult import AsyncResult
from zpool.client.submitter import Submitter
from zpool.dependency import task_ids
from zpool.protocol import MsgType

__all__: list[str] = []


class _SchedulingMethods:
    """Scheduling flags, abort, purge, resubmit and queue queries of a pool (needs ``_submitter``, ``_processes``)."""

    _submitter: Submitter
    _processes: int

    def set_flags(self, **flags: Any) -> None:
        """Set scheduling flags for every later call of this pool (a flag given ``None`` is cleared).

        Parameters
        ----------
        after : Dependency, AsyncResult, task id or list of them
            Run only after these tasks finished (as the Dependency's
            ``all``/``success``/``failure`` say; a plain list: all succeeded).
        follow : same
            Run only on an engine where these tasks ran.
        timeout : float
            Fail with :class:`DependencyTimeout` if `after`/`follow` are not
            met within this many seconds of submission (0 or None: never).
        retries : int
            Run a failed task again, up to this many times, on another engine
            when there is one (an engine dying counts as a failure).
        targets : int or list of int
            Run only on these engines (ids as in :meth:`queue_status`).
        track : bool
            Track the sends of the arguments' memory: :attr:`AsyncResult.sent`
            and :meth:`AsyncResult.wait_on_send` tell when ZeroMQ is done with
            it, so that it may be modified (``imap`` is not tracked).

        Raises
        ------
        TypeError, ValueError
            If a flag is unknown or has a wrong value.
        """
        self._submitter.set_flags(flags)

    @contextlib.contextmanager
    def temp_flags(self, **flags: Any) -> Iterator[None]:
        """Context manager: these scheduling flags for calls made in this thread within the block.

        Same flags as :meth:`set_flags`; flags given to a call win over both.

        Examples
        --------
        >>> with pool.temp_flags(after=[setup], retries=2):
        ...     results = [pool.apply_async(step, (i,)) for i in range(4)]
        """
        with self._submitter.temp_flags(flags):
            yield

    @property
    def flags(self) -> dict[str, Any]:
        """The scheduling flags a call made now in this thread would get (before its own)."""
        return self._submitter.flags

    def abort(self, what: Any, interrupt: bool = False) -> dict[str, Any]:
        """Abort tasks that have not started, and with `interrupt` those running: they fail with :class:`TaskAborted`.

        Parameters
        ----------
        what : AsyncResult, task id, or a list of them
            Tasks still waiting in the scheduler fail at once; tasks already
            queued on an engine are taken back from it and fail (or fail
            there before they start). Finished tasks are not affected.
        interrupt : bool
            Also interrupt those running: their engine raises
            ``KeyboardInterrupt`` in the task's code (as Ctrl-C would), and
            they fail with :class:`TaskAborted` (default False: they run to
            their end). See :meth:`EngineView.interrupt`.

        Returns
        -------
        dict
            ``{"aborted": n, "sent_to_engines": m}``: tasks failed by the
            scheduler, and tasks an engine was told to skip (or interrupt).
        """
        check_flag("interrupt", interrupt)
        ids = task_ids(what)
        self._submitter.check_connected()
        return self._submitter.request(MsgType.ABORT_REQUEST, {"ids": ids, "interrupt": interrupt})

    def purge_results(self, what: Any = "all") -> dict[str, Any]:
        """Make the controller forget finished tasks now, rather than when they leave its window.

        The controller does not store results (they come straight to this
        process, where the :class:`AsyncResult` holds them); it remembers
        how finished tasks ended, for dependencies named by task id and for
        :meth:`resubmit`, for the newest ``record_window`` tasks of the last
        ``record_age`` seconds. This forgets them at once.

        Parameters
        ----------
        what : "all", AsyncResult, task id, or a list of them
            The finished tasks to forget (default: every one). Tasks not
            finished yet are left alone.

        Returns
        -------
        dict
            ``{"purged": n, "not_finished": [ids]}``.
        """
        ids = None if isinstance(what, str) and what == "all" else task_ids(what)
        self._submitter.check_connected()
        return self._submitter.request(MsgType.PURGE_REQUEST, {"ids": ids})

    def resubmit(self, what: Any) -> AsyncResult[Any]:
        """Run finished tasks again; return a new result for the new run.

        Parameters
        ----------
        what : AsyncResult, task id, or a list of them
            Finished tasks. A ``MapResult`` gives a ``MapResult`` (the whole
            map again); the flags each task had apply again.

        Returns
        -------
        AsyncResult
            Of the same kind as `what` when it is one.

        Notes
        -----
        The controller keeps the calls of finished tasks of up to 64 KiB
        each, the newest 10,000 within 64 MiB in all. A task that is not finished, or
        whose call is no longer kept, fails in the new result with
        :class:`InvalidDependency`, saying which.
        """
        sub = self._submitter
        sub.check_running()
        ids = task_ids(what)  # in order, repeats kept: the new result lines up with `what`
        new_ids = [sub.new_id() for _ in ids]
        if isinstance(what, AsyncResult):
            ar: AsyncResult[Any] = what._renewed(new_ids, owner=self, runner=sub.callbacks)
        else:
            ar = AsyncResult(new_ids, owner=self, runner=sub.callbacks)
        if not new_ids:
            return ar
        sub.results.add(ar)
        try:
            sub.request(MsgType.RESUBMIT_REQUEST, {"ids": ids, "new_ids": new_ids})
        except BaseException as exc:
            sub.fail(new_ids, exc)
            raise
        return ar

    def queue_status(self, timeout: float | None = 10.0) -> dict[str, Any]:
        """Ask the controller for per-engine queue lengths and counters.

        Returns
        -------
        dict
            ``{"engines": {"0": {"queue": 1, "completed": 5, "failed": 0}, ...},
            "unassigned": 0, "engine_pids": {...}, "dropped_messages": 0, ...}``
        """
        return self._submitter.request(MsgType.QUEUE_REQUEST, timeout=timeout)

    def wait_for_engines(self, n: int | None = None, timeout: float = 60.0) -> list[int]:
        """Block until `n` engines (default: `processes`) are registered; return their ids.

        Raises
        ------
        zpool.TimeoutError
            If they are not all there within `timeout` seconds.
        """
        return self._submitter.engine_ids(self._processes if n is None else n, timeout)
