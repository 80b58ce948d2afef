"""A bounded worker pool that drains on shutdown and reports what it did not process.

States, all changed under ``_cond``'s lock:

    new ──run()──▶ running ──ctx ends──▶ draining ──queue empty / drain ends──▶ stopped
                                   └──(drain_queue=False)──▶ stopping ─────────▶ stopped

``submit``/``put`` accept in ``new`` and ``running`` only. Workers take items in
``running`` and ``draining``; in ``stopping`` they finish the item in hand and exit.
Every accepted item ends in exactly one counter: succeeded, failed, timed_out,
cancelled (ended by the drain deadline while running) or dropped (never started) — and
the last two are also handed to ``on_unprocessed``. Nothing is silently lost.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .._context import Context, after_func, with_cancel, with_timeout, with_value
from .._errors import ContextError, DeadlineExceeded
from ._common import (
    LOG,
    REQUEST_ID,
    WORKER,
    QueueFull,
    ShuttingDown,
    check_callable,
    check_name,
    drain_scope,
    new_request_id,
    non_negative_seconds,
    positive_int,
    positive_seconds,
    start_thread,
)

__all__ = ["PoolStats", "WorkerPool"]

T = TypeVar("T")

_NEW, _RUNNING, _DRAINING, _STOPPING, _STOPPED = "new", "running", "draining", "stopping", "stopped"


@dataclass(frozen=True)
class PoolStats:
    """A snapshot of a ``WorkerPool``'s counters (``stats()``, and what ``run()`` returns).

    Every accepted item is, at any moment, in exactly one of: ``queued``,
    ``in_flight``, ``succeeded``, ``failed`` (the handler raised), ``timed_out`` (its
    item deadline passed), ``cancelled`` (the drain deadline ended it while running) or
    ``dropped`` (shutdown came before it started). ``abandoned`` counts the items still
    running when ``run()`` gave up waiting (they are also still ``in_flight``).
    ``rejected`` counts ``submit``/``put`` calls that raised.

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


class _Counts:
    __slots__ = (
        "abandoned",
        "accepted",
        "cancelled",
        "dropped",
        "failed",
        "rejected",
        "succeeded",
        "timed_out",
    )

    def __init__(self) -> None:
        self.accepted = self.rejected = self.succeeded = self.failed = 0
        self.timed_out = self.cancelled = self.dropped = self.abandoned = 0


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
        if on_unprocessed is not None:
            check_callable(on_unprocessed, "on_unprocessed")
        self._handler = handler
        self._workers = positive_int(workers, "workers")
        self._queue_size = positive_int(queue_size, "queue_size", minimum=0)
        self._item_timeout = positive_seconds(item_timeout, "item_timeout", allow_none=True)
        self._name = check_name(name, "pool")
        self._drain_queue = bool(drain_queue)
        self._grace = non_negative_seconds(grace, "grace")
        self._on_unprocessed = on_unprocessed
        self._log = logger if logger is not None else LOG
        self._cond = threading.Condition(threading.Lock())
        # _cond's lock protects the following.
        self._state = _NEW
        self._queue: collections.deque[tuple[int, T]] = collections.deque()
        self._in_flight: dict[int, tuple[str, str, T]] = {}  # seq -> (worker, request id, item)
        self._abandoned: set[int] = set()
        self._live = 0  # worker threads not yet exited
        self._seq = 0
        self._n = _Counts()

    # -- producers -----------------------------------------------------------------------

    def _accept(self, item: T) -> None:  # holds the lock
        self._seq += 1
        self._queue.append((self._seq, item))
        self._n.accepted += 1
        self._cond.notify_all()

    def _closed_error(self) -> ShuttingDown:
        self._n.rejected += 1
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
                self._n.rejected += 1
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
                        self._n.rejected += 1
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
            n = self._n
            return PoolStats(
                state=self._state,
                accepted=n.accepted,
                rejected=n.rejected,
                queued=len(self._queue),
                in_flight=len(self._in_flight),
                succeeded=n.succeeded,
                failed=n.failed,
                timed_out=n.timed_out,
                cancelled=n.cancelled,
                dropped=n.dropped,
                abandoned=n.abandoned,
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
        once every worker exited, or ``grace`` seconds after the drain context ended.
        If ``ctx`` already ended, the queued items are drained (or dropped) at once.
        Thread-safe; runs once (a second call raises ``RuntimeError``). Raises
        ``TypeError`` if ``ctx`` is not a Context. Handler errors are never raised: they
        are logged and counted.

        Added in 0.1.
        """
        if type(ctx) is not Context:
            raise TypeError(f"tether: run needs a tether.Context, got {type(ctx).__name__}")
        with self._cond:
            if self._state != _NEW:
                raise RuntimeError("tether: a WorkerPool runs once; make a new one")
            self._state = _RUNNING
            self._live = self._workers
        work, cancel_work = drain_scope(ctx)
        try:
            for i in range(1, self._workers + 1):
                wname = f"{self._name}-{i}"
                start_thread(wname, self._work, work, wname)
            ctx.done().wait()
            self._close_intake()
            self._wait_workers(work)
            if work.err() is not None:
                self._stop_taking("drain deadline")
                if self._live:
                    self._wait_workers(None, self._grace)
                    self._report_abandoned()
        finally:
            cancel_work()
            with self._cond:
                leftover = self._take_queue()  # empty unless run() was interrupted
                self._state = _STOPPED
                self._cond.notify_all()
            self._report_dropped(leftover, "shutdown")
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
        return s

    def _close_intake(self) -> None:
        with self._cond:
            self._state = _DRAINING if self._drain_queue else _STOPPING
            dropped = self._take_queue() if not self._drain_queue else []
            queued, running = len(self._queue), len(self._in_flight)
            self._cond.notify_all()
        self._log.info(
            "worker pool %s draining: %d queued, %d in flight",
            self._name,
            queued,
            running,
            extra={"worker": self._name, "event": "pool_draining"},
        )
        self._report_dropped(dropped, "shutdown")

    def _stop_taking(self, reason: str) -> None:
        with self._cond:
            self._state = _STOPPING
            dropped = self._take_queue()
            self._cond.notify_all()
        self._report_dropped(dropped, reason)

    def _take_queue(self) -> list[tuple[int, T]]:  # holds the lock
        items = list(self._queue)
        self._queue.clear()
        self._n.dropped += len(items)
        return items

    def _wait_workers(self, work: Context | None, timeout: float | None = None) -> None:
        """Until every worker exited, or ``work`` ended, or ``timeout`` real seconds."""
        stop = after_func(work, self._poke) if work is not None else None
        end = None if timeout is None else time.monotonic() + timeout
        try:
            with self._cond:
                while self._live and (work is None or work.err() is None):
                    if end is None:
                        self._cond.wait()
                    else:
                        left = end - time.monotonic()
                        if left <= 0:
                            return
                        self._cond.wait(left)
        finally:
            if stop is not None:
                stop()

    def _report_dropped(self, dropped: list[tuple[int, T]], reason: str) -> None:
        for seq, item in dropped:
            self._log.warning(
                "worker pool %s dropped item %d (%s): never started",
                self._name,
                seq,
                reason,
                extra={"worker": self._name, "event": "item_dropped", "item": seq},
            )
            self._unprocessed(item, reason)

    def _report_abandoned(self) -> None:
        with self._cond:
            stuck = [(s, v) for s, v in self._in_flight.items() if s not in self._abandoned]
            self._abandoned.update(s for s, _ in stuck)
            self._n.abandoned += len(stuck)
        for seq, (wname, rid, item) in stuck:
            self._log.error(
                "worker pool %s abandoned item %d: still running %gs after the drain "
                "deadline (its handler ignores its context)",
                self._name,
                seq,
                self._grace,
                extra={
                    "worker": wname,
                    "request_id": rid,
                    "event": "item_abandoned",
                    "item": seq,
                },
            )
            self._unprocessed(item, "abandoned")

    def _unprocessed(self, item: T, reason: str) -> None:
        if self._on_unprocessed is None:
            return
        try:
            self._on_unprocessed(item, reason)
        except Exception:
            self._log.exception(
                "worker pool %s: on_unprocessed raised",
                self._name,
                extra={"worker": self._name, "event": "on_unprocessed_failed"},
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
                            seq, item = self._queue.popleft()
                            rid = new_request_id()
                            self._in_flight[seq] = (wname, rid, item)
                            self._cond.notify_all()  # room for put()
                            break
                        if self._state == _DRAINING:
                            return
                        self._cond.wait()
                self._process(work, wname, seq, rid, item)
                del item
        finally:
            with self._cond:
                self._live -= 1
                self._cond.notify_all()

    def _process(self, work: Context, wname: str, seq: int, rid: str, item: T) -> None:
        extra: dict[str, Any] = {"worker": wname, "request_id": rid, "item": seq}
        base = with_value(with_value(work, WORKER, wname), REQUEST_ID, rid)
        to = self._item_timeout
        outcome = "succeeded"
        error: Exception | None = None
        with with_cancel(base) if to is None else with_timeout(base, to) as ictx:
            try:
                self._handler(ictx, item)
            except Exception as e:
                error = e
                err = ictx.err()
                if isinstance(e, ContextError) and isinstance(err, DeadlineExceeded):
                    outcome = "timed_out"
                elif isinstance(e, ContextError) and err is not None:
                    outcome = "cancelled"
                else:
                    outcome = "failed"
        with self._cond:
            del self._in_flight[seq]
            late = seq in self._abandoned
            self._abandoned.discard(seq)
            n = self._n
            setattr(n, outcome, getattr(n, outcome) + 1)
        if outcome == "failed":
            self._log.error(
                "worker pool %s: item %d failed: %r",
                self._name,
                seq,
                error,
                exc_info=error,
                extra={**extra, "event": "item_failed"},
            )
        elif outcome == "timed_out":
            self._log.warning(
                "worker pool %s: item %d timed out after %gs",
                self._name,
                seq,
                to,
                extra={**extra, "event": "item_timeout"},
            )
        elif outcome == "cancelled":
            self._log.warning(
                "worker pool %s: item %d cancelled by the drain deadline",
                self._name,
                seq,
                extra={**extra, "event": "item_cancelled"},
            )
            if not late:
                self._unprocessed(item, "cancelled")
        if late:
            self._log.warning(
                "worker pool %s: abandoned item %d finished late (%s)",
                self._name,
                seq,
                outcome,
                extra={**extra, "event": "item_finished_late"},
            )

    def __repr__(self) -> str:
        s = self.stats()
        return (
            f"<tether.lifecycle.WorkerPool {self._name!r} {s.state} workers={self._workers} "
            f"queued={s.queued} in_flight={s.in_flight}>"
        )
