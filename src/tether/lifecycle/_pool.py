"""A bounded worker pool that drains on shutdown and reports what it did not process.

States, all changed under ``_cond``'s lock:

    new ──run()──▶ running ──ctx ends──▶ draining ──queue empty / drain ends──▶ stopped
                                   └──(drain_queue=False)──▶ stopping ─────────▶ stopped

``submit``/``put`` accept in ``new`` and ``running`` only. Workers take items in
``running`` and ``draining``; in ``stopping`` they finish the item in hand and exit.
Every accepted item goes through the pool's ``Ledger`` (``_ledger.py``), which gives it
exactly one terminal outcome: succeeded (done), or failed, timed_out, cancelled,
dropped or abandoned (reported: counted, logged, handed to ``on_unprocessed``).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .._context import (
    Context,
    after_func,
    background,
    with_cancel,
    with_timeout,
    with_value,
)
from .._errors import DeadlineExceeded
from ._common import (
    LOG,
    REQUEST_ID,
    WORKER,
    QueueFull,
    ShuttingDown,
    check_callable,
    check_name,
    drain_scope,
    is_async,
    is_fatal,
    new_request_id,
    non_negative_seconds,
    positive_int,
    positive_seconds,
    start_thread,
)
from ._ledger import Entry, Ledger

__all__ = ["PoolStats", "WorkerPool"]

T = TypeVar("T")

_NEW, _RUNNING, _DRAINING, _STOPPING, _STOPPED = "new", "running", "draining", "stopping", "stopped"


@dataclass(frozen=True)
class PoolStats:
    """A snapshot of a ``WorkerPool``'s counters (``stats()``, and what ``run()`` returns).

    Every accepted item is, at any moment, in exactly one of: ``queued``,
    ``in_flight``, ``succeeded`` (done), or — reported as not done — ``failed`` (the
    handler raised), ``timed_out`` (its item deadline ended it), ``cancelled`` (the
    drain deadline ended it while running), ``dropped`` (shutdown came before it
    started) or ``abandoned`` (still running ``grace`` seconds after the drain
    deadline; its thread may still finish it later). So ``accepted`` is the sum of
    those eight. ``rejected`` counts ``submit``/``put`` calls that raised.
    ``handed_over`` counts the reported items ``on_unprocessed`` accepted,
    ``handover_failed`` those it raised for, ``not_handed_over`` those it was not
    called for because its time ran out (they are logged all the same).

    Added in 0.1.
    """

    __module__ = "tether.lifecycle"

    state: str
    accepted: int = 0
    rejected: int = 0
    queued: int = 0
    in_flight: int = 0
    succeeded: int = 0
    failed: int = 0
    timed_out: int = 0
    cancelled: int = 0
    dropped: int = 0
    abandoned: int = 0
    handed_over: int = 0
    handover_failed: int = 0
    not_handed_over: int = 0


class WorkerPool(Generic[T]):
    """``workers`` threads calling ``handler(item_ctx, item)`` on a bounded queue.

    A component: ``pool.run(ctx)`` starts the workers and blocks until ``ctx`` ends;
    producers call ``submit(item)`` (never blocks; raises ``QueueFull`` or
    ``ShuttingDown``) or ``put(ctx, item)`` (waits for room). At most ``queue_size``
    items wait; at most ``workers`` run.

    Each item runs under its own context: the pool's drain context (``drain_scope``)
    plus ``WORKER`` (the worker's name, ``"<name>-<i>"``), a fresh ``REQUEST_ID``, and
    a deadline ``item_timeout`` seconds away (``None``: none). The pool's own log
    records carry the same tags in ``extra`` (``log_extra(ctx)`` gives them to the
    handler). A handler that raises is logged and counted; the worker goes on.

    Shutdown (``ctx`` ends): intake closes at once (``submit`` raises
    ``ShuttingDown``); with ``drain_queue=True`` (default) the workers go on through the
    queue, else the queued items are dropped at once. In-flight items run on. When the
    drain context ends (under a ``Supervisor``: the drain deadline), queued items are
    dropped, running items see their context end (cause ``DrainTimeout``), and
    ``run()`` waits ``grace`` more seconds for them before returning and reporting the
    ones still running as abandoned. Dropped, cancelled and abandoned items are logged
    one by one and passed to ``on_unprocessed(item, reason)`` (e.g. to nack them or
    write them to a durable queue); ``reason`` is ``"shutdown"``, ``"drain deadline"``,
    ``"cancelled"`` or ``"abandoned"``. An abandoned item may still finish later:
    processing is at-least-once.

    Added in 0.1.
    """

    __module__ = "tether.lifecycle"

    def __init__(
        self,
        handler: Callable[[Context, T], object],
        *,
        workers: int = 4,
        queue_size: int = 100,
        item_timeout: float | None = 30.0,
        name: str = "pool",
        drain_queue: bool = True,
        grace: float = 1.0,
        on_unprocessed: Callable[[T, str], object] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        check_callable(handler, "a pool handler")
        if is_async(handler):
            raise TypeError(
                "tether: a pool handler runs on a worker thread and must be a plain function, "
                "got a coroutine function; pass a def, or run the coroutine inside it with "
                "asyncio.run(...)"
            )
        if on_unprocessed is not None:
            check_callable(on_unprocessed, "on_unprocessed")
        self._handler = handler
        self._workers = positive_int(workers, "workers")
        self._queue_size = positive_int(queue_size, "queue_size")
        self._item_timeout = positive_seconds(item_timeout, "item_timeout", allow_none=True)
        self._name = check_name(name, "pool")
        self._drain_queue = bool(drain_queue)
        self._grace = non_negative_seconds(grace, "grace")
        self._log = logger if logger is not None else LOG
        self._ledger: Ledger[T] = Ledger(
            what=f"worker pool {self._name!r}",
            event_prefix="item_",
            log=self._log,
            on_unprocessed=on_unprocessed,
        )
        self._cond = threading.Condition(threading.Lock())
        # _cond's lock protects the following.
        self._state = _NEW
        self._queue: collections.deque[Entry[T]] = collections.deque()
        self._in_flight: dict[int, tuple[str, str, Entry[T]]] = {}  # seq -> (worker, rid, entry)
        self._live = 0  # worker threads not yet exited
        self._rejected = 0

    # -- producers -----------------------------------------------------------------------

    def _accept(self, item: T) -> None:  # holds the lock
        self._queue.append(self._ledger.accept(item))
        self._cond.notify_all()

    def _closed_error(self) -> ShuttingDown:
        self._rejected += 1
        return ShuttingDown(
            f"tether: worker pool {self._name!r} is shutting down and accepts no new items; "
            "stop producing when your own context ends"
        )

    def submit(self, item: T) -> None:
        """Queue ``item`` for a worker, or raise: never blocks.

        Thread-safe (and safe to call from an event loop: it only takes a lock briefly);
        not idempotent (each call queues one item). Accepted before ``run()`` too; the
        items wait for the workers. Raises ``QueueFull`` when ``queue_size`` items are
        waiting (shed load, or use ``put``), ``ShuttingDown`` once the pool's context
        ended (already ended included); either way the item was not taken.

        Added in 0.1.
        """
        with self._cond:
            if self._state not in (_NEW, _RUNNING):
                raise self._closed_error()
            if len(self._queue) >= self._queue_size:
                self._rejected += 1
                raise QueueFull(
                    f"tether: worker pool {self._name!r} has {self._queue_size} items waiting "
                    "(queue_size); shed load, retry later, or use put(ctx, item) to wait"
                )
            self._accept(item)

    def put(self, ctx: Context, item: T) -> None:
        """Queue ``item``, blocking the calling thread until there is room.

        Thread-safe; not idempotent (each call queues one item). Do not call it from an
        event loop thread (it blocks): use ``submit``. Raises ``ctx``'s error
        (``Canceled``/``DeadlineExceeded``, as ``ctx.check()``) if ``ctx`` ends first or
        already ended, and ``ShuttingDown`` if the pool stops accepting meanwhile;
        either way the item was not taken. Raises ``TypeError`` if ``ctx`` is not a
        Context.

        Added in 0.1.
        """
        if type(ctx) is not Context:
            raise TypeError(f"tether: put needs a tether.Context, got {type(ctx).__name__}")
        stop = after_func(ctx, self._poke)
        try:
            with self._cond:
                while True:
                    if self._state not in (_NEW, _RUNNING):
                        raise self._closed_error()
                    if ctx.err() is not None:
                        self._rejected += 1
                        ctx.check()
                    if len(self._queue) < self._queue_size:
                        self._accept(item)
                        return
                    self._cond.wait()
        finally:
            stop()

    def _poke(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # -- introspection -------------------------------------------------------------------

    def stats(self) -> PoolStats:
        """A snapshot of the counters. Non-blocking, thread-safe, a new object each call;
        valid in every state (after the context already ended too). Raises nothing.

        Added in 0.1.
        """
        with self._cond:
            n = self._ledger.counts()
            running = sum(1 for _, _, e in self._in_flight.values() if e.outcome is None)
            return PoolStats(
                state=self._state,
                accepted=n["accepted"],
                rejected=self._rejected,
                queued=len(self._queue),
                in_flight=running,
                succeeded=n["succeeded"],
                failed=n["failed"],
                timed_out=n["timed_out"],
                cancelled=n["cancelled"],
                dropped=n["dropped"],
                abandoned=n["abandoned"],
                handed_over=n["handed_over"],
                handover_failed=n["handover_failed"],
                not_handed_over=n["not_handed_over"],
            )

    def accepting(self) -> bool:
        """True while ``submit`` would not raise ``ShuttingDown``.

        Non-blocking, thread-safe, idempotent; ``False`` once the pool's context ended
        (or already ended). Raises nothing.

        Added in 0.1.
        """
        with self._cond:
            return self._state in (_NEW, _RUNNING)

    # -- running -------------------------------------------------------------------------

    def run(self, ctx: Context) -> PoolStats:
        """Run the workers until ``ctx`` ends, drain, and return the final counters.

        Blocks the calling thread for the life of the pool (and starts ``workers``
        threads). When ``ctx`` ends it drains as the class docstring says; it returns
        once every worker exited, or ``grace`` seconds (on the context clock) after the
        drain context ended. If ``ctx`` already ended, the items queued before are
        drained (or dropped) at once. Thread-safe; runs once (a second call raises
        ``RuntimeError``). Raises ``TypeError`` if ``ctx`` is not a Context. Handler
        errors are not raised: they are logged, counted and reported — except a fatal
        one (``SystemExit``, ``KeyboardInterrupt``, from the handler or from
        ``on_unprocessed``), which is re-raised here once the pool stopped. If a worker
        thread cannot start, the pool stops taking work, reports its queue (reason
        ``"no worker"``), lets the started workers finish and raises ``RuntimeError``.

        Added in 0.1.
        """
        if type(ctx) is not Context:
            raise TypeError(f"tether: run needs a tether.Context, got {type(ctx).__name__}")
        with self._cond:
            if self._state != _NEW:
                raise RuntimeError("tether: a WorkerPool runs once; make a new one")
            self._state = _RUNNING
        work, cancel_work = drain_scope(ctx)
        start_error: RuntimeError | None = None
        try:
            for i in range(1, self._workers + 1):
                wname = f"{self._name}-{i}"
                with self._cond:
                    self._live += 1
                try:
                    start_thread(wname, self._work, work, wname, undo=self._unlive)
                except RuntimeError as e:
                    start_error = e
                    break
            if start_error is not None:
                self._log.error(
                    "worker pool %s stops: %s",
                    self._name,
                    start_error,
                    extra={"worker": self._name, "event": "pool_start_failed"},
                )
                self._stop_taking("no worker", None)  # the started workers finish theirs
            else:
                ctx.done().wait()
                self._close_intake(work)
            self._wait_workers(work)
            if work.err() is not None:
                with with_timeout(background(), self._grace) as grace:
                    self._stop_taking("drain deadline", grace)
                    self._wait_workers(grace)
                self._report_abandoned()
        finally:
            cancel_work()
            with self._cond:
                leftover = list(self._queue)  # empty unless run() was interrupted
                self._queue.clear()
                self._state = _STOPPED
                self._cond.notify_all()
            self._ledger.settle_many(leftover, "dropped", "shutdown")
        s = self.stats()
        self._log.info(
            "worker pool %s stopped: %d succeeded, %d failed, %d timed out, %d cancelled, "
            "%d dropped, %d abandoned",
            self._name,
            s.succeeded,
            s.failed,
            s.timed_out,
            s.cancelled,
            s.dropped,
            s.abandoned,
            extra={"worker": self._name, "event": "pool_stopped"},
        )
        if start_error is not None:
            raise start_error
        fatal = self._ledger.fatal
        if fatal is not None:
            raise fatal
        return s

    def _unlive(self) -> None:
        with self._cond:
            self._live -= 1

    def _close_intake(self, work: Context) -> None:
        with self._cond:
            self._state = _DRAINING if self._drain_queue else _STOPPING
            dropped = [] if self._drain_queue else list(self._queue)
            if not self._drain_queue:
                self._queue.clear()
            queued, running = len(self._queue), len(self._in_flight)
            self._cond.notify_all()
        self._log.info(
            "worker pool %s draining: %d queued, %d in flight",
            self._name,
            queued,
            running,
            extra={"worker": self._name, "event": "pool_draining"},
        )
        budget = work if work.err() is None else None
        self._ledger.settle_many(dropped, "dropped", "shutdown", budget=budget)

    def _stop_taking(self, reason: str, budget: Context | None) -> None:
        with self._cond:
            self._state = _STOPPING
            dropped = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        self._ledger.settle_many(dropped, "dropped", reason, budget=budget)

    def _wait_workers(self, until: Context | None) -> None:
        """Until every worker exited, or ``until`` ended (``None``: no limit)."""
        stop = after_func(until, self._poke) if until is not None else None
        try:
            with self._cond:
                while self._live and (until is None or until.err() is None):
                    self._cond.wait()
        finally:
            if stop is not None:
                stop()

    def _report_abandoned(self) -> None:
        with self._cond:
            stuck = [e for _, _, e in self._in_flight.values()]
        n = self._ledger.settle_many(stuck, "abandoned", "abandoned")
        if n:
            self._log.error(
                "worker pool %s abandoned %d item(s) still running %gs after the drain "
                "deadline (their handler ignores its context)",
                self._name,
                n,
                self._grace,
                extra={"worker": self._name, "event": "pool_abandoned"},
            )

    # -- workers -------------------------------------------------------------------------

    def _work(self, work: Context, wname: str) -> None:
        try:
            while True:
                with self._cond:
                    while True:
                        if self._state in (_STOPPING, _STOPPED) or work.err() is not None:
                            return  # (the drain ended: run() drops and reports the queue)
                        if self._queue:
                            entry = self._queue.popleft()
                            rid = new_request_id()
                            self._in_flight[entry.seq] = (wname, rid, entry)
                            self._cond.notify_all()  # room for put()
                            break
                        if self._state == _DRAINING:
                            return
                        self._cond.wait()
                try:
                    self._process(work, wname, rid, entry)
                finally:
                    with self._cond:
                        del self._in_flight[entry.seq]
                del entry
        finally:
            with self._cond:
                self._live -= 1
                self._cond.notify_all()

    def _process(self, work: Context, wname: str, rid: str, entry: Entry[T]) -> None:
        extra: dict[str, Any] = {"worker": wname, "request_id": rid}
        base = with_value(with_value(work, WORKER, wname), REQUEST_ID, rid)
        to = self._item_timeout
        error: BaseException | None = None
        with with_cancel(base) if to is None else with_timeout(base, to) as ictx:
            try:
                r = self._handler(ictx, entry.item)
                if asyncio.iscoroutine(r):
                    r.close()
                    raise TypeError(
                        "tether: the pool handler returned a coroutine, which never ran; "
                        "pass a plain function that does the work"
                    )
            except BaseException as e:  # every outcome goes to the ledger
                error = e
                if is_fatal(e):
                    self._ledger.note_fatal(e)
            ended = ictx.err()  # did the item's context end before the handler returned?
        # Classified by the item's context, not by what the handler raised or returned:
        # a handler cut short by the drain may return early or raise its client's error.
        if ended is not None and work.err() is not None:
            outcome, reason = "cancelled", "cancelled"
        elif isinstance(ended, DeadlineExceeded):
            outcome, reason = "timed_out", "timed_out"
        elif error is not None:
            outcome, reason = "failed", "failed"
        else:
            outcome, reason = "succeeded", ""
        if not self._ledger.settle(entry, outcome, reason, error=error, extra=extra):
            self._log.warning(
                "worker pool %s: abandoned item %s finished late (%s)",
                self._name,
                entry.label,
                "raised" if error is not None else "returned",
                extra={**extra, "event": "item_finished_late", "item": entry.label},
            )

    def __repr__(self) -> str:
        s = self.stats()
        return (
            f"<tether.lifecycle.WorkerPool {self._name!r} {s.state} workers={self._workers} "
            f"queued={s.queued} in_flight={s.in_flight}>"
        )
