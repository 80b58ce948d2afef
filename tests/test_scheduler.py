"""Scheduler: isolated runs on a fixed grid, never overlapping, drained on shutdown.

Time is a FakeClock throughout: the job threads sleep on tether deadlines, so
``clock.advance`` starts runs deterministically. ``next_run(name)`` returning a time
means the wait is armed.
"""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.conftest import eventually

import tether
from tether import lifecycle
from tether.testing import FakeClock


class Bg:
    """Run ``fn`` in a thread, keep its outcome."""

    def __init__(self, fn, *args):
        self.result = None
        self.error = None
        self._t = threading.Thread(target=self._run, args=(fn, *args))
        self._t.start()

    def _run(self, fn, *args):
        try:
            self.result = fn(*args)
        except BaseException as e:
            self.error = e

    def join(self, timeout=10):
        self._t.join(timeout)
        assert not self._t.is_alive(), "still running"
        return self


def armed(sched, name="job"):
    """Wait until job ``name`` sleeps towards a tick still in the future; return it."""

    def ok():
        t = sched.next_run(name)
        return t is not None and t > tether_now()

    eventually(ok)
    return sched.next_run(name)


def tether_now():
    from tether import _clock

    return _clock.now()


def test_runs_every_interval_each_with_a_fresh_context(fake_clock):
    seen = []

    def job(ctx):
        seen.append(
            (
                ctx.value(lifecycle.REQUEST_ID),
                ctx.value(lifecycle.WORKER),
                ctx.remaining(),
                lifecycle.log_extra(ctx),
            )
        )

    sched = lifecycle.Scheduler().every(10, job, timeout=3)
    with tether.with_cancel(tether.background()) as ctx:
        bg = Bg(sched.run, ctx)
        t0 = armed(sched)
        fake_clock.advance(9.9)
        assert seen == []
        fake_clock.advance(0.1)
        eventually(lambda: len(seen) == 1)
        t1 = armed(sched)
        assert t1 == pytest.approx(t0 + 10)
        fake_clock.advance(10)
        eventually(lambda: len(seen) == 2)
        armed(sched)
    bg.join()
    (rid1, w1, rem1, extra1), (rid2, w2, _, _) = seen
    assert rid1 != rid2
    assert len(rid1) == 16
    assert w1 == w2 == "job"
    assert rem1 == pytest.approx(3)
    assert extra1 == {"worker": "job", "request_id": rid1}
    s = sched.stats()["job"]
    assert (s.runs, s.failures, s.skipped, s.running, s.next_run) == (2, 0, 0, False, None)


def test_a_failing_run_is_logged_and_the_next_one_still_runs(fake_clock, caplog):
    calls = []

    def job(ctx):
        calls.append(ctx.value(lifecycle.REQUEST_ID))
        if len(calls) == 1:
            raise ValueError("boom")

    sched = lifecycle.every(5, job)
    with tether.with_cancel(tether.background()) as ctx:
        bg = Bg(sched.run, ctx)
        armed(sched)
        fake_clock.advance(5)
        eventually(lambda: len(calls) == 1)
        armed(sched)
        fake_clock.advance(5)
        eventually(lambda: len(calls) == 2)
        armed(sched)
    bg.join()
    assert bg.error is None
    s = sched.stats()["job"]
    assert (s.runs, s.failures) == (2, 1)
    assert isinstance(s.last_error, ValueError)
    (rec,) = [r for r in caplog.records if getattr(r, "event", "") == "job_failed"]
    assert rec.levelno == logging.ERROR
    assert rec.worker == "job"
    assert rec.request_id == calls[0]
    assert rec.exc_info[1].args == ("boom",)


def test_runs_never_overlap_and_missed_ticks_are_skipped(fake_clock, caplog):
    release = threading.Event()
    active = []
    peak = []

    def job(ctx):
        active.append(1)
        peak.append(len(active))
        if len(peak) == 1:
            release.wait(10)
        active.pop()

    sched = lifecycle.Scheduler().every(10, job, timeout=100)
    with tether.with_cancel(tether.background()) as ctx:
        bg = Bg(sched.run, ctx)
        t0 = armed(sched)
        fake_clock.advance(10)
        eventually(lambda: sched.stats()["job"].running)
        fake_clock.advance(30)  # three more ticks pass while the first run is busy
        assert sched.next_run("job") is None
        release.set()
        # ticks t0+10 and t0+20 are skipped; t0+30 is due now and runs at once
        eventually(lambda: sched.stats()["job"].runs == 2)
        assert armed(sched) == pytest.approx(t0 + 40)
    bg.join()
    assert max(peak) == 1
    assert sched.stats()["job"].skipped == 2
    assert any(getattr(r, "event", "") == "job_skipped" for r in caplog.records)


def test_a_run_that_outlives_its_timeout_is_counted(fake_clock, caplog):
    def job(ctx):
        ctx.done().wait(10)
        ctx.check()

    sched = lifecycle.every(10, job, timeout=2)  # default would be the interval
    with tether.with_cancel(tether.background()) as ctx:
        bg = Bg(sched.run, ctx)
        armed(sched)
        fake_clock.advance(10)
        eventually(lambda: sched.stats()["job"].running)
        fake_clock.advance(2)
        eventually(lambda: sched.stats()["job"].timeouts == 1)
    bg.join()
    s = sched.stats()["job"]
    assert (s.runs, s.timeouts, s.failures) == (1, 1, 0)
    assert any(getattr(r, "event", "") == "job_timeout" for r in caplog.records)


def test_default_timeout_is_the_interval(fake_clock):
    sched = lifecycle.every(7, lambda ctx: None)
    assert sched.stats()["<lambda>"].timeout == 7


def test_shutdown_waits_for_the_running_one_which_keeps_its_context_under_a_drain(fake_clock):
    started = threading.Event()
    release = threading.Event()
    seen = []

    def job(ctx):
        started.set()
        release.wait(10)
        seen.append(ctx.err())

    sched = lifecycle.every(10, job)
    drain, stop_drain = tether.with_cancel(tether.background())
    with tether.with_cancel(tether.background()) as root:
        bg = Bg(sched.run, lifecycle.with_drain(root, drain))
        armed(sched)
        fake_clock.advance(10)
        assert started.wait(10)
    # root is cancelled: no new run, but the one in progress goes on
    eventually(lambda: sched.next_run("job") is None)
    assert bg._t.is_alive()
    release.set()
    bg.join()
    stop_drain()
    assert seen == [None]  # its context was not cancelled by the shutdown
    assert sched.stats()["job"].runs == 1


def test_the_drain_deadline_cancels_the_running_one(fake_clock):
    def job(ctx):
        ctx.done().wait(10)
        ctx.check()

    sched = lifecycle.every(10, job, timeout=100)
    drain, stop_drain = tether.with_cancel(tether.background())
    with tether.with_cancel(tether.background()) as root:
        bg = Bg(sched.run, lifecycle.with_drain(root, drain))
        armed(sched)
        fake_clock.advance(10)
        eventually(lambda: sched.stats()["job"].running)
    stop_drain(lifecycle.DrainTimeout())
    bg.join()
    s = sched.stats()["job"]
    assert (s.cancelled, s.failures) == (1, 0)
    assert isinstance(s.last_error.__cause__, lifecycle.DrainTimeout)


def test_without_a_drain_the_running_one_is_cancelled_with_the_scheduler(fake_clock):
    def job(ctx):
        ctx.done().wait(10)

    sched = lifecycle.every(10, job)
    with tether.with_cancel(tether.background()) as ctx:
        bg = Bg(sched.run, ctx)
        armed(sched)
        fake_clock.advance(10)
        eventually(lambda: sched.stats()["job"].running)
    bg.join()
    assert sched.stats()["job"].runs == 1


def test_immediately_runs_at_start(fake_clock):
    ran = threading.Event()
    sched = lifecycle.every(60, lambda ctx: ran.set(), name="now", immediately=True)
    with tether.with_cancel(tether.background()) as ctx:
        bg = Bg(sched.run, ctx)
        assert ran.wait(10)
        armed(sched, "now")
    bg.join()


def test_two_jobs_run_independently(fake_clock):
    a, b = [], []
    sched = lifecycle.Scheduler(name="s")
    sched.every(2, lambda ctx: a.append(1), name="a").every(3, lambda ctx: b.append(1), name="b")
    with tether.with_cancel(tether.background()) as ctx:
        bg = Bg(sched.run, ctx)
        armed(sched, "a")
        armed(sched, "b")
        for _ in range(6):
            fake_clock.advance(1)
            armed(sched, "a")
            armed(sched, "b")
    bg.join()
    assert (len(a), len(b)) == (3, 2)
    assert "jobs=[a, b]" in repr(sched)


def test_an_ended_context_runs_nothing():
    ran = []
    sched = lifecycle.every(1, ran.append, immediately=True)
    ctx, cancel = tether.with_cancel(tether.background())
    cancel()
    sched.run(ctx)
    assert ran == []


def test_system_exit_in_a_run_stops_the_scheduler_and_is_reraised(fake_clock):
    def job(ctx):
        raise SystemExit(3)

    other = []
    sched = lifecycle.Scheduler().every(10, job).every(10, other.append, name="other")
    with tether.with_cancel(tether.background()) as ctx:
        bg = Bg(sched.run, ctx)
        armed(sched)
        fake_clock.advance(10)
        bg.join()
    assert isinstance(bg.error, SystemExit)
    assert bg.error.code == 3


def test_arun_runs_coroutine_and_plain_jobs():
    async def main():
        async_ctx = []
        plain = []

        async def ajob(ctx):
            await asyncio.sleep(0)
            async_ctx.append((ctx.value(lifecycle.WORKER), ctx.err()))

        sched = lifecycle.Scheduler()
        sched.every(5, ajob).every(5, lambda ctx: plain.append(1), name="plain")
        with FakeClock() as clock, tether.with_cancel(tether.background()) as ctx:
            task = asyncio.ensure_future(sched.arun(ctx))
            while sched.next_run("ajob") is None or sched.next_run("plain") is None:
                await asyncio.sleep(0.001)
            clock.advance(5)
            while not (async_ctx and plain):
                await asyncio.sleep(0.001)
        await asyncio.wait_for(task, 10)
        return async_ctx, plain, sched.stats()

    async_ctx, plain, stats = asyncio.run(main())
    assert async_ctx == [("ajob", None)]
    assert plain == [1]
    assert [(s.runs, s.failures) for s in stats.values()] == [(1, 0), (1, 0)]


def test_arun_interrupts_a_coroutine_run_at_its_timeout():
    async def main():
        async def ajob(ctx):
            await asyncio.sleep(30)

        sched = lifecycle.every(5, ajob, timeout=1)
        with FakeClock() as clock, tether.with_cancel(tether.background()) as ctx:
            task = asyncio.ensure_future(sched.arun(ctx))
            while sched.next_run("ajob") is None:
                await asyncio.sleep(0.001)
            clock.advance(5)
            while not sched.stats()["ajob"].running:
                await asyncio.sleep(0.001)
            clock.advance(1)
            while not sched.stats()["ajob"].timeouts:
                await asyncio.sleep(0.001)
        await asyncio.wait_for(task, 10)
        return sched.stats()["ajob"]

    s = asyncio.run(main())
    assert (s.runs, s.timeouts, s.failures) == (1, 1, 0)


def test_run_rejects_coroutine_jobs():
    async def ajob(ctx):
        pass

    sched = lifecycle.every(1, ajob)
    with tether.with_cancel(tether.background()) as ctx, pytest.raises(TypeError, match="arun"):
        sched.run(ctx)


def test_misuse():
    sched = lifecycle.Scheduler()
    with pytest.raises(RuntimeError, match="tether: the scheduler has no jobs"):
        sched.run(tether.background())
    with pytest.raises(TypeError, match="tether:"):
        sched.every(1, "not callable")
    for bad in (0, -1):
        with pytest.raises(ValueError, match="tether: interval must be positive"):
            sched.every(bad, print)
    with pytest.raises(TypeError, match="tether:"):
        sched.every("1", print)
    with pytest.raises(ValueError, match="tether:"):
        sched.every(float("nan"), print)
    with pytest.raises(ValueError, match="tether: timeout must be positive"):
        sched.every(1, print, timeout=0)
    sched.every(1, print)
    with pytest.raises(ValueError, match="tether: a job named 'print' exists"):
        sched.every(1, print)
    with pytest.raises(TypeError, match="tether:"):
        sched.run(None)
    with pytest.raises(KeyError):
        sched.next_run("nope")
    ctx, cancel = tether.with_cancel(tether.background())
    cancel()
    sched.run(ctx)
    with pytest.raises(RuntimeError, match="tether: a Scheduler runs once"):
        sched.run(ctx)
    with pytest.raises(RuntimeError, match="tether: the scheduler is already running"):
        sched.every(1, print, name="late")


# -- the schedule's arithmetic (issue 8 item 1, issue 13 item 15) ----------------------


def test_a_tick_due_exactly_now_is_not_skipped_at_a_start_that_used_to_fail(caplog):
    # issue 8 item 1: at this start the catch-up rounded 3.0000000000000004 up to 4.
    with FakeClock(start=221.65993971306133) as clock:
        release = threading.Event()
        runs = []

        def job(ctx):
            runs.append(clock.now())
            if len(runs) == 1:
                release.wait(10)

        sched = lifecycle.Scheduler().every(10, job, timeout=100)
        with tether.with_cancel(tether.background()) as ctx:
            bg = Bg(sched.run, ctx)
            t0 = armed(sched)
            clock.advance(10)
            eventually(lambda: sched.stats()["job"].running)
            clock.advance(30)
            release.set()
            eventually(lambda: sched.stats()["job"].runs == 2)
            assert armed(sched) == pytest.approx(t0 + 40)
        bg.join()
        assert sched.stats()["job"].skipped == 2


def test_repeated_advances_by_the_interval_run_every_tick():
    # issue 13 item 15: 20 advances of 0.3 s gave 19 runs (the grid is multiplied, the
    # fake clock adds).
    with FakeClock(start=1000.0) as clock:
        runs = []
        sched = lifecycle.every(0.3, lambda ctx: runs.append(1), name="job")
        with tether.with_cancel(tether.background()) as ctx:
            bg = Bg(sched.run, ctx)
            for i in range(20):
                armed(sched)
                clock.advance(0.3)
                eventually(lambda i=i: len(runs) == i + 1)
        bg.join()
        s = sched.stats()["job"]
        assert (s.runs, s.skipped) == (20, 0)


@settings(max_examples=400, deadline=None)
@given(
    anchor=st.floats(min_value=0, max_value=1e7),
    interval=st.floats(min_value=1e-3, max_value=1e4),
    steps=st.integers(min_value=1, max_value=60),
    overrun=st.integers(min_value=0, max_value=5),
)
def test_schedule_arithmetic_on_a_clock_that_adds(anchor, interval, steps, overrun):
    # The clock reaches tick n by n additions (as FakeClock.advance does): tick n is due
    # then and not before a whole interval earlier; after a run that overran by
    # `overrun` whole intervals, exactly those ticks are skipped and the one due now runs.
    from tether.lifecycle._scheduler import _due, _next_tick

    t = anchor
    for _ in range(steps):
        t += interval
    tick = anchor + steps * interval
    assert _due(tick, t, interval)
    assert not _due(tick + interval, t, interval)
    assert _next_tick(anchor, interval, steps, t) == steps + 1
    for _ in range(overrun):
        t += interval
    nk = _next_tick(anchor, interval, steps - 1, t)
    assert nk == steps + overrun if overrun else nk == steps
    assert _due(anchor + nk * interval, t, interval)
