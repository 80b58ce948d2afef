"""The lifecycle's promise, as a property: every accepted item is done or reported, once.

Random handlers (succeed, raise an Exception, raise a BaseException, ignore the context,
return early when it ends) x random shutdown times x random drain deadlines, for the
WorkerPool (run in a thread, and as a component of a Supervisor on asyncio) and the
DetachedRunner (thread jobs and coroutine jobs). For every accepted item: exactly one of
done / reported (logged once as not done, and handed to on_unprocessed at most once —
exactly once unless its time budget ran out, which is counted), never both, never
neither; items that raised or never started are never "done"; the counters add up. Real time, in
milliseconds: the races are the point; margins are generous.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.conftest import eventually
from tests.test_scheduler import Bg

import tether
from tether import lifecycle

BEHAVIOURS = ("ok", "raise", "base", "ignore", "early")

CASES = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

case = given(
    plan=st.lists(st.sampled_from(BEHAVIOURS), min_size=1, max_size=12),
    shutdown_ms=st.integers(min_value=0, max_value=30),
    drain_ms=st.integers(min_value=1, max_value=40),
    grace_ms=st.integers(min_value=0, max_value=20),
)


class Boom(BaseException):
    """A BaseException that is not SystemExit: fatal, re-raised when the component stops."""


class Handlers:
    """Thread handlers following ``plan``; tracks which ones are still running."""

    def __init__(self, plan):
        self.plan = plan
        self.lock = threading.Lock()
        self.active = 0
        self.started = set()

    def __call__(self, ctx, i):
        with self.lock:
            self.active += 1
            self.started.add(i)
        try:
            how = self.plan[i]
            if how == "ok":
                time.sleep(0.002)
            elif how == "raise":
                raise ValueError(i)
            elif how == "base":
                raise Boom(i)
            elif how == "ignore":
                time.sleep(0.03)  # ignores its context altogether
            elif how == "early":
                ctx.done().wait(0.05)  # returns (no error) as soon as its context ends
        finally:
            with self.lock:
                self.active -= 1


class Log(logging.Handler):
    """The per-item "not done" records of one component (event ``item_*``/``detached_*``)."""

    EVENTS = ("failed", "timeout", "cancelled", "dropped", "abandoned")

    def __init__(self):
        super().__init__()
        self.items = []
        self.logger = logging.getLogger(f"promise.{id(self)}")
        self.logger.addHandler(self)
        self.logger.propagate = False

    def emit(self, record):
        event = getattr(record, "event", "")
        kind, _, what = event.partition("_")
        if kind in ("item", "detached") and what in self.EVENTS:
            self.items.append(int(record.item))

    def close(self):
        self.logger.removeHandler(self)
        super().close()


def check(plan, accepted, handed, log, stats, started):
    """The invariant, from the outside."""
    logged = {}
    for i in log.items:
        logged[i] = logged.get(i, 0) + 1
    assert all(n == 1 for n in logged.values()), f"logged twice: {log.items}"
    calls = [i for i, _ in handed]
    assert len(calls) == len(set(calls)), f"handed over twice: {handed}"
    assert set(calls) <= logged.keys() <= accepted
    done = accepted - logged.keys()
    for i in accepted:
        if plan[i] in ("raise", "base"):
            assert i in logged, f"item {i} ({plan[i]}) raised but was not reported"
        if i not in started:
            assert i in logged, f"item {i} never started but was not reported"
    outcomes = (
        stats.succeeded,
        stats.failed,
        stats.timed_out,
        stats.cancelled,
        stats.dropped,
        stats.abandoned,
    )
    assert stats.accepted == len(accepted) == sum(outcomes)
    assert stats.succeeded == len(done)
    assert sum(outcomes[1:]) == len(logged)
    assert stats.handed_over == len(calls)
    assert stats.handed_over + stats.not_handed_over == len(logged)


@CASES
@case
def test_pool_in_a_thread(plan, shutdown_ms, drain_ms, grace_ms):
    reported = []
    log = Log()
    handlers = Handlers(plan)
    pool = lifecycle.WorkerPool(
        handlers,
        workers=3,
        queue_size=len(plan),
        grace=grace_ms / 1000,
        on_unprocessed=lambda i, why: reported.append((i, why)),
        logger=log.logger,
    )
    accepted = set()
    drain, end_drain = tether.with_cancel(tether.background())
    with tether.with_cancel(tether.background()) as root:
        bg = Bg(pool.run, lifecycle.with_drain(root, drain))
        for i in range(len(plan)):
            pool.submit(i)
            accepted.add(i)
        time.sleep(shutdown_ms / 1000)
    time.sleep(drain_ms / 1000)
    end_drain(lifecycle.DrainTimeout())
    bg.join()
    if any(plan[i] == "base" for i in handlers.started):
        assert isinstance(bg.error, Boom)
    else:
        assert bg.error is None
    eventually(lambda: handlers.active == 0)
    check(plan, accepted, reported, log, pool.stats(), handlers.started)
    log.close()


@CASES
@case
def test_pool_under_a_supervisor_on_asyncio(plan, shutdown_ms, drain_ms, grace_ms):
    reported = []
    log = Log()
    handlers = Handlers(plan)
    pool = lifecycle.WorkerPool(
        handlers,
        workers=3,
        queue_size=len(plan),
        grace=grace_ms / 1000,
        on_unprocessed=lambda i, why: reported.append((i, why)),
        logger=log.logger,
    )
    accepted = set()

    async def main():
        sup = lifecycle.Supervisor(signals=(), drain_timeout=drain_ms / 1000, close_timeout=1)
        sup.add("pool", pool.run)
        task = asyncio.ensure_future(sup.arun())
        for i in range(len(plan)):
            pool.submit(i)
            accepted.add(i)
        await asyncio.sleep(shutdown_ms / 1000)
        sup.shutdown()
        try:
            await task
        except Boom:
            pass  # fatal: re-raised by arun() after the whole shutdown
        return sup.report

    report = asyncio.run(main())
    eventually(lambda: handlers.active == 0)
    eventually(lambda: pool.stats().state == "stopped")
    if any(plan[i] == "base" for i in handlers.started):
        assert isinstance(report.failed.get("pool"), Boom)
    check(plan, accepted, reported, log, pool.stats(), handlers.started)
    log.close()


@CASES
@case
def test_detached_thread_jobs(plan, shutdown_ms, drain_ms, grace_ms):
    reported = []
    log = Log()
    handlers = Handlers(plan)
    runner = lifecycle.DetachedRunner(
        limit=3,
        backlog=len(plan),
        grace=grace_ms / 1000,
        on_unprocessed=lambda job, why: reported.append((job.args[0], why)),
        logger=log.logger,
    )
    accepted = set()
    for i in range(len(plan)):
        runner.go(tether.background(), handlers, i, name=str(i))
        accepted.add(i)
    time.sleep(shutdown_ms / 1000)
    error = None
    with tether.with_timeout(tether.background(), (drain_ms + grace_ms) / 1000) as ctx:
        try:
            runner.close(ctx)
        except Boom as e:
            error = e
    if any(plan[i] == "base" for i in handlers.started):
        assert error is not None
    eventually(lambda: handlers.active == 0)
    check(plan, accepted, reported, log, runner.stats(), handlers.started)
    log.close()


@CASES
@case
def test_detached_coroutine_jobs(plan, shutdown_ms, drain_ms, grace_ms):
    reported = []
    log = Log()
    started = set()

    async def job(ctx, i):
        started.add(i)
        how = plan[i]
        if how == "ok":
            await asyncio.sleep(0.002)
        elif how == "raise":
            raise ValueError(i)
        elif how == "base":
            raise Boom(i)
        elif how == "ignore":
            end = time.monotonic() + 0.03
            while time.monotonic() < end:  # swallows its cancellation
                try:
                    await asyncio.sleep(0.005)
                except asyncio.CancelledError:
                    pass
        elif how == "early":
            try:
                await asyncio.wait_for(ctx.done(), 0.05)
            except (asyncio.CancelledError, TimeoutError):
                return  # returns early, no error

    runner = lifecycle.DetachedRunner(
        limit=3,
        backlog=len(plan),
        grace=grace_ms / 1000,
        on_unprocessed=lambda j, why: reported.append((j.args[0], why)),
        logger=log.logger,
    )
    accepted = set()

    async def main():
        for i in range(len(plan)):
            runner.go(tether.background(), job, i, name=str(i))
            accepted.add(i)
        await asyncio.sleep(shutdown_ms / 1000)
        with tether.with_timeout(tether.background(), (drain_ms + grace_ms) / 1000) as ctx:
            try:
                await runner.aclose(ctx)
            except Boom:
                pass

    asyncio.run(main())
    check(plan, accepted, reported, log, runner.stats(), started)
    log.close()
