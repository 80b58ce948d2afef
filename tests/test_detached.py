"""DetachedRunner: fire-and-forget that survives the request, bounded, drained by close."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest
from tests.conftest import eventually
from tests.lifehelp import lines, run_child
from tests.test_scheduler import Bg

import tether
from tether import lifecycle

KEY = tether.Key[str]("user")


def accounted(s: lifecycle.DetachedStats) -> int:
    return (
        s.queued
        + s.running
        + s.succeeded
        + s.failed
        + s.timed_out
        + s.cancelled
        + s.dropped
        + s.abandoned
    )


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
    assert (s.cancelled, s.dropped, s.abandoned, s.running) == (1, 3, 1, 0)
    assert accounted(s) == s.accepted == 5
    assert isinstance(causes[0], lifecycle.DrainTimeout)
    events = [getattr(r, "event", "") for r in caplog.records]
    assert events.count("detached_dropped") == 3
    assert "detached_abandoned" in events
    stuck.set()
    eventually(
        lambda: "detached_finished_late" in [getattr(r, "event", "") for r in caplog.records]
    )
    assert runner.stats().succeeded == 0  # abandoned was its one outcome


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


# -- issue 13: the promise on the failure paths ---------------------------------------


def test_a_job_returning_a_coroutine_is_a_reported_failure(caplog):
    # issue 13 item 2: it was counted succeeded without ever running.
    async def write(ctx):
        pass

    lost = []
    runner = lifecycle.DetachedRunner(on_unprocessed=lambda job, why: lost.append((job, why)))

    def plain(ctx):  # a plain function that returns the coroutine by mistake
        return write(ctx)

    runner.go(tether.background(), plain, name="audit")
    s = runner.close(tether.background())
    assert (s.succeeded, s.failed) == (0, 1)
    ((job, why),) = lost
    assert (job.name, why) == ("audit", "failed")
    assert "returned a coroutine" in caplog.text


def test_failed_jobs_are_handed_over_with_what_it_takes_to_run_them_again():
    # issue 13 item 18: DetachedRunner had no on_unprocessed at all.
    lost = []

    def write(ctx, what):
        raise ConnectionError(what)

    runner = lifecycle.DetachedRunner(on_unprocessed=lambda job, why: lost.append((job, why)))
    req = tether.with_value(tether.background(), KEY, "alice")
    runner.go(req, write, "login", name="audit")
    s = runner.close(tether.background())
    ((job, why),) = lost
    assert isinstance(job, lifecycle.DetachedJob)
    assert (job.name, job.fn, job.args, why) == ("audit", write, ("login",), "failed")
    assert job.ctx.value(KEY) == "alice"
    assert (s.failed, s.handed_over) == (1, 1)


def test_close_finishes_within_its_own_deadline_and_reports_before_returning(fake_clock, caplog):
    # issue 13 item 7: close(ctx) started cancelling only when ctx ended, then waited
    # grace more: a closer given that deadline was always unfinished. Now it cancels
    # grace before the deadline and reports what it abandons before returning.
    stuck = threading.Event()

    def polite(ctx):
        ctx.done().wait()

    def rude(ctx):
        stuck.wait(10)

    runner = lifecycle.DetachedRunner(limit=2, grace=2)
    runner.go(tether.background(), polite, name="polite")
    runner.go(tether.background(), rude, name="rude")
    eventually(lambda: runner.stats().running == 2)
    with tether.with_timeout(tether.background(), 10) as ctx:
        closing = Bg(runner.close, ctx)
        eventually(lambda: fake_clock.timers() >= 3)
        fake_clock.advance(8)  # grace (2 s) before the deadline: cancel
        eventually(lambda: runner.stats().cancelled == 1)
        assert closing._t.is_alive()
        fake_clock.advance(1.5)  # grace/4 before the deadline: give up, report, return
        s = closing.join().result
        assert ctx.err() is None  # returned before its deadline
    assert (s.cancelled, s.abandoned) == (1, 1)
    assert "detached_abandoned" in [getattr(r, "event", "") for r in caplog.records]
    stuck.set()
    eventually(lambda: "detached_finished_late" in caplog.text or runner.stats().running == 0)
    eventually(lambda: threading.active_count() <= 2)


def test_the_event_loop_closing_under_the_runner_loses_nothing():
    # issue 13 item 9: a cancelled coroutine job was counted but not logged, the next
    # backlog job was started during teardown and destroyed, its slot never freed.
    proc = run_child(
        """
        import asyncio, logging, time, tether
        from tether import lifecycle
        events = []
        class H(logging.Handler):
            def emit(self, rec):
                events.append((getattr(rec, "event", ""), getattr(rec, "reason", "")))
        log = logging.getLogger("t"); log.addHandler(H()); log.propagate = False
        lost = []
        runner = lifecycle.DetachedRunner(limit=1, logger=log,
                                          on_unprocessed=lambda j, r: lost.append((j.name, r)))
        async def forever(ctx):
            await asyncio.sleep(3600)
        async def main():
            runner.go(tether.background(), forever, name="first")
            runner.go(tether.background(), forever, name="second")  # in the backlog
            await asyncio.sleep(0.01)
        asyncio.run(main())
        t0 = time.monotonic()
        s = runner.close(tether.background())
        print("close_took=", round(time.monotonic() - t0, 1))
        print("counts=", (s.accepted, s.cancelled, s.dropped, s.running, s.queued))
        print("lost=", lost)
        print("events=", [e for e in events if e[0] in ("detached_cancelled", "detached_dropped")])
        """
    )
    out = lines(proc)
    assert out.get("counts") == "(2, 1, 1, 0, 0)", proc.stdout + proc.stderr
    assert out["close_took"] == "0.0"
    assert (
        out["lost"] == "[('first', 'event loop closing'), ('second', 'its event loop is closed')]"
    )
    assert "('detached_cancelled', 'event loop closing')" in out["events"]
    assert "('detached_dropped', 'its event loop is closed')" in out["events"]
    assert "Task was destroyed" not in proc.stderr


def test_a_job_thread_that_cannot_start_is_reported_and_frees_its_slot(monkeypatch):
    # issue 13 item 10: go() raised after counting the job accepted; the slot leaked.
    real_start = threading.Thread.start
    fail = [True]

    def start(self):
        if fail[0] and self.name.startswith("detached-"):
            raise RuntimeError("can't start new thread")
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    lost = []
    runner = lifecycle.DetachedRunner(limit=1, on_unprocessed=lambda j, r: lost.append(r))
    runner.go(tether.background(), print, name="x")  # does not raise: accepted, reported
    assert lost == ["no thread"]
    s = runner.stats()
    assert (s.accepted, s.dropped, s.running) == (1, 1, 0)
    fail[0] = False
    done = threading.Event()
    runner.go(tether.background(), lambda ctx: done.set())  # the slot is free
    assert done.wait(5)
    assert runner.close(tether.background()).succeeded == 1


def test_as_a_closer_it_finishes_in_time_and_reports_before_the_supervisor_stops(caplog):
    # issue 13 item 7, end to end: the documented wiring gave the closer the deadline
    # close() only started cancelling at, so it was always marked unfinished and the
    # abandoned jobs were logged after run() returned.
    caplog.set_level(logging.INFO, logger="tether.lifecycle")
    stuck = threading.Event()
    runner = lifecycle.DetachedRunner(grace=0.4)
    sup = lifecycle.Supervisor(signals=(), drain_timeout=5, close_timeout=1)
    sup.on_close("detached", runner.close, timeout=1.2)

    def api(ctx):
        runner.go(ctx, lambda c: stuck.wait(10), name="rude")
        runner.go(ctx, lambda c: c.done().wait(10), name="polite")
        sup.shutdown()
        ctx.done().wait()

    sup.add("api", api)
    assert sup.run() == 0
    assert sup.report.close_unfinished == ()
    events = [getattr(r, "event", "") for r in caplog.records]
    assert events.index("detached_abandoned") < events.index("stopped")
    assert events.index("detached_cancelled") < events.index("stopped")
    stuck.set()
    eventually(
        lambda: "detached_finished_late" in [getattr(r, "event", "") for r in caplog.records]
    )
