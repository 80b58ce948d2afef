"""The shared timer: one thread for any number of deadlines, started lazily, woken by an
earlier deadline, gone when idle; far deadlines; a heap that stays bounded when timers
are cancelled; a deadline that never fires early.

These reach into the real queue (``tether._context._REAL_TIMERS``) to count timers and
threads: what they assert is what a user pays (threads, memory), not an internal layout.
"""

from __future__ import annotations

import gc
import threading
import time
import weakref
from datetime import UTC, datetime

import pytest

import tether
from tether import _clock, _context
from tether.testing import FakeClock

bg = tether.background
REAL = _context._REAL_TIMERS


def live_timers(queue: _clock.TimerQueue = REAL) -> int:
    with _context._LOCK:
        return queue.live()


def timer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "tether-timer" and t.is_alive()]


def wait_until(check, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            pytest.fail("condition not reached in time")
        time.sleep(0.005)


def test_one_thread_for_100_000_deadlines():
    base = live_timers()
    threads_before = {t.ident for t in threading.enumerate() if t.name != "tether-timer"}
    scopes = [tether.with_timeout(bg(), 1000 + i * 1e-3) for i in range(100_000)]
    try:
        assert live_timers() == base + 100_000
        assert len(timer_threads()) == 1
        others = {t.ident for t in threading.enumerate() if t.name != "tether-timer"}
        assert others <= threads_before, "arming deadlines started threads besides the timer"
        assert all(ctx.err() is None for ctx, _ in scopes[::10_000])
    finally:
        # Oldest first: none of them is the newest heap entry, so this exercises the
        # sweep of disarmed entries, not the O(1) pop of the last one.
        for _, cancel in scopes:
            cancel()
    assert live_timers() == base
    with _context._LOCK:
        assert len(REAL.heap) <= max(_clock._COMPACT_MIN, 2 * REAL.live()) + 1
    assert all(type(ctx.err()) is tether.Canceled for ctx, _ in scopes[::10_000])


@pytest.mark.realtime
def test_timer_thread_exits_when_idle_and_restarts(monkeypatch):
    monkeypatch.setattr(_clock, "IDLE_SECONDS", 0.05)
    seen = []
    for _ in range(2):
        ctx, cancel = tether.with_timeout(bg(), 0.01)
        seen.append(REAL._thread)
        assert seen[-1] is not None, "arming a deadline must start the timer thread"
        assert ctx.done().wait(10)
        assert type(ctx.err()) is tether.DeadlineExceeded
        cancel()
        wait_until(lambda: REAL._thread is None and not timer_threads())
    assert seen[0] is not seen[1], "the second deadline should have started a new thread"


@pytest.mark.realtime
def test_timer_thread_exits_once_every_timer_is_cancelled(monkeypatch):
    # Cancelled timers stay in the heap until popped; the thread must still notice that
    # none is live and exit, not sleep towards a dead far deadline for up to an hour.
    monkeypatch.setattr(_clock, "IDLE_SECONDS", 0.05)
    scopes = [tether.with_timeout(bg(), 3600 + i) for i in range(10)]
    time.sleep(0.02)  # the thread is asleep towards the first of them
    assert REAL._thread is not None
    for _, cancel in scopes:
        cancel()
    wait_until(lambda: REAL._thread is None and not timer_threads())
    with _context._LOCK:
        assert REAL.heap == []


@pytest.mark.realtime
def test_an_earlier_deadline_wakes_the_sleeping_thread():
    far, cancel_far = tether.with_timeout(bg(), 3600)
    time.sleep(0.05)  # let the thread go to sleep towards the far deadline
    t0 = time.monotonic()
    near, cancel_near = tether.with_timeout(bg(), 0.05)
    assert near.done().wait(30), "the timer slept through an earlier deadline"
    # Without the wake-up it would have slept for an hour; 30 s is a generous margin.
    assert time.monotonic() - t0 < 30
    assert far.err() is None
    cancel_far()
    cancel_near()


@pytest.mark.realtime
def test_a_deadline_never_fires_early():
    seen: list[tuple[float, float | None]] = []
    scopes = [tether.with_timeout(bg(), 0.002 * i) for i in range(1, 26)]
    for ctx, _ in scopes:
        # Runs on the timer thread, inside the expiry: the moment the deadline fires.
        def record(ctx=ctx):
            seen.append((time.monotonic() - ctx.deadline(), ctx.remaining()))

        assert _context._add_waiter((ctx._c or ctx), record)
    for ctx, _ in scopes:
        assert ctx.done().wait(10)
        assert ctx.remaining() <= 0
    wait_until(lambda: len(seen) == len(scopes))
    for late, remaining in seen:
        assert late >= 0
        assert remaining is not None
        assert remaining <= 0
    for _, cancel in scopes:
        cancel()


@pytest.mark.realtime
def test_far_future_deadlines():
    far = [
        tether.with_timeout(bg(), 1e12),
        tether.with_timeout(bg(), 1e300),
        tether.with_deadline(bg(), datetime(9999, 12, 31, tzinfo=UTC)),
    ]
    for ctx, _ in far:
        assert ctx.err() is None
        assert ctx.remaining() > 1e9
    assert far[0][0].remaining() == pytest.approx(1e12)
    # The timer thread is alive and still fires a near deadline.
    near, cancel = tether.with_timeout(bg(), 0.01)
    assert near.done().wait(30)
    assert type(near.err()) is tether.DeadlineExceeded
    cancel()
    for ctx, cancel in far:
        cancel()
        assert type(ctx.err()) is tether.Canceled


def test_done_wait_with_a_huge_timeout():
    # A timeout longer than the platform's lock limit means "no limit", not an error.
    ctx, cancel = tether.with_cancel(bg())
    t = threading.Timer(0.02, cancel)
    t.start()
    assert ctx.done().wait(1e12) is True
    t.join()


def test_compaction_keeps_the_heap_bounded():
    with FakeClock(start=1000.0) as clock:
        queue = clock._timers
        scopes = [tether.with_timeout(bg(), 1 + i) for i in range(20_000)]
        assert clock.timers() == 20_000
        refs = [weakref.ref(ctx) for ctx, _ in scopes]
        for i, scope in enumerate(scopes):  # oldest first: never the heap's tail
            scope.cancel()
            if i % 499 == 0:
                assert len(queue.heap) <= max(_clock._COMPACT_MIN, 2 * queue.live()) + 1
        assert clock.timers() == 0
        assert len(queue.heap) <= _clock._COMPACT_MIN + 1
        # What is left in the heap keeps no context alive.
        del scopes, scope
        gc.collect()
        assert all(r() is None for r in refs)


def test_cancelling_a_parent_disarms_every_descendant():
    with FakeClock(start=1000.0) as clock:
        root, cancel_root = tether.with_cancel(bg())
        cancels = []
        for i in range(100):
            child, c1 = tether.with_timeout(root, 10 + i)
            _, c2 = tether.with_timeout(child, 5 + i)
            cancels += [c1, c2]
        assert clock.timers() == 200
        cancel_root()
        assert clock.timers() == 0
        assert not root._children
        for c in cancels:
            c()


def test_an_expired_context_is_released():
    with FakeClock(start=1000.0) as clock:
        ctx, cancel = tether.with_timeout(bg(), 1)
        ref = weakref.ref(ctx)
        clock.advance(1)
        assert clock.timers() == 0
        assert type(ctx.err()) is tether.DeadlineExceeded
        cancel()
        del ctx, cancel
        gc.collect()
        assert ref() is None


def test_a_child_of_an_earlier_deadline_arms_no_timer():
    with FakeClock(start=1000.0) as clock:
        parent, cancel_parent = tether.with_timeout(bg(), 1)
        later, cancel_later = tether.with_timeout(parent, 2)
        same, cancel_same = tether.with_deadline(parent, parent.deadline())
        earlier, cancel_earlier = tether.with_timeout(parent, 0.5)
        assert clock.timers() == 2  # parent and earlier
        assert later.deadline() == parent.deadline()
        assert same.deadline() == parent.deadline()
        assert earlier.deadline() == 1000.5
        clock.advance(1)
        for c in (parent, later, same, earlier):
            assert type(c.err()) is tether.DeadlineExceeded
        for c in (cancel_parent, cancel_later, cancel_same, cancel_earlier):
            c()
