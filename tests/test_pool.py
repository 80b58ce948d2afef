"""WorkerPool: bounded workers and queue, per-item contexts, drain, nothing silently lost."""

from __future__ import annotations

import logging
import threading
import time
import tracemalloc

import pytest
from tests.conftest import eventually
from tests.lifehelp import lines, run_child
from tests.test_scheduler import Bg

import tether
from tether import lifecycle


def outcomes(s: lifecycle.PoolStats) -> int:
    return (
        s.queued
        + s.in_flight
        + s.succeeded
        + s.failed
        + s.timed_out
        + s.cancelled
        + s.dropped
        + s.abandoned
    )


class Gate:
    """A handler whose calls block until released; records what it saw."""

    def __init__(self, block=True):
        self.release = threading.Event()
        if not block:
            self.release.set()
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0
        self.seen = []

    def __call__(self, ctx, item):
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
            self.seen.append((item, ctx.value(lifecycle.WORKER), ctx.value(lifecycle.REQUEST_ID)))
        try:
            assert self.release.wait(10)
        finally:
            with self.lock:
                self.running -= 1


def test_items_are_processed_each_under_its_own_context():
    gate = Gate(block=False)
    pool = lifecycle.WorkerPool(gate, workers=3, queue_size=10, item_timeout=5, name="p")
    with tether.with_cancel(tether.background()) as ctx:
        bg = Bg(pool.run, ctx)
        for i in range(20):
            pool.put(ctx, i)
        eventually(lambda: pool.stats().succeeded == 20)
    s = bg.join().result
    assert s == pool.stats()
    assert (s.state, s.accepted, s.succeeded, s.failed, s.dropped) == ("stopped", 20, 20, 0, 0)
    assert sorted(i for i, _, _ in gate.seen) == list(range(20))
    assert {w for _, w, _ in gate.seen} <= {"p-1", "p-2", "p-3"}
    rids = [r for _, _, r in gate.seen]
    assert len(set(rids)) == 20
    assert all(len(r) == 16 for r in rids)


def test_never_more_than_workers_and_the_queue_is_bounded():
    gate = Gate()
    rejected = []
    pool = lifecycle.WorkerPool(gate, workers=2, queue_size=3)
    with tether.with_cancel(tether.background()) as ctx:
        bg = Bg(pool.run, ctx)
        for i in range(2):
            pool.submit(i)
        eventually(lambda: gate.running == 2)
        for i in range(2, 5):
            pool.submit(i)
        with pytest.raises(lifecycle.QueueFull, match=r"tether: worker pool 'pool' has 3 items"):
            pool.submit(99)
        rejected.append(99)
        s = pool.stats()
        assert (s.in_flight, s.queued, s.rejected, s.accepted) == (2, 3, 1, 5)
        gate.release.set()
        eventually(lambda: pool.stats().succeeded == 5)
    bg.join()
    assert gate.peak == 2
    assert 99 not in [i for i, _, _ in gate.seen]


def test_put_waits_for_room_and_gives_up_with_its_context():
    gate = Gate()
    pool = lifecycle.WorkerPool(gate, workers=1, queue_size=1)
    with tether.with_cancel(tether.background()) as ctx:
        bg = Bg(pool.run, ctx)
        pool.submit(1)
        eventually(lambda: gate.running == 1)
        pool.submit(2)  # the queue is full now
        waiter = Bg(pool.put, ctx, 3)
        with tether.with_cancel(ctx) as short:
            shorter = Bg(pool.put, short, 4)
        shorter.join()
        assert isinstance(shorter.error, tether.Canceled)
        assert waiter._t.is_alive()
        gate.release.set()
        waiter.join()
        assert waiter.error is None
        eventually(lambda: pool.stats().succeeded == 3)
    bg.join()
    s = pool.stats()
    assert (s.accepted, s.rejected, s.succeeded) == (3, 1, 3)
    with pytest.raises(lifecycle.ShuttingDown):
        pool.put(tether.background(), 5)
    ended, cancel = tether.with_cancel(tether.background())
    cancel()
    with pytest.raises(tether.Canceled):
        lifecycle.WorkerPool(gate).put(ended, 1)


def test_put_is_released_when_the_pool_starts_shutting_down():
    gate = Gate()
    pool = lifecycle.WorkerPool(gate, workers=1, queue_size=1)
    with tether.with_cancel(tether.background()) as ctx:
        bg = Bg(pool.run, lifecycle.with_drain(ctx, tether.background()))
        pool.submit(1)
        eventually(lambda: gate.running == 1)
        pool.submit(2)
        waiter = Bg(pool.put, tether.background(), 3)
    waiter.join()
    assert isinstance(waiter.error, lifecycle.ShuttingDown)
    gate.release.set()
    bg.join()
    assert pool.stats().succeeded == 2


def test_a_failing_item_is_logged_with_its_tags_and_the_worker_goes_on(caplog):
    def handler(ctx, item):
        if item == "bad":
            raise ValueError("bad item")

    pool = lifecycle.WorkerPool(handler, workers=1, name="w")
    with tether.with_cancel(tether.background()) as ctx:
        bg = Bg(pool.run, ctx)
        for item in ("ok", "bad", "ok"):
            pool.submit(item)
        eventually(lambda: pool.stats().succeeded == 2)
    bg.join()
    s = pool.stats()
    assert (s.succeeded, s.failed) == (2, 1)
    (rec,) = [r for r in caplog.records if getattr(r, "event", "") == "item_failed"]
    assert rec.worker == "w-1"
    assert len(rec.request_id) == 16
    assert rec.item == "'bad'"  # the user's item, not an internal number
    assert rec.levelno == logging.ERROR


def test_an_item_that_outlives_its_timeout_is_counted(fake_clock):
    def handler(ctx, item):
        assert ctx.remaining() == pytest.approx(2)
        ctx.done().wait(10)
        ctx.check()

    pool = lifecycle.WorkerPool(handler, workers=1, item_timeout=2)
    with tether.with_cancel(tether.background()) as ctx:
        bg = Bg(pool.run, ctx)
        pool.submit(1)
        eventually(lambda: pool.stats().in_flight == 1)
        fake_clock.advance(2)
        eventually(lambda: pool.stats().timed_out == 1)
    bg.join()
    assert pool.stats().failed == 0


def test_shutdown_closes_intake_and_drains_the_queue():
    gate = Gate()
    pool = lifecycle.WorkerPool(gate, workers=1, queue_size=5)
    with tether.with_cancel(tether.background()) as ctx:
        # a drain context that never ends: drain everything (a Supervisor bounds it)
        bg = Bg(pool.run, lifecycle.with_drain(ctx, tether.background()))
        for i in range(4):
            pool.submit(i)
        eventually(lambda: gate.running == 1)
        assert pool.accepting()
    eventually(lambda: not pool.accepting())
    with pytest.raises(lifecycle.ShuttingDown, match=r"tether: .*accepts no new items"):
        pool.submit(9)
    gate.release.set()
    s = bg.join().result
    assert (s.succeeded, s.dropped, s.rejected) == (4, 0, 1)


def test_without_a_drain_context_shutdown_is_immediate_but_nothing_is_lost():
    lost = []

    def handler(ctx, item):
        ctx.done().wait(10)
        ctx.check()

    pool = lifecycle.WorkerPool(
        handler, workers=1, on_unprocessed=lambda item, why: lost.append((item, why))
    )
    with tether.with_cancel(tether.background()) as ctx:
        bg = Bg(pool.run, ctx)
        for i in range(3):
            pool.submit(i)
        eventually(lambda: pool.stats().in_flight == 1)
    s = bg.join().result
    assert (s.cancelled, s.dropped) == (1, 2)
    assert sorted(lost) == [(0, "cancelled"), (1, "drain deadline"), (2, "drain deadline")]


def test_without_drain_queue_the_queue_is_dropped_and_reported():
    gate = Gate()
    lost = []
    pool = lifecycle.WorkerPool(
        gate,
        workers=1,
        drain_queue=False,
        on_unprocessed=lambda item, why: lost.append((item, why)),
    )
    with tether.with_cancel(tether.background()) as ctx:
        bg = Bg(pool.run, lifecycle.with_drain(ctx, tether.background()))
        for i in range(3):
            pool.submit(i)
        eventually(lambda: gate.running == 1)
    eventually(lambda: pool.stats().dropped == 2)
    gate.release.set()  # the item in flight still finishes
    s = bg.join().result
    assert (s.succeeded, s.dropped) == (1, 2)
    assert lost == [(1, "shutdown"), (2, "shutdown")]
    assert outcomes(s) == s.accepted


def test_the_drain_deadline_drops_the_queue_and_cancels_what_runs(caplog):
    lost = []

    def handler(ctx, item):
        ctx.done().wait(10)
        ctx.check()

    pool = lifecycle.WorkerPool(
        handler, workers=2, on_unprocessed=lambda item, why: lost.append((item, why))
    )
    drain, end_drain = tether.with_cancel(tether.background())
    with tether.with_cancel(tether.background()) as root:
        bg = Bg(pool.run, lifecycle.with_drain(root, drain))
        for i in range(5):
            pool.submit(i)
        eventually(lambda: pool.stats().in_flight == 2)
    # shutdown started: in-flight items keep their (live) context
    eventually(lambda: not pool.accepting())
    assert pool.stats().in_flight == 2
    end_drain(lifecycle.DrainTimeout())
    s = bg.join().result
    assert (s.cancelled, s.dropped, s.succeeded, s.abandoned) == (2, 3, 0, 0)
    assert outcomes(s) == s.accepted == 5
    assert sorted(lost) == [
        (0, "cancelled"),
        (1, "cancelled"),
        (2, "drain deadline"),
        (3, "drain deadline"),
        (4, "drain deadline"),
    ]
    events = [getattr(r, "event", "") for r in caplog.records]
    assert events.count("item_dropped") == 3
    assert events.count("item_cancelled") == 2


def test_an_item_that_ignores_its_context_is_abandoned_after_grace(caplog):
    gate = Gate()
    lost = []
    pool = lifecycle.WorkerPool(
        gate, workers=1, grace=0.05, on_unprocessed=lambda item, why: lost.append((item, why))
    )
    drain, end_drain = tether.with_cancel(tether.background())
    with tether.with_cancel(tether.background()) as root:
        bg = Bg(pool.run, lifecycle.with_drain(root, drain))
        pool.submit("stuck")
        eventually(lambda: gate.running == 1)
    end_drain()
    s = bg.join().result  # returned although the handler is still running
    assert (s.abandoned, s.in_flight) == (1, 0)  # abandoned is the item's one outcome
    assert lost == [("stuck", "abandoned")]
    events = [getattr(r, "event", "") for r in caplog.records]
    assert "item_abandoned" in events
    gate.release.set()
    eventually(lambda: "item_finished_late" in [getattr(r, "event", "") for r in caplog.records])
    s = pool.stats()
    assert (s.succeeded, s.abandoned) == (0, 1)  # finishing late does not count it twice
    assert outcomes(s) == s.accepted == 1


def test_on_unprocessed_errors_are_logged(caplog):
    def boom(item, why):
        raise RuntimeError("sink down")

    gate = Gate()
    pool = lifecycle.WorkerPool(gate, workers=1, drain_queue=False, on_unprocessed=boom)
    with tether.with_cancel(tether.background()) as ctx:
        bg = Bg(pool.run, lifecycle.with_drain(ctx, tether.background()))
        pool.submit(1)
        pool.submit(2)
        eventually(lambda: gate.running == 1)
    eventually(lambda: pool.stats().dropped == 1)
    gate.release.set()
    bg.join()
    assert any(getattr(r, "event", "") == "on_unprocessed_failed" for r in caplog.records)


def test_items_submitted_before_run_wait_for_it():
    gate = Gate(block=False)
    pool = lifecycle.WorkerPool(gate, workers=1)
    pool.submit("early")
    with tether.with_cancel(tether.background()) as ctx:
        bg = Bg(pool.run, ctx)
        eventually(lambda: pool.stats().succeeded == 1)
    bg.join()
    assert "WorkerPool 'pool' stopped" in repr(pool)


def test_misuse():
    def h(ctx, item):
        pass

    for kwargs, exc in [
        ({"workers": 0}, ValueError),
        ({"workers": "4"}, TypeError),
        ({"queue_size": -1}, ValueError),
        ({"queue_size": 0}, ValueError),  # issue 13 item 14: it could never accept
        ({"item_timeout": 0}, ValueError),
        ({"item_timeout": "1"}, TypeError),
        ({"grace": -1}, ValueError),
        ({"name": ""}, TypeError),
        ({"on_unprocessed": 3}, TypeError),
    ]:
        with pytest.raises(exc, match="tether:"):
            lifecycle.WorkerPool(h, **kwargs)
    with pytest.raises(TypeError, match="tether: a pool handler must be a function"):
        lifecycle.WorkerPool("nope")
    pool = lifecycle.WorkerPool(h)
    with pytest.raises(TypeError, match="tether:"):
        pool.run(None)
    with pytest.raises(TypeError, match="tether:"):
        pool.put(None, 1)
    ended, cancel = tether.with_cancel(tether.background())
    cancel()
    assert pool.run(ended).state == "stopped"
    with pytest.raises(RuntimeError, match="tether: a WorkerPool runs once"):
        pool.run(ended)


# -- issue 13: the promise on the failure paths ---------------------------------------


def test_a_handler_raising_base_exception_keeps_its_worker_and_its_item_is_reported():
    # issue 13 item 1: SystemExit in a handler killed the worker; the item was in no
    # counter, never handed over, and the pool went on accepting with no live worker.
    proc = run_child(
        """
        import asyncio, tether
        from tether import lifecycle
        from tests.test_scheduler import Bg
        from tests.conftest import eventually
        lost = []
        def handler(ctx, item):
            if item == 1:
                raise SystemExit(3)
            if item == 2:
                raise asyncio.CancelledError()  # e.g. from an inner asyncio.run
        pool = lifecycle.WorkerPool(
            handler, workers=1, on_unprocessed=lambda i, r: lost.append((i, r))
        )
        with tether.with_cancel(tether.background()) as ctx:
            bg = Bg(pool.run, ctx)
            for i in range(5):
                pool.submit(i)
            eventually(lambda: pool.stats().succeeded == 3)
        bg.join()
        s = pool.stats()
        print("counts=", (s.accepted, s.succeeded, s.failed, s.in_flight, s.queued))
        print("lost=", sorted(lost))
        print("raised=", repr(bg.error))
        """
    )
    out = lines(proc)
    assert out.get("counts") == "(5, 3, 2, 0, 0)", proc.stdout + proc.stderr
    assert out["lost"] == "[(1, 'failed'), (2, 'failed')]"
    assert out["raised"] == "SystemExit(3)"  # fatal: re-raised once the pool stopped


def test_an_async_handler_is_rejected_and_a_returned_coroutine_is_a_failure(caplog):
    # issue 13 item 2: an async handler was counted succeeded without ever running.
    async def handler(ctx, item):
        pass

    with pytest.raises(TypeError, match=r"tether: a pool handler .* plain function"):
        lifecycle.WorkerPool(handler)

    def plain(ctx, item):  # a plain function that returns the coroutine by mistake
        return handler(ctx, item)

    lost = []
    pool = lifecycle.WorkerPool(plain, on_unprocessed=lambda i, r: lost.append((i, r)))
    with tether.with_cancel(tether.background()) as ctx:
        bg = Bg(pool.run, ctx)
        pool.submit("x")
        eventually(lambda: pool.stats().failed == 1)
    bg.join()
    assert pool.stats().succeeded == 0
    assert lost == [("x", "failed")]
    assert "returned a coroutine" in caplog.text


@pytest.mark.parametrize("how", ["returns", "raises its own error"])
def test_an_item_cut_short_by_the_drain_is_not_done_whatever_the_handler_does(how):
    # issue 13 item 8: classify by the item's context, not by the exception type.
    def handler(ctx, item):
        ctx.done().wait(10)
        if how == "returns":
            return
        raise ConnectionResetError("the client library's own error")

    lost = []
    pool = lifecycle.WorkerPool(handler, workers=1, on_unprocessed=lambda i, r: lost.append((i, r)))
    drain, end_drain = tether.with_cancel(tether.background())
    with tether.with_cancel(tether.background()) as root:
        bg = Bg(pool.run, lifecycle.with_drain(root, drain))
        pool.submit("job")
        eventually(lambda: pool.stats().in_flight == 1)
    end_drain(lifecycle.DrainTimeout())
    s = bg.join().result
    assert (s.succeeded, s.failed, s.cancelled) == (0, 0, 1)
    assert lost == [("job", "cancelled")]


def test_failed_and_timed_out_items_are_handed_over(fake_clock):
    # issue 13 item 18: only dropped/cancelled/abandoned items reached on_unprocessed.
    def handler(ctx, item):
        if item == "bad":
            raise ValueError(item)
        if item == "slow":
            ctx.done().wait()

    lost = []
    pool = lifecycle.WorkerPool(
        handler, workers=2, item_timeout=5, on_unprocessed=lambda i, r: lost.append((i, r))
    )
    with tether.with_cancel(tether.background()) as ctx:
        bg = Bg(pool.run, ctx)
        for item in ("bad", "slow", "good"):
            pool.submit(item)
        eventually(lambda: pool.stats().failed == 1 and pool.stats().in_flight == 1)
        fake_clock.advance(5)
        eventually(lambda: pool.stats().timed_out == 1 and pool.stats().succeeded == 1)
    s = bg.join().result
    assert sorted(lost) == [("bad", "failed"), ("slow", "timed_out")]
    assert (s.handed_over, s.handover_failed, s.not_handed_over) == (2, 0, 0)


def test_grace_runs_on_the_context_clock(fake_clock):
    # issue 13 item 18: the pool's grace used real time, so FakeClock could not drive it.
    gate = Gate()
    pool = lifecycle.WorkerPool(gate, workers=1, grace=30)
    drain, end_drain = tether.with_cancel(tether.background())
    with tether.with_cancel(tether.background()) as root:
        bg = Bg(pool.run, lifecycle.with_drain(root, drain))
        pool.submit("stuck")
        eventually(lambda: gate.running == 1)
    end_drain()
    eventually(lambda: fake_clock.timers() >= 1)
    time.sleep(0.05)
    assert bg._t.is_alive()  # 30 fake seconds never pass by themselves
    fake_clock.advance(30)
    assert bg.join().result.abandoned == 1
    gate.release.set()
    eventually(lambda: pool.stats().state == "stopped" and threading.active_count() <= 2)


def test_on_unprocessed_raising_base_exception_does_not_stop_the_reporting():
    # issue 13 item 11: after a BaseException the remaining items were neither logged
    # nor handed over.
    proc = run_child(
        """
        import logging, tether
        from tether import lifecycle
        from tests.test_scheduler import Bg
        from tests.conftest import eventually
        logged = []
        class H(logging.Handler):
            def emit(self, rec):
                if getattr(rec, "event", "") == "item_dropped":
                    logged.append(rec.item)
        log = logging.getLogger("t"); log.addHandler(H()); log.propagate = False
        got = []
        def sink(item, reason):
            got.append(item)
            if item == 1:
                raise KeyboardInterrupt
        import threading
        ev = threading.Event()
        pool = lifecycle.WorkerPool(lambda c, i: ev.wait(10), workers=1, drain_queue=False,
                                    on_unprocessed=sink, logger=log)
        with tether.with_cancel(tether.background()) as ctx:
            bg = Bg(pool.run, lifecycle.with_drain(ctx, tether.background()))
            for i in range(4):
                pool.submit(i)
            eventually(lambda: pool.stats().in_flight == 1)
        eventually(lambda: pool.stats().dropped == 3)
        ev.set()
        bg.join()
        s = pool.stats()
        print("logged=", sorted(logged))
        print("got=", got)
        print("counts=", (s.dropped, s.handed_over, s.handover_failed, s.succeeded))
        print("raised=", repr(bg.error))
        """
    )
    out = lines(proc)
    assert out.get("logged") == "['1', '2', '3']", proc.stdout + proc.stderr
    assert out["got"] == "[1, 2, 3]"
    assert out["counts"] == "(3, 2, 1, 1)"
    assert out["raised"] == "KeyboardInterrupt()"


def test_a_slow_on_unprocessed_is_bounded_and_every_item_is_still_logged(fake_clock, caplog):
    # issue 13 item 6: one call per item, no budget, counted dropped before being handed
    # over: a slow callback was cut off by the supervisor (51 of 400 handed over).
    got = []

    def slow_sink(item, reason):
        if reason != "drain deadline":
            return  # the item in flight, cancelled
        got.append(item)
        if len(got) == 3:
            fake_clock.advance(2)  # the callback is slow: the pool's grace (2 s) runs out

    gate = Gate()
    pool = lifecycle.WorkerPool(gate, workers=1, queue_size=500, grace=2, on_unprocessed=slow_sink)
    drain, end_drain = tether.with_cancel(tether.background())
    with tether.with_cancel(tether.background()) as root:
        bg = Bg(pool.run, lifecycle.with_drain(root, drain))
        for i in range(400):
            pool.submit(i)
        eventually(lambda: gate.running == 1)
    end_drain()
    eventually(lambda: pool.stats().dropped == 399)  # the drain (and item 0's ctx) ended
    gate.release.set()
    s = bg.join().result
    assert got == [1, 2, 3]
    # item 0, in flight: cancelled, or abandoned if the slow callback used up the grace
    # before its worker returned; either way reported and handed over
    assert s.cancelled + s.abandoned == 1
    assert (s.dropped, s.handed_over, s.not_handed_over) == (399, 4, 396)
    dropped = [r.item for r in caplog.records if getattr(r, "event", "") == "item_dropped"]
    assert dropped == [str(i) for i in range(1, 400)]  # every one of them is in the log
    assert outcomes(s) == s.accepted == 400


def test_a_worker_thread_that_cannot_start_stops_the_pool_and_nothing_is_lost(monkeypatch):
    # issue 13 item 10 (pool): a thread-start failure must not lose the queue.
    real_start = threading.Thread.start

    def start(self):
        if self.name == "pool-2":
            raise RuntimeError("can't start new thread")
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    gate = Gate()
    lost = []
    pool = lifecycle.WorkerPool(gate, workers=3, on_unprocessed=lambda i, r: lost.append((i, r)))
    for i in range(4):
        pool.submit(i)
    with tether.with_cancel(tether.background()) as ctx:
        bg = Bg(pool.run, ctx)
        eventually(lambda: gate.running == 1 and not pool.accepting())
        gate.release.set()
        bg.join()
    assert isinstance(bg.error, RuntimeError)
    assert "tether: could not start thread 'pool-2'" in str(bg.error)
    s = pool.stats()
    assert (s.succeeded, s.dropped) == (1, 3)
    assert lost == [(1, "no worker"), (2, "no worker"), (3, "no worker")]


def test_drain_scope_per_item_leaves_nothing_on_the_drain_context():
    # issue 13 item 16: each drain_scope() left a callback on the drain context.
    drain, end = tether.with_cancel(tether.background())
    ctx = lifecycle.with_drain(tether.background(), drain)
    tracemalloc.start()
    try:
        for _ in range(2000):  # warm up
            lifecycle.drain_scope(ctx)[1]()
        time.sleep(0.2)
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(20000):
            lifecycle.drain_scope(ctx)[1]()

        def settled():
            return tracemalloc.get_traced_memory()[0] - before < 500_000

        eventually(settled, timeout=10)  # was ~18 MB for 20,000 scopes
    finally:
        tracemalloc.stop()
        end()
