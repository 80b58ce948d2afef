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
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVarTuple

from .._context import (
    CancelFunc,
    Context,
    Scope,
    after_func,
    background,
    with_cancel,
    with_deadline,
    with_timeout,
    with_value,
    without_cancel,
)
from .._errors import DeadlineExceeded
from ._common import (
    LOG,
    WORKER,
    DrainTimeout,
    QueueFull,
    ShuttingDown,
    check_callable,
    is_async,
    is_fatal,
    non_negative_seconds,
    positive_int,
    positive_seconds,
    start_thread,
    thread_future,
)
from ._ledger import Entry, Ledger

__all__ = ["DetachedJob", "DetachedRunner", "DetachedStats"]

Ts = TypeVarTuple("Ts")


@dataclass(frozen=True)
class DetachedStats:
    """A snapshot of a ``DetachedRunner``'s counters (``stats()``, ``close()``).

    Every accepted job is in exactly one of ``queued``, ``running``, ``succeeded``,
    ``failed`` (raised), ``timed_out`` (its own timeout ended it), ``cancelled`` (the
    close deadline or its loop's teardown ended it), ``dropped`` (it never started:
    the close deadline came first, its loop closed, no thread) or ``abandoned``
    (still running when ``close()`` stopped waiting; no longer ``running``).
    ``rejected`` counts ``go`` calls that raised; ``handed_over``,
    ``handover_failed`` and ``not_handed_over`` count the ``on_unprocessed`` calls, as
    for ``PoolStats``.

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
    handed_over: int = 0
    handover_failed: int = 0
    not_handed_over: int = 0


@dataclass(frozen=True)
class DetachedJob:
    """An accepted job that was not done, as handed to ``on_unprocessed(job, reason)``.

    ``fn(ctx, *args)`` is the job; ``ctx`` keeps the values of the context ``go`` was
    called with (request id, principal) without its cancellation, so the job can be
    written to a durable queue or run again: ``job.fn(job.ctx, *job.args)``.

    Added in 0.1.
    """

    __module__ = "tether.lifecycle"

    name: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    ctx: Context


class _Job:
    __slots__ = ("cancel", "entry", "loop", "timeout")

    def __init__(
        self,
        entry: Entry[DetachedJob],
        timeout: float,
        loop: asyncio.AbstractEventLoop | None,
    ) -> None:
        self.entry = entry
        self.timeout = timeout
        self.loop = loop
        self.cancel: CancelFunc | None = None

    @property
    def job(self) -> DetachedJob:
        return self.entry.item

    @property
    def name(self) -> str:
        return self.entry.item.name

    @property
    def seq(self) -> int:
        return self.entry.seq


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

    Every accepted job ends done (``succeeded``) or reported: ``failed``,
    ``timed_out``, ``cancelled`` (by the close deadline or its event loop closing),
    ``dropped`` (never started: the close deadline, a closed loop, no thread) or
    ``abandoned`` — each logged once and handed to ``on_unprocessed(job, reason)``
    (a ``DetachedJob``), if given.

    Graceful shutdown drains it: ``close(ctx)`` stops intake, lets the running and
    backlog jobs finish, then drops the backlog, cancels the running jobs (cause
    ``DrainTimeout``) ``grace`` seconds before ``ctx``'s deadline, and reports the
    jobs it did not finish — all before ``ctx`` ends, so the closer that calls it is
    not marked unfinished. Under a ``Supervisor``, register it with
    ``sup.on_close("detached", runner.close, timeout=...)`` before the components that
    feed it: it then drains after they stopped, so their last requests' detached work
    is still accepted.

    Added in 0.1. Changed: ``on_unprocessed``.
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
        on_unprocessed: Callable[[DetachedJob, str], object] | None = None,
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
        if on_unprocessed is not None:
            check_callable(on_unprocessed, "on_unprocessed")
        self._log = logger if logger is not None else LOG
        self._ledger: Ledger[DetachedJob] = Ledger(
            what=f"detached runner {name!r}",
            event_prefix="detached_",
            noun="job",
            log=self._log,
            on_unprocessed=on_unprocessed,
        )
        self._cond = threading.Condition(threading.Lock())
        # _cond's lock protects the following.
        self._closed = False
        self._abandon = False  # the close deadline passed: cancel whatever starts
        self._running: dict[int, _Job] = {}  # started, not finished (cancel set once started)
        self._slots = 0  # running slots taken: len(_running) plus jobs being started
        self._backlog: collections.deque[_Job] = collections.deque()
        self._rejected = 0
        # Loops seen tearing down under a job: their backlog jobs are dropped, not started.
        self._dead_loops: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()

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
                self._rejected += 1
                raise ShuttingDown(
                    f"tether: detached runner {self._name!r} is closed and accepts no new "
                    "jobs; do the work inline or drop it"
                )
            if self._slots >= self._limit and len(self._backlog) >= self._backlog_max:
                self._rejected += 1
                raise QueueFull(
                    f"tether: detached runner {self._name!r} is full ({self._limit} running, "
                    f"{self._backlog_max} waiting); shed the work, or raise limit=/backlog="
                )
            entry = self._ledger.accept(DetachedJob(jname, fn, tuple(args), base), jname)
            job = _Job(entry, self._timeout if to is None else to, loop)
            if self._slots >= self._limit:
                self._backlog.append(job)
                return
            self._slots += 1
        self._start(job)

    # -- starting and finishing ----------------------------------------------------------

    def _start(self, job: _Job | None) -> None:
        """Start a job that holds a slot (and the next ones if it cannot start).

        Called without the lock. A job that cannot start (its loop closed or tearing
        down, no thread) is reported ``dropped`` and passes its slot on.
        """
        while job is not None:
            why = self._try_start(job)
            if why is None:
                return
            self._log.error(
                "detached job %s could not start: %s",
                job.name,
                why,
                extra={"worker": job.name, "event": "detached_start_failed"},
            )
            self._ledger.settle(job.entry, "dropped", why)
            job = self._release(job)

    def _try_start(self, job: _Job) -> str | None:
        d = job.job
        if job.loop is not None and (job.loop.is_closed() or job.loop in self._dead_loops):
            return "its event loop is closed"
        scope = with_timeout(with_value(d.ctx, WORKER, d.name), job.timeout)
        job.cancel = scope[1]
        with self._cond:
            self._running[job.seq] = job
            abandon = self._abandon
        if abandon:
            scope[1](DrainTimeout())
        try:
            if job.loop is None:
                start_thread(f"{self._name}-{job.seq}", self._run_sync, job, scope)
                return None
            if _running_loop() is job.loop:
                self._spawn(job, scope)
            else:
                job.loop.call_soon_threadsafe(self._spawn, job, scope)
        except RuntimeError as e:  # no thread, or the loop closed meanwhile
            scope[1]()
            with self._cond:
                self._running.pop(job.seq, None)
            return "no thread" if job.loop is None else f"its event loop is closed ({e})"
        return None

    def _spawn(self, job: _Job, scope: Scope) -> None:  # on job.loop
        assert job.loop is not None
        task = job.loop.create_task(self._run_async(job, scope), name=f"{self._name}-{job.seq}")
        _tasks.add(task)
        task.add_done_callback(_tasks.discard)

    def _run_sync(self, job: _Job, scope: Scope) -> None:
        error: BaseException | None = None
        try:
            with scope as dctx:
                try:
                    r = job.job.fn(dctx, *job.job.args)
                    if asyncio.iscoroutine(r):
                        r.close()
                        raise TypeError(
                            "tether: the detached job returned a coroutine, which never ran; "
                            "pass the coroutine function itself (from async code) or a plain "
                            "function that does the work"
                        )
                except BaseException as e:  # every outcome goes to the ledger
                    error = e
                ended = dctx.err()
        finally:
            self._finish(job, _classify(ended, error), error)

    async def _run_async(self, job: _Job, scope: Scope) -> None:
        error: BaseException | None = None
        dctx = scope[0]
        torn_down = False
        ended: BaseException | None = None
        try:
            async with scope as dctx:
                try:
                    await job.job.fn(dctx, *job.job.args)
                except asyncio.CancelledError:
                    raise
                except BaseException as e:  # SystemExit included: it must not leave the task
                    error = e
                ended = dctx.err()
        except asyncio.CancelledError as e:
            # Not our context (the scope turns its own interruption into the context's
            # error): the loop is tearing down, or someone cancelled the task.
            error = e
            torn_down = True
            if job.loop is not None:
                with self._cond:
                    self._dead_loops.add(job.loop)
            raise
        except BaseException as e:  # the scope's error: the job's context interrupted it
            error = e
            ended = dctx.err()
        finally:
            outcome = "cancelled" if torn_down else _classify(ended, error)
            self._finish(job, outcome, error, "event loop closing" if torn_down else None)

    def _finish(
        self, job: _Job, outcome: str, error: BaseException | None, reason: str | None = None
    ) -> None:
        if error is not None and is_fatal(error):
            self._ledger.note_fatal(error)
        if outcome == "timed_out":
            reason = reason or f"timed out after {job.timeout:g}s"
        elif outcome == "cancelled":
            reason = reason or "the close deadline passed"
        if not self._ledger.settle(
            job.entry,
            outcome,
            reason or outcome,
            error=error if outcome == "failed" else None,
            extra={"worker": job.name},
        ):
            self._log.warning(
                "abandoned detached job %s finished late (%s)",
                job.name,
                "raised" if error is not None else "returned",
                extra={"worker": job.name, "event": "detached_finished_late"},
            )
        self._start(self._release(job))

    def _release(self, job: _Job) -> _Job | None:
        """Free ``job``'s slot: give it to the next backlog job (returned) or free it."""
        with self._cond:
            self._running.pop(job.seq, None)
            nxt = self._backlog.popleft() if self._backlog and not self._abandon else None
            if nxt is None:
                self._slots -= 1
            self._cond.notify_all()
        return nxt

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
        """Stop intake and drain: wait for running and backlog jobs, within ``ctx``.

        Blocks the calling thread (do not call it on the event loop that runs this
        runner's coroutine jobs: use ``aclose``). Returns the final counters once every
        job finished. Otherwise it gives up at the latest when ``ctx`` ends: if ``ctx``
        has a deadline, ``grace`` seconds before it the backlog is dropped and the
        running jobs' contexts are cancelled (cause ``DrainTimeout``), and
        ``grace / 4`` seconds before it the jobs still running are reported abandoned
        and ``close`` returns — before ``ctx`` ends, so a closer with that deadline
        finishes in time. Without a deadline, the same happens when ``ctx`` ends, with
        ``grace`` seconds for the cancelled jobs (on the context clock). An already
        ended ``ctx`` cancels at once. Thread-safe and idempotent: later calls wait the
        same way and return the counters. Raises ``TypeError`` if ``ctx`` is not a
        Context; job errors are never raised, except a fatal one (``SystemExit``,
        ``KeyboardInterrupt``) from a job or ``on_unprocessed``, re-raised here.

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
        deadline = ctx.deadline()
        g = self._grace
        if deadline is not None:
            soft_scope = with_deadline(ctx, deadline - g)
            hard_scope = with_deadline(ctx, deadline - g / 4)
        else:
            soft_scope = with_cancel(ctx)
            hard_scope = with_cancel(background())  # armed when the soft point passes
        with soft_scope as soft, hard_scope as hard:
            if self._wait_jobs(soft):
                return self._done()
            with self._cond:
                self._abandon = True
                dropped = [j.entry for j in self._backlog]
                self._backlog.clear()
                running_jobs = list(self._running.values())
                self._cond.notify_all()
            self._ledger.settle_many(dropped, "dropped", "the close deadline passed", budget=hard)
            for job in running_jobs:
                if job.cancel is not None:
                    job.cancel(DrainTimeout("the detached runner's close deadline passed"))
            if deadline is None:
                with with_timeout(background(), g) as grace:
                    self._wait_jobs(grace)
            else:
                self._wait_jobs(hard)
        with self._cond:
            stuck = [j.entry for j in self._running.values()]
        n = self._ledger.settle_many(stuck, "abandoned", "abandoned")
        if n:
            self._log.error(
                "detached runner %s abandoned %d job(s) still running after the close "
                "deadline (they ignore their context)",
                self._name,
                n,
                extra={"worker": self._name, "event": "detached_runner_abandoned"},
            )
        return self._done()

    def _wait_jobs(self, until: Context) -> bool:
        """Wait until no job runs or waits (``True``) or ``until`` ended (``False``)."""
        stop = after_func(until, self._poke)
        try:
            with self._cond:
                while self._slots or self._backlog:
                    if until.err() is not None:
                        return False
                    self._cond.wait()
                return True
        finally:
            stop()

    def _done(self) -> DetachedStats:
        fatal = self._ledger.fatal
        if fatal is not None:
            raise fatal
        return self.stats()

    def _stats_locked(self) -> DetachedStats:
        n = self._ledger.counts()
        running = sum(1 for j in self._running.values() if j.entry.outcome is None)
        return DetachedStats(
            closed=self._closed,
            accepted=n["accepted"],
            rejected=self._rejected,
            queued=len(self._backlog),
            running=running,
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


def _classify(ended: BaseException | None, error: BaseException | None) -> str:
    """A job's outcome, by its context first: did it end before the job returned?"""
    if isinstance(ended, DeadlineExceeded):
        return "timed_out"
    if ended is not None:
        return "cancelled"  # the close deadline (the job's own ctx never ends otherwise)
    return "failed" if error is not None else "succeeded"
