"""Supervisor: components under one lifecycle, graceful shutdown, exit codes.

Most tests run the supervisor in a thread with ``signals=()`` and drive it with
``shutdown()``; time-dependent ones use a FakeClock (the drain and close deadlines are
tether deadlines). Components come in both kinds — plain functions, run in threads, and
coroutine functions, run on the supervisor's loop — through the ``kind`` fixture.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
import time

import pytest
from tests.conftest import eventually
from tests.lifehelp import lines, run_child
from tests.test_scheduler import Bg

import tether
from tether import lifecycle

KEY = tether.Key[str]("app")


@pytest.fixture(params=["thread", "asyncio"])
def kind(request):
    return request.param


@pytest.fixture(autouse=True)
def _info_logs(caplog):
    caplog.set_level(logging.INFO, logger="tether.lifecycle")


def serve(kind, log, name, *, on_stop=None):
    """A component that serves until its ctx ends, recording what it saw."""
    if kind == "thread":

        def comp(ctx):
            log.append((name, "start", ctx.value(lifecycle.WORKER)))
            ctx.done().wait(30)
            log.append((name, "stop", tether.cause(ctx)))
            if on_stop:
                on_stop(ctx)

        return comp

    async def acomp(ctx):
        log.append((name, "start", ctx.value(lifecycle.WORKER)))
        await ctx.done()
        log.append((name, "stop", tether.cause(ctx)))
        if on_stop:
            on_stop(ctx)

    return acomp


def sup_(**kw):
    kw.setdefault("signals", ())
    kw.setdefault("drain_timeout", 10)
    kw.setdefault("close_timeout", 5)
    return lifecycle.Supervisor(**kw)


def test_runs_components_and_shuts_down_cleanly(kind, caplog):
    log = []
    sup = sup_()
    sup.add("a", serve(kind, log, "a"))
    sup.add("b", serve(kind, log, "b"))
    closed = []
    for res in ("db", "cache"):
        sup.on_close(
            res,
            lambda ctx, res=res: closed.append(
                (res, ctx.value(lifecycle.WORKER), ctx.value(KEY), ctx.err(), ctx.remaining())
            ),
        )
    assert not sup.ready()
    assert sup.state == "new"
    parent = tether.with_value(tether.background(), KEY, "v")
    bg = Bg(sup.run, parent)
    eventually(sup.ready)
    assert sup.state == "running"
    eventually(lambda: len(log) == 2)
    assert sorted(log) == [("a", "start", "a"), ("b", "start", "b")]
    sup.shutdown()
    assert bg.join().result == 0
    assert not sup.ready()
    assert sup.state == "stopped"
    stops = [x for x in log if x[1] == "stop"]
    assert len(stops) == 2
    assert all(isinstance(c, lifecycle.ShutdownRequested) for _, _, c in stops)
    assert [c[:4] for c in closed] == [("cache", "cache", "v", None), ("db", "db", "v", None)]
    assert all(0 < c[4] <= 5 for c in closed)
    r = sup.report
    assert r.exit_code == 0
    assert isinstance(r.cause, lifecycle.ShutdownRequested)
    assert (r.failed, r.unfinished, r.close_failed, r.close_unfinished) == ({}, (), {}, ())
    events = [getattr(rec, "event", None) for rec in caplog.records]
    for e in ("started", "shutdown_started", "component_stopped", "closed", "stopped"):
        assert e in events


def test_arun_on_a_running_loop(kind):
    log = []
    sup = sup_()
    sup.add("a", serve(kind, log, "a"))

    async def main():
        task = asyncio.ensure_future(sup.arun())
        while not sup.ready():
            await asyncio.sleep(0.001)
        sup.shutdown(ValueError("deploy"))
        return await task

    assert asyncio.run(main()) == 0
    assert isinstance(sup.report.cause, ValueError)
    assert isinstance(log[-1][2], ValueError)


def test_a_failing_component_shuts_everything_down_with_exit_code_1(kind, caplog):
    log = []
    sup = sup_()
    sup.add("steady", serve(kind, log, "steady"))
    boom = ValueError("broker unreachable")

    if kind == "thread":

        def bad(ctx):
            raise boom

    else:

        async def bad(ctx):
            await asyncio.sleep(0)
            raise boom

    sup.add("bad", bad)
    assert sup.run() == 1
    r = sup.report
    assert r.failed == {"bad": boom}
    assert isinstance(r.cause, lifecycle.ComponentFailed)
    assert r.cause.name == "bad"
    assert r.cause.__cause__ is boom
    assert "component 'bad' failed" in str(r.cause)
    (stop,) = [x for x in log if x[1] == "stop"]
    assert stop[2] is r.cause  # the others see why
    (rec,) = [x for x in caplog.records if getattr(x, "event", "") == "component_failed"]
    assert rec.worker == "bad"
    assert rec.exc_info[1] is boom


def test_a_coroutine_component_cancelled_from_elsewhere_is_a_failure():
    async def victim(ctx):
        asyncio.current_task().cancel()  # some library cancels it
        await asyncio.sleep(3600)

    sup = sup_()
    sup.add("victim", victim)
    assert sup.run() == 1
    (exc,) = sup.report.failed.values()
    assert isinstance(exc, asyncio.CancelledError)
    assert isinstance(sup.report.cause, lifecycle.ComponentFailed)


def test_a_component_returning_early_stops_the_service(kind):
    log = []
    sup = sup_()
    sup.add("steady", serve(kind, log, "steady"))
    if kind == "thread":
        sup.add("oneshot", lambda ctx: None)
    else:

        async def oneshot(ctx):
            return None

        sup.add("oneshot", oneshot)
    assert sup.run() == 0
    assert isinstance(sup.report.cause, lifecycle.ComponentExited)
    assert str(sup.report.cause) == "component 'oneshot' returned before shutdown"


def test_in_flight_work_keeps_running_until_the_drain_deadline(fake_clock, kind):
    seen = []
    drain_ok = threading.Event()

    def on_stop(ctx):
        # the component's ctx ended; its in-flight work runs under the drain scope
        with lifecycle.drain_scope(ctx) as work:
            seen.append(("drain alive", work.err()))
            work.done().wait(10)
            seen.append(("drain ended", tether.cause(work)))
        drain_ok.set()

    sup = sup_(drain_timeout=10, close_timeout=1)
    sup.add("srv", serve(kind, [], "srv", on_stop=on_stop if kind == "thread" else None))
    if kind == "asyncio":
        # the coroutine flavour: await the drain scope's end
        async def acomp(ctx):
            await ctx.done()
            with lifecycle.drain_scope(ctx) as work:
                seen.append(("drain alive", work.err()))
                await work.done()
                seen.append(("drain ended", tether.cause(work)))
            drain_ok.set()

        sup = sup_(drain_timeout=10, close_timeout=1)
        sup.add("srv", acomp)
    bg = Bg(sup.run)
    eventually(sup.ready)
    sup.shutdown()
    eventually(lambda: len(seen) == 1)
    assert seen == [("drain alive", None)]
    fake_clock.advance(10)
    assert drain_ok.wait(10)
    assert isinstance(seen[1][1], lifecycle.DrainTimeout)
    assert bg.join().result == 1  # it returned only after the drain deadline
    assert sup.report.unfinished == ("srv",)


def test_a_component_that_ignores_its_context_is_abandoned(fake_clock, caplog):
    stuck = threading.Event()
    sup = sup_(drain_timeout=10, close_timeout=2)
    sup.add("stuck", lambda ctx: stuck.wait(30))
    closed = []
    sup.on_close("db", lambda ctx: closed.append(1))
    bg = Bg(sup.run)
    eventually(sup.ready)
    sup.shutdown()
    eventually(lambda: sup.state == "stopping")
    fake_clock.advance(10)  # the drain deadline
    eventually(lambda: "drain_timeout" in [getattr(r, "event", "") for r in caplog.records])
    fake_clock.advance(2)  # the grace after it
    assert bg.join().result == 1
    assert sup.report.unfinished == ("stuck",)
    assert closed == [1]  # closers still ran
    events = [getattr(r, "event", "") for r in caplog.records]
    assert "component_abandoned" in events
    stuck.set()
    eventually(lambda: not [t for t in threading.enumerate() if t.name == "component-stuck"])


def test_a_coroutine_that_ignores_its_context_is_cancelled_after_the_grace(fake_clock, caplog):
    cancelled = []

    async def stubborn(ctx):
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    sup = sup_(drain_timeout=10, close_timeout=2)
    sup.add("stubborn", stubborn)
    bg = Bg(sup.run)
    eventually(sup.ready)
    sup.shutdown()
    eventually(lambda: sup.state == "stopping")
    fake_clock.advance(10)  # the drain deadline: its drain context ends, it goes on
    eventually(lambda: "drain_timeout" in [getattr(r, "event", "") for r in caplog.records])
    assert cancelled == []
    fake_clock.advance(2)  # the grace: now its task is cancelled
    assert bg.join().result == 1
    assert cancelled == [True]
    assert sup.report.unfinished == ("stubborn",)


def test_lame_duck_flips_readiness_before_cancelling(fake_clock, kind):
    log = []
    sup = sup_(lame_duck=5)
    sup.add("a", serve(kind, log, "a"))
    bg = Bg(sup.run)
    eventually(sup.ready)
    sup.shutdown()
    eventually(lambda: sup.state == "stopping")
    assert not sup.ready()
    assert [x for x in log if x[1] == "stop"] == []  # still serving
    fake_clock.advance(5)
    assert bg.join().result == 0
    assert [x[1] for x in log] == ["start", "stop"]


def test_closers_run_in_reverse_order_and_failures_do_not_stop_the_rest(fake_clock, caplog):
    order = []
    hang = threading.Event()
    sup = sup_(close_timeout=3)

    def failing(ctx):
        order.append("failing")
        raise OSError("flush failed")

    def slow(ctx):
        order.append("slow")
        hang.wait(30)

    async def aclose(ctx):
        order.append("async")

    sup.on_close("first", lambda ctx: order.append("first"))
    sup.on_close("failing", failing)
    sup.on_close("slow", slow, timeout=1)
    sup.on_close("async", aclose)
    sup.shutdown()  # before run: nothing starts, straight to the close phase
    bg = Bg(sup.run)
    eventually(lambda: "slow" in order)
    fake_clock.advance(1)
    assert bg.join().result == 1
    assert order == ["async", "slow", "failing", "first"]
    r = sup.report
    assert list(r.close_failed) == ["failing"]
    assert r.close_unfinished == ("slow",)
    events = [getattr(x, "event", "") for x in caplog.records]
    assert "close_failed" in events
    assert "close_timeout" in events
    hang.set()
    eventually(lambda: not [t for t in threading.enumerate() if t.name == "close-slow"])


def test_a_component_may_register_a_closer_while_running():
    closed = []
    sup = sup_()

    def comp(ctx):
        sup.on_close("opened-late", lambda c: closed.append("late"))
        ctx.done().wait(30)

    sup.add("comp", comp)
    sup.on_close("early", lambda c: closed.append("early"))
    bg = Bg(sup.run)
    eventually(sup.ready)
    eventually(lambda: len(sup._closers) == 2)
    sup.shutdown()
    assert bg.join().result == 0
    assert closed == ["late", "early"]
    with pytest.raises(RuntimeError, match="tether: the supervisor already closed"):
        sup.on_close("too-late", print)


def test_an_ended_parent_calls_each_component_with_its_ctx_already_ended():
    # issue 13 item 4: components were not called at all, so what they accepted before
    # run() (a pool's queue) was lost. Now each is called once, its ctx already ended.
    started = []
    sup = sup_()
    sup.add("a", started.append)
    closed = []
    sup.on_close("db", closed.append)
    p, cancel = tether.with_cancel(tether.background())
    cancel(KeyError("gone"))
    assert sup.run(p) == 0
    assert len(started) == 1
    assert isinstance(started[0].err(), tether.Canceled)
    assert isinstance(tether.cause(started[0]), KeyError)
    assert len(closed) == 1
    assert isinstance(sup.report.cause, KeyError)


def test_the_parent_ending_later_shuts_down(kind):
    log = []
    sup = sup_()
    sup.add("a", serve(kind, log, "a"))
    with tether.with_cancel(tether.background()) as p:
        bg = Bg(sup.run, p)
        eventually(sup.ready)
    assert bg.join().result == 0
    assert isinstance(sup.report.cause, tether.Canceled)


def test_a_sync_component_returning_a_coroutine_is_a_clear_failure():
    class Sneaky:
        def __call__(self, ctx):
            return asyncio.sleep(0)

    sup = sup_()
    sup.add("sneaky", Sneaky())
    assert sup.run() == 1
    (exc,) = sup.report.failed.values()
    assert isinstance(exc, TypeError)
    assert "make it an `async def`" in str(exc)


def test_system_exit_from_a_component_is_not_swallowed():
    sup = sup_()
    sup.add("quitter", lambda ctx: sys.exit(4))
    with pytest.raises(SystemExit) as info:
        sup.run()
    assert info.value.code == 4
    assert sup.report.exit_code == 4  # the report and the process agree


def test_main_exits_with_the_code():
    sup = sup_()
    sup.add("bad", lambda ctx: 1 / 0)
    with pytest.raises(SystemExit) as info:
        sup.main()
    assert info.value.code == 1


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_signal_starts_the_shutdown_and_handlers_are_restored(kind):
    log = []
    sup = lifecycle.Supervisor(signals=(signal.SIGUSR1,), drain_timeout=10)
    sup.add("a", serve(kind, log, "a"))

    def poke(ctx):
        ctx.done().wait(0.01)  # let the loop settle
        signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)
        ctx.done().wait(30)

    sup.add("poke", poke)
    before = signal.getsignal(signal.SIGUSR1)
    assert sup.run() == 0  # in the main thread, as a service would
    assert isinstance(sup.report.cause, lifecycle.SignalReceived)
    assert sup.report.cause.name == "SIGUSR1"
    assert signal.getsignal(signal.SIGUSR1) is before


def test_components_of_the_lifecycle_package_work_under_it(fake_clock):
    """A pool fed by a producer, a scheduled job and detached work, under one supervisor."""
    processed, ticks, audits = [], [], []
    runner = lifecycle.DetachedRunner(limit=2)
    pool = lifecycle.WorkerPool(
        lambda ctx, item: (processed.append(item), runner.go(ctx, audits.append)),
        workers=2,
    )
    sched = lifecycle.every(5, lambda ctx: ticks.append(ctx.value(lifecycle.REQUEST_ID)))

    def producer(ctx):
        for i in range(10):
            pool.put(ctx, i)
        ctx.done().wait(30)

    sup = sup_()
    sup.on_close("detached", runner.close)
    sup.add("pool", pool.run)
    sup.add("jobs", sched.arun)
    sup.add("producer", producer)
    bg = Bg(sup.run)
    eventually(lambda: len(processed) == 10)
    eventually(lambda: sched.next_run("<lambda>") is not None)
    fake_clock.advance(5)
    eventually(lambda: len(ticks) == 1)
    sup.shutdown()
    assert bg.join().result == 0
    assert sorted(processed) == list(range(10))
    assert len(audits) == 10
    assert runner.stats().closed
    assert sched.stats()["<lambda>"].failures == 0
    assert pool.stats().failed == 0


def test_misuse():
    sup = sup_()
    with pytest.raises(TypeError, match="tether: a component must be a function"):
        sup.add("x", 3)
    with pytest.raises(TypeError, match="tether: a component name"):
        sup.add("", print)
    sup.add("x", lambda ctx: None)
    with pytest.raises(ValueError, match="tether: a component named 'x' exists"):
        sup.add("x", print)
    with pytest.raises(TypeError, match="tether: cause must be an exception"):
        sup.shutdown("why")
    with pytest.raises(TypeError, match=r"tether: run needs a tether\.Context parent"):
        sup.run(None)
    for kwargs, exc in [
        ({"drain_timeout": 0}, ValueError),
        ({"close_timeout": -1}, ValueError),
        ({"lame_duck": -1}, ValueError),
        ({"drain_timeout": "1"}, TypeError),
        ({"signals": signal.SIGTERM}, TypeError),
    ]:
        with pytest.raises(exc, match="tether:"):
            lifecycle.Supervisor(**kwargs)
    with pytest.raises(ValueError, match="tether: timeout must be positive"):
        sup.on_close("c", print, timeout=0)
    sup.run()
    with pytest.raises(RuntimeError, match="tether: a Supervisor runs once"):
        sup.run()
    with pytest.raises(RuntimeError, match="tether: components are added before run"):
        sup.add("y", print)
    sup.shutdown()  # after the run: nothing happens


def test_run_inside_a_running_loop_points_to_arun():
    async def main():
        sup_().run()

    with pytest.raises(RuntimeError, match=r"tether: .*use `await sup.arun\(\)`"):
        asyncio.run(main())


def test_signals_off_the_main_thread_is_a_clear_error():
    sup = lifecycle.Supervisor()
    bg = Bg(sup.run).join()
    assert isinstance(bg.error, RuntimeError)
    # issue 8 item 10: the message names the fix
    assert str(bg.error).startswith("tether: Supervisor.run() handles signals")
    assert "pass signals=() to Supervisor(...)" in str(bg.error)
    assert sup.state == "new"  # nothing started
    fixed = lifecycle.Supervisor(signals=())  # what the message says to do
    fixed.shutdown()
    assert Bg(fixed.run).join().result == 0


def test_repr():
    sup = sup_(name="svc")
    sup.add("a", print)
    assert repr(sup) == "<tether.lifecycle.Supervisor 'svc' new [a]>"


# -- issue 13: the promise on the failure paths ---------------------------------------


@pytest.mark.parametrize("where", ["component", "scheduled job", "closer"])
def test_system_exit_on_the_loop_still_drains_and_closes(where):
    # issue 13 item 3: SystemExit from a coroutine component, an every().arun job or an
    # async closer escaped the event loop: no drain, no closers, report None.
    proc = run_child(
        f"""
        import sys, tether
        from tether import lifecycle
        where = {where!r}
        sup = lifecycle.Supervisor(signals=(), drain_timeout=5, close_timeout=2)
        async def quit_(ctx):
            sys.exit(2)
        async def other(ctx):
            await ctx.done()
            print("other: drained")
        sup.add("other", other)
        if where == "component":
            sup.add("quitter", quit_)
        elif where == "scheduled job":
            sup.add("jobs", lifecycle.every(0.01, quit_, immediately=True).arun)
        else:
            sup.on_close("bad-closer", quit_)
            sup.add("stopper", lambda ctx: sup.shutdown())
        sup.on_close("db", lambda ctx: print("db: closed"))
        try:
            sup.run()
        except SystemExit as e:
            print("exit=", e.code)
        print("report=", sup.report is not None and sup.report.exit_code)
        """
    )
    out = lines(proc)
    assert "db: closed" in proc.stdout, proc.stdout + proc.stderr
    assert "other: drained" in proc.stdout
    assert out["exit"] == "2"
    assert out["report"] == "2"


def test_system_exit_0_in_one_component_does_not_hide_another_failure():
    # issue 13 item 12: the process exited 0 while the report said 1.
    proc = run_child(
        """
        import sys, threading, tether
        from tether import lifecycle
        sup = lifecycle.Supervisor(signals=(), drain_timeout=5, close_timeout=2)
        failed = threading.Event()
        def bad(ctx):
            raise ValueError("boom")
        def quitter(ctx):
            ctx.done().wait(10)
            sys.exit(0)
        sup.add("bad", bad)
        sup.add("quitter", quitter)
        try:
            code = sup.run()
        except SystemExit as e:
            code = e.code
        print("code=", code)
        print("report=", sup.report.exit_code)
        """
    )
    out = lines(proc)
    assert (out.get("code"), out.get("report")) == ("1", "1"), proc.stdout + proc.stderr


def test_items_submitted_before_run_are_drained_when_shutdown_came_first():
    # issue 13 item 4: shutdown() before run() (or an ended parent) never started the
    # pool, so its queue was lost with exit code 0 and no on_unprocessed call.
    done, lost = [], []
    pool = lifecycle.WorkerPool(
        lambda ctx, item: done.append(item), on_unprocessed=lambda i, r: lost.append(i)
    )
    for i in range(3):
        pool.submit(i)
    sup = sup_()
    sup.add("pool", pool.run)
    sup.shutdown()
    assert sup.run() == 0
    s = pool.stats()
    assert (s.accepted, s.succeeded) == (3, 3)
    assert sorted(done) == [0, 1, 2]
    assert lost == []


def test_arun_cancelled_from_outside_still_drains_and_closes():
    # issue 13 item 5: a sibling failing in a TaskGroup cancelled arun(): no drain, no
    # closer, the detached runner left open with a job running. (A child process: the
    # cancellation is a BaseException crossing the event loop.)
    proc = run_child(
        """
        import asyncio, tether
        from tether import lifecycle
        log = []
        runner = lifecycle.DetachedRunner()

        async def api(ctx):
            await ctx.done()
            log.append("api: drained")

        async def job(ctx):
            await asyncio.sleep(0.05)
            log.append("job: done")

        async def main():
            sup = lifecycle.Supervisor(signals=(), drain_timeout=10, close_timeout=5)
            sup.add("api", api)
            sup.on_close("detached", runner.aclose)

            async def sibling():
                await asyncio.sleep(0.05)
                runner.go(tether.background(), job)
                raise ValueError("sibling failed")

            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(sup.arun())
                    tg.create_task(sibling())
            except ExceptionGroup as eg:
                print("raised=", [type(e).__name__ for e in eg.exceptions])
            return sup

        sup = asyncio.run(main())
        s = runner.stats()
        print("log=", log)
        print("runner=", (s.closed, s.succeeded))
        print("cause=", type(sup.report.cause).__name__)
        """
    )
    out = lines(proc)
    assert out.get("log") == "['api: drained', 'job: done']", proc.stdout + proc.stderr
    assert out["raised"] == "['ValueError']"
    assert out["runner"] == "(True, 1)"
    assert out["cause"] == "ShutdownRequested"


def test_a_component_thread_that_cannot_start_is_a_failure_and_shutdown_completes(
    monkeypatch,
):
    # issue 13 item 10 (supervisor): a start failure skipped the drain and the closers.
    real_start = threading.Thread.start

    def start(self):
        if self.name == "component-b":
            raise RuntimeError("can't start new thread")
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    log, closed = [], []
    sup = sup_()
    sup.add("a", serve("thread", log, "a"))
    sup.add("b", serve("thread", log, "b"))
    sup.on_close("db", closed.append)
    assert sup.run() == 1
    assert [e[:2] for e in log] == [("a", "start"), ("a", "stop")]
    assert len(closed) == 1
    assert "could not start thread 'component-b'" in str(sup.report.failed["b"])


def test_a_coroutine_that_swallows_cancellation_stays_within_the_worst_case():
    # issue 13 item 13: 0.5 s of force wait plus a second close_timeout were added to
    # the documented worst case (lame_duck + drain_timeout + close_timeout + closers).
    # Driven by a FakeClock: every wait of the shutdown must be on the context clock.
    proc = run_child(
        """
        import asyncio, threading, time, tether
        from tether import lifecycle
        from tether.testing import FakeClock
        async def stubborn(ctx):
            while True:
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    pass  # swallows every cancellation
        with FakeClock(start=1000.0) as clock:
            sup = lifecycle.Supervisor(signals=(), drain_timeout=30, close_timeout=60)
            sup.add("stubborn", stubborn)
            def drive():
                while sup.state != "running":
                    time.sleep(0.01)
                sup.shutdown()
                for _ in range(40):
                    time.sleep(0.05)
                    clock.advance(3)  # 120 fake seconds: 90 are the worst case
            threading.Thread(target=drive, daemon=True).start()
            t0 = time.monotonic()
            code = sup.run()
            print("code=", code, "unfinished=", sup.report.unfinished)
            print("real=", round(time.monotonic() - t0, 1))
        """,
        timeout=30,
    )
    out = lines(proc)
    assert out.get("code") == "1 unfinished= ('stubborn',)", proc.stdout + proc.stderr
    assert float(out["real"]) < 10  # the fake 90 s pass in ~1.5 real seconds


def test_stop_after_orders_the_shutdown(kind):
    # issue 13 item 17: every component was cancelled at once, so a pool closed its
    # intake as the API began draining and in-flight requests got ShuttingDown.
    log = []
    release = threading.Event()

    def api(ctx):
        ctx.done().wait(10)
        log.append("api: draining")
        assert release.wait(10)  # in-flight requests finish, still feeding the pool
        log.append("api: stopped")

    sup = sup_()
    sup.add("api", api)
    sup.add("pool", serve(kind, log, "pool"), stop_after="api")
    bg = Bg(sup.run)
    eventually(lambda: sup.state == "running")
    sup.shutdown()
    eventually(lambda: "api: draining" in log)
    time.sleep(0.05)
    assert not any(e[:2] == ("pool", "stop") for e in log if isinstance(e, tuple))
    release.set()
    assert bg.join().result == 0
    order = [e if isinstance(e, str) else e[0] + ": " + e[1] for e in log]
    assert order.index("api: stopped") < order.index("pool: stop")


def test_stop_after_names_earlier_components_only():
    sup = sup_()
    with pytest.raises(ValueError, match=r"tether: stop_after names 'api', not added yet"):
        sup.add("pool", print, stop_after="api")
    sup.add("api", print)
    with pytest.raises(TypeError, match="tether:"):
        sup.add("pool", print, stop_after=[3])
    sup.add("pool", print, stop_after=["api"])
