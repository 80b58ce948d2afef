"""DetachedRunner: fire-and-forget that survives the request, bounded, drained by close."""

from __future__ import annotations

import asyncio
import threading

import pytest
from tests.conftest import eventually
from tests.test_scheduler import Bg

import tether
from tether import lifecycle

KEY = tether.Key[str]("user")


def accounted(s: lifecycle.DetachedStats) -> int:
    return s.queued + s.running + s.succeeded + s.failed + s.timed_out + s.cancelled + s.dropped


def test_a_job_keeps_the_request_values_but_not_its_cancellation(fake_clock):
    seen = []

    def audit(ctx, what):
        seen.append((what, ctx.value(KEY), ctx.value(lifecycle.WORKER), ctx.remaining()))

    runner = lifecycle.DetachedRunner(timeout=7)
    with tether.with_cancel(tether.background()) as request:
        req = tether.with_value(request, KEY, "alice")
        started = threading.Event()
        gate = threading.Event()

        def slow(ctx):
            started.set()
            gate.wait(10)
            seen.append(("slow", ctx.err()))

        runner.go(req, slow, name="slow-audit")
        runner.go(req, audit, "login")
        assert started.wait(10)
    gate.set()  # the request ended before the job finished: the job's context is still live
    assert runner.close(tether.background()).succeeded == 2
    (login,) = [x for x in seen if x[0] == "login"]
    assert login[1] == "alice"
    assert login[2].endswith("<locals>.audit")  # WORKER: the job's name, fn.__qualname__
    assert login[3] == pytest.approx(7)
    assert ("slow", None) in seen


def test_bounded_running_and_backlog_and_a_clear_error_when_full():
    gate = threading.Event()
    running = []
    peak = []
    lock = threading.Lock()

    def job(ctx, i):
        with lock:
            running.append(i)
            peak.append(len(running))
        gate.wait(10)
        with lock:
            running.remove(i)

    runner = lifecycle.DetachedRunner(limit=2, backlog=2, name="audit")
    bg = tether.background()
    for i in range(4):
        runner.go(bg, job, i)
    eventually(lambda: len(running) == 2)
    s = runner.stats()
    assert (s.running, s.queued, s.accepted) == (2, 2, 4)
    with pytest.raises(
        lifecycle.QueueFull,
        match=r"tether: detached runner 'audit' is full \(2 running, 2 waiting\)",
    ):
        runner.go(bg, job, 99)
    assert runner.stats().rejected == 1
    gate.set()
    s = runner.close(bg)
    assert (s.succeeded, s.running, s.queued) == (4, 0, 0)
    assert max(peak) == 2
    assert accounted(s) == s.accepted


def test_backlog_runs_in_order():
    order = []
    gate = threading.Event()

    def job(ctx, i):
        gate.wait(10)
        order.append(i)

    runner = lifecycle.DetachedRunner(limit=1, backlog=10)
    for i in range(5):
        runner.go(tether.background(), job, i)
    gate.set()
    runner.close(tether.background())
    assert order == [0, 1, 2, 3, 4]


def test_a_failing_job_is_logged_and_frees_its_slot(caplog):
    def bad(ctx):
        raise ValueError("disk full")

    ran = []
    runner = lifecycle.DetachedRunner(limit=1)
    runner.go(tether.background(), bad)
    runner.go(tether.background(), lambda ctx: ran.append(1))
    s = runner.close(tether.background())
    assert (s.failed, s.succeeded) == (1, 1)
    (rec,) = [r for r in caplog.records if getattr(r, "event", "") == "detached_failed"]
    assert rec.worker.endswith("bad")
    assert rec.exc_info[1].args == ("disk full",)


def test_a_job_that_outlives_its_timeout_is_counted(fake_clock):
    def job(ctx):
        ctx.done().wait(10)
        ctx.check()

    runner = lifecycle.DetachedRunner(timeout=30)
    runner.go(tether.background(), job, timeout=2)
    eventually(lambda: runner.stats().running == 1)
    fake_clock.advance(2)
    eventually(lambda: runner.stats().timed_out == 1)
    runner.close(tether.background())


def test_close_stops_intake_and_waits_for_backlog():
    gate = threading.Event()
    done = []

    def job(ctx, i):
        gate.wait(10)
        done.append(i)

    runner = lifecycle.DetachedRunner(limit=1, backlog=5)
    for i in range(3):
        runner.go(tether.background(), job, i)
    closing = Bg(runner.close, tether.background())
    eventually(lambda: runner.stats().closed)
    with pytest.raises(
        lifecycle.ShuttingDown, match="tether: detached runner 'detached' is closed"
    ):
        runner.go(tether.background(), job, 9)
    gate.set()
    s = closing.join().result
    assert done == [0, 1, 2]
    assert (s.succeeded, s.rejected, s.dropped) == (3, 1, 0)
    assert runner.close(tether.background()) == s  # idempotent


def test_the_close_deadline_drops_the_backlog_cancels_and_abandons(caplog):
    stuck = threading.Event()
    causes = []

    def polite(ctx):
        ctx.done().wait(10)
        causes.append(tether.cause(ctx))
        ctx.check()

    def rude(ctx):
        stuck.wait(10)  # ignores its context

    runner = lifecycle.DetachedRunner(limit=2, backlog=5, grace=0.05)
    runner.go(tether.background(), polite, name="polite")
    runner.go(tether.background(), rude, name="rude")
    for i in range(3):
        runner.go(tether.background(), polite, name=f"queued-{i}")
    eventually(lambda: runner.stats().running == 2)
    with tether.with_cancel(tether.background()) as close_ctx:
        closing = Bg(runner.close, close_ctx)
        eventually(lambda: runner.stats().closed)
    s = closing.join().result
    assert (s.cancelled, s.dropped, s.abandoned, s.running) == (1, 3, 1, 1)
    assert isinstance(causes[0], lifecycle.DrainTimeout)
    events = [getattr(r, "event", "") for r in caplog.records]
    assert events.count("detached_dropped") == 3
    assert "detached_abandoned" in events
    stuck.set()
    eventually(lambda: runner.stats().running == 0)
    assert runner.stats().succeeded == 1
    eventually(
        lambda: "detached_finished_late" in [getattr(r, "event", "") for r in caplog.records]
    )


def test_coroutine_jobs_run_on_the_calling_loop_and_share_the_bound():
    async def main():
        loop = asyncio.get_running_loop()
        seen = []
        gate = threading.Event()

        async def ajob(ctx, i):
            assert asyncio.get_running_loop() is loop
            await asyncio.sleep(0)
            seen.append((i, ctx.value(lifecycle.WORKER)))

        def tjob(ctx):
            gate.wait(10)
            seen.append(("t", ctx.value(lifecycle.WORKER)))

        runner = lifecycle.DetachedRunner(limit=1, backlog=5)
        with tether.with_cancel(tether.background()) as req:
            runner.go(req, tjob, name="thread-job")
            runner.go(req, ajob, 1, name="async-job")  # waits for the thread job's slot
        assert runner.stats().queued == 1
        gate.set()
        s = await runner.aclose(tether.background())
        return seen, s

    seen, s = asyncio.run(main())
    assert seen == [("t", "thread-job"), (1, "async-job")]
    assert s.succeeded == 2


def test_a_coroutine_job_is_interrupted_at_its_timeout():
    async def main():
        async def ajob(ctx):
            await asyncio.sleep(30)

        runner = lifecycle.DetachedRunner()
        runner.go(tether.background(), ajob, timeout=0.01)
        return await runner.aclose(tether.background())

    s = asyncio.run(main())
    assert (s.timed_out, s.failed) == (1, 0)


def test_misuse():
    async def ajob(ctx):
        pass

    runner = lifecycle.DetachedRunner()
    with pytest.raises(TypeError, match="tether: go\\(\\) got a coroutine function outside"):
        runner.go(tether.background(), ajob)
    with pytest.raises(TypeError, match="tether: parent context is None"):
        runner.go(None, print)
    with pytest.raises(TypeError, match="tether: a detached job must be a function"):
        runner.go(tether.background(), 3)
    with pytest.raises(ValueError, match="tether: timeout must be positive"):
        runner.go(tether.background(), print, timeout=0)
    with pytest.raises(TypeError, match="tether:"):
        runner.close(None)
    for kwargs, exc in [
        ({"limit": 0}, ValueError),
        ({"limit": 1.5}, TypeError),
        ({"backlog": -1}, ValueError),
        ({"timeout": 0}, ValueError),
        ({"grace": -1}, ValueError),
        ({"name": ""}, TypeError),
    ]:
        with pytest.raises(exc, match="tether:"):
            lifecycle.DetachedRunner(**kwargs)
    assert runner.stats().accepted == 0
    assert "DetachedRunner 'detached' open running=0/8 queued=0/100" in repr(runner)
