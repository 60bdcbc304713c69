"""The scheduling half of :class:`~zpool.Pool` (DESIGN §5): flags, abort, purge, resubmit, controller queries.

:class:`_SchedulingMethods` is mixed into ``Pool``, as
:class:`zpool.view._NamespaceMethods` is for the engines' namespaces:
``set_flags``/``temp_flags``/``flags`` (what every call gets: ``after``,
``follow``, ``timeout``, ``retries``, ``targets``, ``track``), ``abort``,
``purge_results``, ``resubmit``, ``get_result``, ``db_query``, ``queue_status`` and
``wait_for_engines``.
Everything goes through the pool's :class:`~zpool.client.submitter.Submitter`.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from zpool._decorators import check_flag
from zpool.asyncresult import AsyncResult
from zpool.client.submitter import Submitter
from zpool.dependency import task_ids
from zpool.error import ZPoolError
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

        On a standalone cluster with a task database, their records go too,
        calls and results with them: ``"all"`` removes every finished
        record, of every client of the cluster.

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
        each, the newest 10,000 within 64 MiB in all; a standalone cluster's
        task database keeps the others (up to 16 MiB each), so any client may
        resubmit any recorded task, also after a restart of the controller.
        A task that is not finished, or whose call is not kept (its arguments
        went through shared memory), fails in the new result with
        :class:`InvalidDependency`, saying which.
        """
        sub = self._submitter
        sub.check_running()
        ids = task_ids(what)  # in order, repeats kept: the new result lines up with `what`
        new_ids = [sub.new_id() for _ in ids]
        return self._awaiting(what, new_ids, MsgType.RESUBMIT_REQUEST, {"ids": ids, "new_ids": new_ids})

    @property
    def client_id(self) -> str:
        """This pool's name among the cluster's clients: what its task ids start with, and records say.

        ``db_query(client=pool.client_id)`` finds this pool's records.
        """
        return self._submitter.conn.session.session[:12]

    def get_result(self, what: Any) -> AsyncResult[Any]:
        """A result for tasks given by id, this pool's or any other client's of the cluster.

        On a standalone cluster with a task database (the default of ``zpool
        cluster start``), finished tasks' results come from the database, even
        those of pools that detached since or of a controller that was
        restarted, and running tasks' as they finish. Use it to pick up work
        submitted by another script, or by an earlier run of this one.

        Parameters
        ----------
        what : task id, AsyncResult, or a list of them
            The tasks (``ar.msg_ids`` names an AsyncResult's). An AsyncResult
            gives one of the same kind (a ``MapResult`` a whole map's list).

        Returns
        -------
        AsyncResult
            Its ``get()`` gives the values, or raises the task's exception;
            :class:`~zpool.UnknownTaskError` for a task the cluster has no
            result of: never submitted, purged, pending when its controller
            stopped, larger than the database keeps, or on a cluster that keeps
            no task database (a ``Pool``'s own).

        Raises
        ------
        ValueError
            If a task is this pool's own and still pending (wait on its
            AsyncResult), or is named twice.
        """
        sub = self._submitter
        sub.check_running()
        ids = task_ids(what)
        if len(set(ids)) != len(ids):
            raise ValueError("get_result: a task id is named twice; name each once")
        waiting = sub.results.waiting(ids)
        if waiting:
            raise ValueError(
                f"task {waiting[0]} is this pool's own and has not finished: wait on the AsyncResult it returned"
            )
        return self._awaiting(what, ids, MsgType.RESULT_REQUEST, {"ids": ids})

    def _awaiting(self, what: Any, ids: list[str], msg_type: MsgType, content: dict[str, Any]) -> AsyncResult[Any]:
        """A result for the tasks `ids`, whose replies the controller sends when asked by `msg_type`.

        Of the same kind as `what` when it is an AsyncResult (a ``MapResult``
        a whole map's); the request failing fails it.
        """
        sub = self._submitter
        if isinstance(what, AsyncResult):
            ar: AsyncResult[Any] = what._renewed(ids, owner=self, runner=sub.callbacks)
        else:
            ar = AsyncResult(ids, owner=self, runner=sub.callbacks)
        if not ids:
            return ar
        sub.results.add(ar)
        try:
            sub.request(msg_type, content)
        except BaseException as exc:
            sub.fail(ids, exc)
            raise
        return ar

    def db_query(
        self,
        status: str | list[str] | None = None,
        *,
        client: str | None = None,
        engine: int | None = None,
        ids: Any = None,
        submitted_after: float | None = None,
        submitted_before: float | None = None,
        completed_after: float | None = None,
        completed_before: float | None = None,
        limit: int = 10_000,
        timeout: float | None = 30.0,
    ) -> list[dict[str, Any]]:
        """The records of the cluster's tasks that meet every criterion given, oldest first.

        Needs a standalone cluster with a task database (``zpool cluster
        start``). Times are seconds since the epoch (``time.time()``).

        Parameters
        ----------
        status : str or list of str
            ``"pending"`` (not finished: queued or running), ``"ok"``,
            ``"error"`` (aborted tasks too), or ``"lost"`` (pending when its
            controller stopped).
        client : str
            A client's :attr:`client_id`.
        engine : int
            The engine that ran it (or, for a pending task, holds it).
        ids : task id, AsyncResult, or a list of them
        submitted_after, submitted_before, completed_after, completed_before : float
            Bounds of when it was submitted or completed (after: inclusive).
        limit : int
            Most records returned (1 to 10,000).

        Returns
        -------
        list of dict
            One per task: ``id``, ``client``, ``status``, ``engine``,
            ``submitted``, ``started``, ``completed``, ``flags`` (its
            scheduling flags, or None), ``call_bytes`` and ``result_bytes``,
            and whether the call and the result are kept (``call_kept``,
            ``result_kept``). Fetch results with :meth:`get_result`.

        Raises
        ------
        ValueError
            If a criterion is malformed.
        ZPoolError
            If the cluster keeps no task database, or it failed.
        """
        query: dict[str, Any] = {"limit": limit}
        for key, value in (
            ("status", status),
            ("client", client),
            ("engine", engine),
            ("submitted_after", submitted_after),
            ("submitted_before", submitted_before),
            ("completed_after", completed_after),
            ("completed_before", completed_before),
        ):
            if value is not None:
                query[key] = value
        if ids is not None:
            query["ids"] = task_ids(ids)
        self._submitter.check_connected()
        reply = self._submitter.request(MsgType.DB_REQUEST, {"op": "query", "query": query}, timeout=timeout)
        error = reply.get("error")
        if error:
            raise (ZPoolError if "task database" in error else ValueError)(f"db_query: {error}")
        return list(reply["records"])

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
