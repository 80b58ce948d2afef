"""An interval scheduler: isolated runs, never overlapping, drained on shutdown.

Each job has its own control thread (named ``<scheduler>-<job>``) that sleeps until the
next tick on a tether deadline — so a ``FakeClock`` drives it — and then runs the job
*inline*: a run cannot overlap the previous one by construction. Ticks are on a fixed
grid (``start + k * interval``); a run that overruns makes the scheduler skip the ticks
it missed (counted and logged) and wait for the next one, never run them back to back.
A coroutine job runs on the event loop that ``arun`` was awaited on; its control
thread waits for it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .. import _clock
from .._context import CancelFunc, Context, with_cancel, with_deadline, with_timeout, with_value
from .._errors import ContextError, DeadlineExceeded
from ._common import (
    LOG,
    REQUEST_ID,
    WORKER,
    Fatal,
    call_async,
    check_callable,
    check_name,
    drain_scope,
    is_async,
    new_request_id,
    positive_seconds,
    start_thread,
    thread_future,
)

__all__ = ["JobStats", "Scheduler", "every"]

JobFunc = Callable[[Context], object] | Callable[[Context], Awaitable[object]]


@dataclass(frozen=True)
class JobStats:
    """A snapshot of one job's counters, from ``Scheduler.stats()``.

    ``runs`` started, ``failures`` (raised), ``timeouts`` (ended by the run's own
    timeout), ``cancelled`` (ended by the drain deadline), ``skipped`` ticks missed
    because a run overran, ``running`` now, ``next_run`` on the clock's scale while
    waiting (else ``None``), and the ``last_error`` a run raised.

    Added in 0.1.
    """

    __module__ = "tether.lifecycle"

    name: str
    interval: float
    timeout: float
    runs: int = 0
    failures: int = 0
    timeouts: int = 0
    cancelled: int = 0
    skipped: int = 0
    running: bool = False
    next_run: float | None = None
    last_error: BaseException | None = None


class _Job:
    __slots__ = ("fn", "immediately", "is_async", "stats")

    def __init__(self, fn: JobFunc, stats: JobStats, immediately: bool) -> None:
        self.fn = fn
        self.stats = stats
        self.immediately = immediately
        self.is_async = is_async(fn)


class Scheduler:
    """Runs jobs every N seconds, each run with its own context; a component.

    Register jobs with ``every()``, then run the scheduler as a component:
    ``sched.run(ctx)`` (plain-function jobs, blocks a thread) or ``await
    sched.arun(ctx)`` (plain and coroutine jobs), or hand it to a ``Supervisor``.

    Each run gets a fresh context: ``ctx``'s values plus ``WORKER`` (the job name) and
    a new ``REQUEST_ID``, and a deadline ``timeout`` seconds away (default: the
    interval — a run should not outlive its period). An exception in a run is logged
    (with those tags) and counted; it never stops the scheduler. Runs of one job never
    overlap: a run that overruns skips the ticks it missed. When ``ctx`` ends no new
    run starts; a run in progress is waited for. It runs under the drain context
    (``drain_scope``), so under a Supervisor it may finish within the drain deadline,
    and is cancelled (cause ``DrainTimeout``) when that passes.

    Added in 0.1.
    """

    __module__ = "tether.lifecycle"

    def __init__(self, *, name: str = "scheduler", logger: logging.Logger | None = None):
        self._name = check_name(name, "scheduler")
        self._log = logger if logger is not None else LOG
        self._lock = threading.Lock()
        # _lock protects the following, and every job's stats.
        self._jobs: dict[str, _Job] = {}
        self._started = False
        self._error: BaseException | None = None  # a BaseException that ended a job loop

    def every(
        self,
        interval: float,
        fn: JobFunc,
        *,
        name: str | None = None,
        timeout: float | None = None,
        immediately: bool = False,
    ) -> Scheduler:
        """Run ``fn(run_ctx)`` every ``interval`` seconds; returns the scheduler.

        ``fn`` is a plain function (runs on the job's thread) or a coroutine function
        (runs on the event loop of ``arun``). ``name`` (default ``fn.__name__``) tags the
        logs and the stats; ``timeout`` bounds each run (default ``interval``);
        ``immediately`` makes the first run start at once instead of one interval in.
        Non-blocking and thread-safe; not idempotent (each call adds a job). Call it
        before the scheduler runs: afterwards it raises ``RuntimeError``. No context is
        involved, so there is no ended-context case. Raises ``TypeError`` for a
        non-callable ``fn`` or a non-number, ``ValueError`` for a non-positive interval
        or timeout or a duplicate name.

        Added in 0.1.
        """
        check_callable(fn, "a scheduled job")
        iv = positive_seconds(interval, "interval")
        to = positive_seconds(timeout, "timeout", allow_none=True)
        assert iv is not None
        jname = check_name(name if name is not None else getattr(fn, "__name__", "job"), "job")
        with self._lock:
            if self._started:
                raise RuntimeError(
                    "tether: the scheduler is already running; register every job before "
                    "run()/arun(), or use a second Scheduler"
                )
            if jname in self._jobs:
                raise ValueError(f"tether: a job named {jname!r} exists; pass name=")
            stats = JobStats(name=jname, interval=iv, timeout=iv if to is None else to)
            self._jobs[jname] = _Job(fn, stats, bool(immediately))
        return self

    def stats(self) -> dict[str, JobStats]:
        """A snapshot of every job's counters, by job name.

        Non-blocking, thread-safe; a new dict on each call, valid before, during and
        after a run (a scheduler whose context already ended keeps its last counters).
        Raises nothing.

        Added in 0.1.
        """
        with self._lock:
            return {n: j.stats for n, j in self._jobs.items()}

    def next_run(self, name: str) -> float | None:
        """When job ``name`` runs next (clock seconds), or ``None`` if not waiting.

        ``None`` while the job runs, before the scheduler started its thread, and after
        its context ended. Once it returns a time, the wait is armed: a ``FakeClock``
        advanced to that time starts the run. Non-blocking, thread-safe, idempotent.
        Raises ``KeyError`` for an unknown job.

        Added in 0.1.
        """
        with self._lock:
            return self._jobs[name].stats.next_run

    # -- running -----------------------------------------------------------------------

    def _begin(self, *, need_loop: bool) -> list[_Job]:
        with self._lock:
            if self._started:
                raise RuntimeError("tether: a Scheduler runs once; make a new one")
            if not self._jobs:
                raise RuntimeError("tether: the scheduler has no jobs; call every() first")
            if not need_loop:
                for j in self._jobs.values():
                    if j.is_async:
                        raise TypeError(
                            f"tether: job {j.stats.name!r} is a coroutine function; run the "
                            "scheduler with `await sched.arun(ctx)` (a Supervisor does)"
                        )
            self._started = True
            return list(self._jobs.values())

    def run(self, ctx: Context) -> None:
        """Run every job until ``ctx`` ends; then wait for the runs in progress.

        Blocks the calling thread; starts one thread per job. If ``ctx`` already ended,
        returns at once without running anything. Thread-safe; runs once (a second call
        raises ``RuntimeError``). Raises ``TypeError`` if a job is a coroutine function
        (use ``arun``) or ``ctx`` is not a Context, ``RuntimeError`` with no jobs; a
        ``BaseException`` that is not an ``Exception`` (``SystemExit``) raised by a run
        stops every job and is re-raised here once their runs returned.

        Added in 0.1.
        """
        if type(ctx) is not Context:
            raise TypeError(f"tether: run needs a tether.Context, got {type(ctx).__name__}")
        jobs = self._begin(need_loop=False)
        anchor = _clock.now()
        work, cancel_work = drain_scope(ctx)
        ticks, stop_ticks = with_cancel(ctx)
        try:
            threads = [
                start_thread(
                    f"{self._name}-{j.stats.name}",
                    self._job_loop,
                    ticks,
                    stop_ticks,
                    work,
                    j,
                    anchor,
                )
                for j in jobs
            ]
            for t in threads:
                t.join()
        finally:
            stop_ticks()
            cancel_work()
        if self._error is not None:
            raise self._error

    async def arun(self, ctx: Context) -> None:
        """``run()`` for asyncio: coroutine jobs run on this loop, plain ones in threads.

        Suspends the calling task (never blocks the loop) until ``ctx`` ends and the runs
        in progress returned;
        if ``ctx`` already ended, returns at once. Thread-safe; runs once (a second
        call raises ``RuntimeError``). If the awaiting task is cancelled, the runs in
        progress are cancelled too (their contexts end) and ``CancelledError`` is
        raised without waiting for plain-function runs to notice. Raises ``TypeError``
        if ``ctx`` is not a Context, ``RuntimeError`` with no jobs, and re-raises a
        ``BaseException`` that stopped a job loop.

        Added in 0.1.
        """
        if type(ctx) is not Context:
            raise TypeError(f"tether: arun needs a tether.Context, got {type(ctx).__name__}")
        jobs = self._begin(need_loop=True)
        loop = asyncio.get_running_loop()
        anchor = _clock.now()
        work, cancel_work = drain_scope(ctx)
        ticks, stop_ticks = with_cancel(ctx)
        try:
            futs = [
                thread_future(
                    loop,
                    f"{self._name}-{j.stats.name}",
                    self._job_loop,
                    ticks,
                    stop_ticks,
                    work,
                    j,
                    anchor,
                    loop,
                )
                for j in jobs
            ]
            await asyncio.wait(futs)
        finally:
            stop_ticks()
            cancel_work()
        if self._error is not None:
            raise self._error

    def _update(self, job: _Job, **changes: Any) -> JobStats:
        with self._lock:
            job.stats = dataclasses.replace(job.stats, **changes)
            return job.stats

    def _job_loop(  # noqa: PLR0917
        self,
        ctx: Context,
        stop_all: CancelFunc,
        work: Context,
        job: _Job,
        anchor: float,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        interval = job.stats.interval
        k = 0 if job.immediately else 1
        try:
            while ctx.err() is None:
                tick = anchor + k * interval
                if not _due(tick, _clock.now(), interval):
                    with with_deadline(ctx, tick - _slack(interval, tick)) as wake:
                        self._update(job, next_run=tick)
                        wake.done().wait()
                    self._update(job, next_run=None)
                    if ctx.err() is not None:
                        break
                self._run_once(work, job, loop)
                nk = _next_tick(anchor, interval, k, _clock.now())
                if nk > k + 1:
                    skipped = nk - k - 1
                    s = self._update(job, skipped=job.stats.skipped + skipped)
                    self._log.warning(
                        "job %s overran its interval: skipped %d tick(s)",
                        s.name,
                        skipped,
                        extra={"worker": s.name, "event": "job_skipped", "skipped": skipped},
                    )
                k = nk
        except BaseException as e:  # SystemExit and the like: stop everything, re-raise
            with self._lock:
                if self._error is None:
                    self._error = e
            stop_all(e)

    def _run_once(self, work: Context, job: _Job, loop: asyncio.AbstractEventLoop | None) -> None:
        name = job.stats.name
        rid = new_request_id()
        extra = {"worker": name, "request_id": rid}
        base = with_value(with_value(work, WORKER, name), REQUEST_ID, rid)
        with with_timeout(base, job.stats.timeout) as rctx:
            self._update(job, running=True, runs=job.stats.runs + 1)
            try:
                if loop is None or not job.is_async:
                    job.fn(rctx)
                else:
                    fut = asyncio.run_coroutine_threadsafe(_run_async(job.fn, rctx), loop)
                    try:
                        fut.result()
                    except Fatal as f:
                        raise f.exc from None  # SystemExit: stops the scheduler (_job_loop)
            except Exception as e:
                err = rctx.err()
                if isinstance(e, ContextError) and isinstance(err, DeadlineExceeded):
                    self._update(job, timeouts=job.stats.timeouts + 1, last_error=e)
                    self._log.warning(
                        "job %s timed out after %gs",
                        name,
                        job.stats.timeout,
                        extra={**extra, "event": "job_timeout"},
                    )
                elif isinstance(e, ContextError) and err is not None:
                    self._update(job, cancelled=job.stats.cancelled + 1, last_error=e)
                    self._log.warning(
                        "job %s cancelled: %s",
                        name,
                        e,
                        extra={**extra, "event": "job_cancelled"},
                    )
                else:
                    self._update(job, failures=job.stats.failures + 1, last_error=e)
                    self._log.error(
                        "job %s failed: %r",
                        name,
                        e,
                        exc_info=e,
                        extra={**extra, "event": "job_failed"},
                    )
            finally:
                self._update(job, running=False)

    def __repr__(self) -> str:
        with self._lock:
            names = ", ".join(self._jobs)
            state = "running" if self._started else "new"
        return f"<tether.lifecycle.Scheduler {self._name!r} {state} jobs=[{names}]>"


# -- the schedule's arithmetic ------------------------------------------------------------
#
# Tick k is at anchor + k * interval, computed by multiplication, while clocks (a
# FakeClock advanced by `interval` n times, or a real one) get there by addition: the two
# differ by a few ulps of the clock's value. So a tick counts as due when the clock is
# within a tiny slack before it (a millionth of the interval, or a few hundred ulps of the
# clock's value, whichever is larger), and the catch-up after an overrun rounds with the
# same slack — else a tick due exactly now is skipped (issue 8 item 1) or never fires on
# a FakeClock that stopped a hair short of it (issue 13 item 15).


def _slack(interval: float, at: float) -> float:
    return max(interval * 1e-6, abs(at) * 2.0**-40)


def _due(tick: float, now: float, interval: float) -> bool:
    """Whether the tick at ``tick`` is due at ``now`` (within the slack)."""
    return tick - _slack(interval, tick) <= now


def _next_tick(anchor: float, interval: float, k: int, now: float) -> int:
    """After run ``k`` ended at ``now``: the index of the next tick to run.

    The first tick not yet past (a tick due exactly now runs now), and never ``k`` again.
    """
    return max(k + 1, math.ceil((now - anchor - _slack(interval, now)) / interval))


async def _run_async(fn: Callable[[Context], Any], ctx: Context) -> None:
    async with with_cancel(ctx) as c:  # interrupted when the run's context ends
        # A SystemExit raised in a task would escape the event loop: carry it out wrapped.
        await call_async(fn, c)


def every(
    interval: float,
    fn: JobFunc,
    *,
    name: str | None = None,
    timeout: float | None = None,
    immediately: bool = False,
) -> Scheduler:
    """A Scheduler with one job: ``Scheduler(name=...).every(interval, fn, ...)``.

    ``supervisor.add("cleanup", every(60, cleanup).arun)`` is the common use. Same
    arguments, checks and errors as ``Scheduler.every`` (``TypeError``/``ValueError``
    raise at once); non-blocking, thread-safe, a new scheduler on each call; no
    context is involved until it runs, so none can have already ended.

    Added in 0.1.
    """
    jname = name if name is not None else getattr(fn, "__name__", "job")
    return Scheduler(name=check_name(jname, "job")).every(
        interval, fn, name=jname, timeout=timeout, immediately=immediately
    )
