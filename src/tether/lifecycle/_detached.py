"""Detached work: fire-and-forget that outlives the request, bounded, drained on shutdown.

A job is accepted into one of ``limit`` running slots or, when all are busy, into a
FIFO backlog of at most ``backlog`` jobs; beyond that ``go`` raises ``QueueFull``.
Plain functions run on a thread of their own (started per job, so an idle runner holds
no thread); coroutine functions run as tasks on the event loop ``go`` was called from.
When a job ends, the slot goes to the oldest backlog job, whichever kind it is.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVarTuple

from .._context import (
    CancelFunc,
    Context,
    Scope,
    after_func,
    with_timeout,
    with_value,
    without_cancel,
)
from .._errors import ContextError, DeadlineExceeded
from ._common import (
    LOG,
    WORKER,
    DrainTimeout,
    QueueFull,
    ShuttingDown,
    check_callable,
    is_async,
    non_negative_seconds,
    positive_int,
    positive_seconds,
    start_thread,
    thread_future,
)

__all__ = ["DetachedRunner", "DetachedStats"]

Ts = TypeVarTuple("Ts")


@dataclass(frozen=True)
class DetachedStats:
    """A snapshot of a ``DetachedRunner``'s counters (``stats()``, ``close()``).

    Every accepted job is in exactly one of ``queued``, ``running``, ``succeeded``,
    ``failed`` (raised), ``timed_out`` (its own timeout ended it), ``cancelled`` (the
    close deadline ended it) or ``dropped`` (the close deadline came before it
    started). ``abandoned`` counts jobs still running when ``close()`` stopped waiting
    (also still ``running``); ``rejected`` counts ``go`` calls that raised.

    Added in 0.1.
    """

    __module__ = "tether.lifecycle"

    closed: bool
    accepted: int = 0
    rejected: int = 0
    queued: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    timed_out: int = 0
    cancelled: int = 0
    dropped: int = 0
    abandoned: int = 0


class _Job:
    __slots__ = ("args", "base", "cancel", "fn", "loop", "name", "seq", "timeout")

    def __init__(  # noqa: PLR0917
        self,
        seq: int,
        name: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        base: Context,
        timeout: float,
        loop: asyncio.AbstractEventLoop | None,
    ) -> None:
        self.seq = seq
        self.name = name
        self.fn = fn
        self.args = args
        self.base = base
        self.timeout = timeout
        self.loop = loop
        self.cancel: CancelFunc | None = None


class DetachedRunner:
    """Runs ``fn(detached_ctx, *args)`` off the request, bounded, drained on shutdown.

    ``runner.go(ctx, fn, *args)`` returns at once; ``fn`` runs with
    ``with_timeout(without_cancel(ctx), timeout)``: it keeps the request's values
    (request id, principal) but survives the request's end, bounded by its own
    ``timeout``. At most ``limit`` jobs run at once and at most ``backlog`` wait; when
    both are full ``go`` raises ``QueueFull`` — it never blocks and never runs the job
    inline (that would put a fire-and-forget write on the request's critical path exactly
    when the system is overloaded). Plain functions run on a thread per job; coroutine
    functions run on the event loop that called ``go``.

    Graceful shutdown drains it: ``close(ctx)`` stops intake, lets the running and
    backlog jobs finish until ``ctx`` ends, then drops the backlog, cancels the running
    jobs (cause ``DrainTimeout``), and reports every job it did not finish in the log.
    Under a ``Supervisor``, register it with ``sup.on_close("detached", runner.close,
    timeout=...)`` before the components that feed it: it then drains after they
    stopped, so their last requests' detached work is still accepted.

    Added in 0.1.
    """

    __module__ = "tether.lifecycle"

    def __init__(
        self,
        *,
        limit: int = 8,
        backlog: int = 100,
        timeout: float = 30.0,
        name: str = "detached",
        grace: float = 1.0,
        logger: logging.Logger | None = None,
    ) -> None:
        self._limit = positive_int(limit, "limit")
        self._backlog_max = positive_int(backlog, "backlog", minimum=0)
        t = positive_seconds(timeout, "timeout")
        assert t is not None
        self._timeout = t
        if not isinstance(name, str) or not name:
            raise TypeError(f"tether: a runner name must be a non-empty str, got {name!r:.40}")
        self._name = name
        self._grace = non_negative_seconds(grace, "grace")
        self._log = logger if logger is not None else LOG
        self._cond = threading.Condition(threading.Lock())
        # _cond's lock protects the following.
        self._closed = False
        self._abandon = False  # the close deadline passed: cancel whatever starts
        self._running: dict[int, _Job] = {}  # started, not finished (cancel set once started)
        self._slots = 0  # running slots taken: len(_running) plus jobs being started
        self._backlog: collections.deque[_Job] = collections.deque()
        self._seq = 0
        self._n: dict[str, int] = dict.fromkeys(
            ("accepted", "rejected", "succeeded", "failed", "timed_out", "cancelled"), 0
        )
        self._n["dropped"] = self._n["abandoned"] = 0
        self._abandoned: set[int] = set()

    def go(
        self,
        ctx: Context,
        fn: Callable[[Context, *Ts], object] | Callable[[Context, *Ts], Awaitable[object]],
        *args: *Ts,
        name: str | None = None,
        timeout: float | None = None,
    ) -> None:
        """Run ``fn(detached_ctx, *args)`` soon, detached from ``ctx``'s cancellation.

        Never blocks: the job starts now if a slot is free, else waits in the backlog.
        ``detached_ctx`` is ``with_timeout(without_cancel(ctx), timeout)`` (default: the
        runner's timeout), with ``WORKER`` set to ``name`` (default ``fn.__qualname__``),
        created when the job starts. A ``ctx`` that already ended is fine: its values are
        what the job keeps. ``fn`` may be a coroutine function only when ``go`` is called
        from a running event loop; it then runs on that loop. Thread-safe; not
        idempotent (each call is one job). Exceptions from ``fn`` are logged, never
        raised here.

        Raises ``QueueFull`` when ``limit`` jobs run and ``backlog`` wait, and
        ``ShuttingDown`` after ``close()`` started (the job was not taken either way);
        ``TypeError`` for a non-Context ``ctx``, a non-callable ``fn``, or a coroutine
        function outside a running loop; ``ValueError`` for a non-positive timeout.

        Added in 0.1.
        """
        check_callable(fn, "a detached job")
        base = without_cancel(ctx)  # raises TypeError for a bad ctx
        to = positive_seconds(timeout, "timeout", allow_none=True)
        loop: asyncio.AbstractEventLoop | None = None
        if is_async(fn):
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                raise TypeError(
                    "tether: go() got a coroutine function outside a running event loop; "
                    "call go() from async code, or pass a plain function"
                ) from None
        jname = name if name is not None else getattr(fn, "__qualname__", repr(fn))
        with self._cond:
            if self._closed:
                self._n["rejected"] += 1
                raise ShuttingDown(
                    f"tether: detached runner {self._name!r} is closed and accepts no new "
                    "jobs; do the work inline or drop it"
                )
            if self._slots >= self._limit and len(self._backlog) >= self._backlog_max:
                self._n["rejected"] += 1
                raise QueueFull(
                    f"tether: detached runner {self._name!r} is full ({self._limit} running, "
                    f"{self._backlog_max} waiting); shed the work, or raise limit=/backlog="
                )
            self._seq += 1
            job = _Job(self._seq, jname, fn, args, base, self._timeout if to is None else to, loop)
            self._n["accepted"] += 1
            if self._slots >= self._limit:
                self._backlog.append(job)
                return
            self._slots += 1
        self._start(job)

    # -- starting and finishing ----------------------------------------------------------

    def _start(self, job: _Job) -> None:
        """Start a job that holds a slot. Called without the lock."""
        scope = with_timeout(with_value(job.base, WORKER, job.name), job.timeout)
        job.cancel = scope[1]
        with self._cond:
            self._running[job.seq] = job
            abandon = self._abandon
        if abandon:
            scope[1](DrainTimeout())
        if job.loop is None:
            start_thread(f"{self._name}-{job.seq}", self._run_sync, job, scope)
            return
        loop = job.loop
        try:
            if _running_loop() is loop:
                self._spawn(job, scope)
            else:
                loop.call_soon_threadsafe(self._spawn, job, scope)
        except RuntimeError:  # its event loop is closed: it can never run
            scope[1]()
            self._log.error(
                "detached job %s dropped: its event loop is closed",
                job.name,
                extra={"worker": job.name, "event": "detached_dropped"},
            )
            self._finish(job, "dropped")

    def _spawn(self, job: _Job, scope: Scope) -> None:  # on job.loop
        assert job.loop is not None
        task = job.loop.create_task(self._run_async(job, scope), name=f"{self._name}-{job.seq}")
        _tasks.add(task)
        task.add_done_callback(_tasks.discard)

    def _run_sync(self, job: _Job, scope: Scope) -> None:
        outcome = "failed"
        try:
            with scope as dctx:
                try:
                    job.fn(dctx, *job.args)
                    outcome = "succeeded"
                except Exception as e:
                    outcome = self._outcome(job, dctx, e)
        finally:
            self._finish(job, outcome)

    async def _run_async(self, job: _Job, scope: Scope) -> None:
        outcome = "failed"
        dctx = scope[0]
        try:
            async with scope as dctx:
                await job.fn(dctx, *job.args)
            outcome = "succeeded"
        except asyncio.CancelledError:  # the loop is shutting down under us
            outcome = "cancelled"
            raise
        except Exception as e:
            outcome = self._outcome(job, dctx, e)
        finally:
            self._finish(job, outcome)

    def _outcome(self, job: _Job, dctx: Context, e: Exception) -> str:
        err = dctx.err()
        extra = {"worker": job.name, "event": "detached_failed"}
        if isinstance(e, ContextError) and isinstance(err, DeadlineExceeded):
            self._log.warning(
                "detached job %s timed out after %gs",
                job.name,
                job.timeout,
                extra={**extra, "event": "detached_timeout"},
            )
            return "timed_out"
        if isinstance(e, ContextError) and err is not None:
            self._log.warning(
                "detached job %s cancelled by the close deadline",
                job.name,
                extra={**extra, "event": "detached_cancelled"},
            )
            return "cancelled"
        self._log.error("detached job %s failed: %r", job.name, e, exc_info=e, extra=extra)
        return "failed"

    def _finish(self, job: _Job, outcome: str) -> None:
        with self._cond:
            self._running.pop(job.seq, None)
            self._n[outcome] += 1
            late = job.seq in self._abandoned
            self._abandoned.discard(job.seq)
            nxt = self._backlog.popleft() if self._backlog and not self._abandon else None
            if nxt is None:
                self._slots -= 1
            self._cond.notify_all()
        if late:
            self._log.warning(
                "abandoned detached job %s finished late (%s)",
                job.name,
                outcome,
                extra={"worker": job.name, "event": "detached_finished_late"},
            )
        if nxt is not None:
            self._start(nxt)

    # -- introspection -------------------------------------------------------------------

    def stats(self) -> DetachedStats:
        """A snapshot of the counters. Non-blocking, thread-safe, a new object each call;
        valid before and after ``close()`` (and whatever contexts already ended).
        Raises nothing.

        Added in 0.1.
        """
        with self._cond:
            return self._stats_locked()

    # -- shutdown ------------------------------------------------------------------------

    def close(self, ctx: Context) -> DetachedStats:
        """Stop intake and drain: wait for running and backlog jobs until ``ctx`` ends.

        Blocks the calling thread (do not call it on the event loop that runs this
        runner's coroutine jobs: use ``aclose``). Returns the final counters once every
        job finished; or, when ``ctx`` ends first (already ended included), drops the
        backlog, cancels the running jobs' contexts (cause ``DrainTimeout``), waits
        ``grace`` real seconds for them, logs each job it did not finish, and returns.
        Thread-safe and idempotent: later calls wait the same way and return the
        counters. Raises ``TypeError`` if ``ctx`` is not a Context; job errors are never
        raised.

        Added in 0.1.
        """
        if type(ctx) is not Context:
            raise TypeError(f"tether: close needs a tether.Context, got {type(ctx).__name__}")
        with self._cond:
            first = not self._closed
            self._closed = True
            running, queued = self._slots, len(self._backlog)
        if first:
            self._log.info(
                "detached runner %s closing: %d running, %d waiting",
                self._name,
                running,
                queued,
                extra={"worker": self._name, "event": "detached_closing"},
            )
        stop = after_func(ctx, self._poke)
        try:
            with self._cond:
                while (self._slots or self._backlog) and ctx.err() is None:
                    self._cond.wait()
                if not (self._slots or self._backlog):
                    return self._stats_locked()
                self._abandon = True
                dropped = list(self._backlog)
                self._backlog.clear()
                self._n["dropped"] += len(dropped)
                running_jobs = list(self._running.values())
        finally:
            stop()
        for job in dropped:
            self._log.warning(
                "detached job %s dropped: the close deadline came before it started",
                job.name,
                extra={"worker": job.name, "event": "detached_dropped"},
            )
        for job in running_jobs:
            if job.cancel is not None:
                job.cancel(DrainTimeout("the detached runner's close deadline passed"))
        end = time.monotonic() + self._grace
        with self._cond:
            while self._slots and (left := end - time.monotonic()) > 0:
                self._cond.wait(left)
            stuck = [j for j in self._running.values() if j.seq not in self._abandoned]
            self._abandoned.update(j.seq for j in stuck)
            self._n["abandoned"] += len(stuck)
        for job in stuck:
            self._log.error(
                "detached job %s abandoned: still running %gs after the close deadline "
                "(it ignores its context)",
                job.name,
                self._grace,
                extra={"worker": job.name, "event": "detached_abandoned"},
            )
        return self.stats()

    def _stats_locked(self) -> DetachedStats:
        return DetachedStats(
            closed=self._closed, queued=len(self._backlog), running=self._slots, **self._n
        )

    async def aclose(self, ctx: Context) -> DetachedStats:
        """``close()`` for asyncio: waits in a helper thread, so the loop keeps running.

        Suspends the calling task (never blocks the loop) until ``close(ctx)`` returns.
        Thread-safe and idempotent like ``close``; an already ended ``ctx`` drains at
        once. If the awaiting task is cancelled, the close goes on in its thread and
        ``CancelledError`` is raised. Raises ``TypeError`` if ``ctx`` is not a Context.

        Added in 0.1.
        """
        if type(ctx) is not Context:
            raise TypeError(f"tether: aclose needs a tether.Context, got {type(ctx).__name__}")
        loop = asyncio.get_running_loop()
        return await thread_future(loop, f"{self._name}-close", self.close, ctx)

    def _poke(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def __repr__(self) -> str:
        s = self.stats()
        state = "closed" if s.closed else "open"
        return (
            f"<tether.lifecycle.DetachedRunner {self._name!r} {state} "
            f"running={s.running}/{self._limit} queued={s.queued}/{self._backlog_max}>"
        )


_tasks: set[asyncio.Task[None]] = set()  # strong references to running detached tasks


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
