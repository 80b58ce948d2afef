"""WorkerPool: bounded workers and queue, per-item contexts, drain, nothing silently lost."""

from __future__ import annotations

import logging
import threading

import pytest
from tests.conftest import eventually
from tests.test_scheduler import Bg

import tether
from tether import lifecycle


def outcomes(s: lifecycle.PoolStats) -> int:
    return s.queued + s.in_flight + s.succeeded + s.failed + s.timed_out + s.cancelled + s.dropped


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
    assert rec.item == 2
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
    assert (s.abandoned, s.in_flight) == (1, 1)
    assert lost == [("stuck", "abandoned")]
    gate.release.set()
    eventually(lambda: pool.stats().in_flight == 0)
    assert pool.stats().succeeded == 1
    events = [getattr(r, "event", "") for r in caplog.records]
    assert "item_abandoned" in events
    eventually(lambda: "item_finished_late" in [getattr(r, "event", "") for r in caplog.records])


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
