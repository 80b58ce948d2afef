"""tether.testing.FakeClock: time moves only by advance(), which fires every due deadline
in deadline order, on the calling thread, before it returns."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

import tether
from tether import _clock, _context
from tether.testing import FakeClock

bg = tether.background


def record_expiry(ctx: tether.Context, order: list[str], name: str) -> None:
    """Record, synchronously and on the expiring thread, when ``ctx`` ends."""
    assert _context._add_waiter((ctx._c or ctx), lambda: order.append(name))


def test_installs_and_restores_the_clock():
    real_now, real_timers = _clock.now, _clock.timers
    with FakeClock(start=50.0) as clock:
        assert _clock.now() == 50.0
        ctx, cancel = tether.with_timeout(bg(), 10)
        assert ctx.deadline() == 60.0
        assert ctx.remaining() == 10.0
        clock.advance(2.5)
        assert clock.now() == 52.5
        assert ctx.remaining() == 7.5
        cancel()
    assert _clock.now is real_now
    assert _clock.timers is real_timers


def test_default_start_is_the_real_clock():
    t0 = time.monotonic()
    with FakeClock() as clock:
        assert t0 <= clock.now() <= time.monotonic()
        start = clock.now()
        time.sleep(0.01)
        assert clock.now() == start, "fake time must not move on its own"


def test_fires_exactly_at_the_deadline_never_before():
    with FakeClock(start=1000.0) as clock:
        ctx, cancel = tether.with_timeout(bg(), 1)
        clock.advance(0.5)
        clock.advance(0.25)
        clock.advance(0.125)
        assert ctx.err() is None
        assert ctx.remaining() == 0.125
        clock.advance(0.125)
        assert type(ctx.err()) is tether.DeadlineExceeded
        assert ctx.remaining() == 0
        cancel()


def test_fires_in_deadline_order_and_equal_deadlines_in_arming_order():
    with FakeClock(start=1000.0) as clock:
        order: list[str] = []
        scopes = {}
        for name, seconds in [("c", 3), ("a", 1), ("b1", 2), ("b2", 2), ("b3", 2)]:
            scopes[name] = tether.with_timeout(bg(), seconds)
            record_expiry(scopes[name].ctx, order, name)
        clock.advance(10)  # one advance over all of them
        assert order == ["a", "b1", "b2", "b3", "c"]
        for s in scopes.values():
            s.cancel()


def test_advance_fires_only_what_is_due():
    with FakeClock(start=1000.0) as clock:
        scopes = [tether.with_timeout(bg(), s) for s in (1, 2, 3)]
        assert clock.timers() == 3
        clock.advance(2)
        assert [type(c.err()) for c, _ in scopes] == [
            tether.DeadlineExceeded,
            tether.DeadlineExceeded,
            type(None),
        ]
        assert clock.timers() == 1
        for _, cancel in scopes:
            cancel()
        assert clock.timers() == 0


def test_advance_wakes_waiters(runtime):
    with FakeClock(start=1000.0) as clock:
        ctx, cancel = tether.with_timeout(bg(), 1)
        w = runtime.waiter(ctx)
        clock.advance(1)
        w.result(5)
        cancel()


def test_after_func_fired_by_advance_runs_on_another_thread():
    with FakeClock(start=1000.0) as clock:
        ctx, cancel = tether.with_timeout(bg(), 1)
        ran_on: list[int] = []
        done = threading.Event()
        tether.after_func(ctx, lambda: (ran_on.append(threading.get_ident()), done.set()))
        clock.advance(1)
        assert done.wait(5)
        assert ran_on != [threading.get_ident()]
        cancel()


def test_deadlines_armed_inside_do_not_use_the_real_timer():
    with _context._LOCK:
        real_before = _context._REAL_TIMERS.live()
    with FakeClock(start=1000.0) as clock:
        scopes = [tether.with_timeout(bg(), 1) for _ in range(10)]
        with _context._LOCK:
            assert _context._REAL_TIMERS.live() == real_before
        assert clock.timers() == 10
        for _, cancel in scopes:
            cancel()


def test_contexts_made_before_the_clock_are_not_fired_by_it():
    ctx, cancel = tether.with_timeout(bg(), 3600)
    with FakeClock() as clock:
        clock.advance(7200)
        assert ctx.err() is None  # its timer is on the real clock
        assert ctx.remaining() <= -3500  # but remaining() reads the installed clock
    cancel()


def test_aware_datetime_deadline_under_the_fake_clock():
    with FakeClock(start=1000.0) as clock:
        ctx, cancel = tether.with_deadline(bg(), datetime.now(UTC) + timedelta(seconds=10))
        assert 1009 < ctx.deadline() <= 1010
        clock.advance(9)
        assert ctx.err() is None
        clock.advance(1.5)
        assert type(ctx.err()) is tether.DeadlineExceeded
        cancel()


def test_concurrent_advances_add_up_and_fire_each_deadline_once():
    with FakeClock(start=1000.0) as clock:
        scopes = [tether.with_timeout(bg(), 0.25 * i) for i in range(1, 65)]
        fired: list[int] = []
        for i, (ctx, _) in enumerate(scopes):
            assert _context._add_waiter((ctx._c or ctx), lambda i=i: fired.append(i))
        start = threading.Barrier(8)

        def work():
            start.wait(10)
            for _ in range(8):
                clock.advance(0.25)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert clock.now() == 1000.0 + 64 * 0.25
        assert sorted(fired) == list(range(64))
        for _, cancel in scopes:
            cancel()


def test_expiry_sees_the_advanced_time_and_may_arm_new_deadlines():
    with FakeClock(start=1000.0) as clock:
        first, cancel_first = tether.with_timeout(bg(), 1)
        armed = []

        def arm():  # runs inside advance(), on this thread, after `first` expired
            armed.append((clock.now(), tether.with_timeout(bg(), 1)))

        assert _context._add_waiter((first._c or first), arm)
        clock.advance(3)  # time jumps to the end, then what is due fires
        seen_at, (second, cancel_second) = armed[0]
        assert seen_at == 1003.0
        assert second.deadline() == 1004.0
        assert second.err() is None
        clock.advance(1)
        assert type(second.err()) is tether.DeadlineExceeded
        cancel_first()
        cancel_second()


def test_misuse():
    clock = FakeClock()
    with pytest.raises(RuntimeError, match=r"^tether: .*installed"):
        clock.advance(1)
    with clock:
        with pytest.raises(ValueError, match=r"^tether: time only moves forward"):
            clock.advance(-1)
        with pytest.raises(TypeError, match=r"^tether: "):
            clock.advance("1")
        with pytest.raises(ValueError, match=r"^tether: "):
            clock.advance(float("nan"))
        with pytest.raises(RuntimeError, match=r"^tether: a FakeClock is already installed"):
            FakeClock().__enter__()
    assert "FakeClock" in repr(clock)


def test_plugin_fixture(fake_clock):
    assert isinstance(fake_clock, FakeClock)
    ctx, cancel = tether.with_timeout(bg(), 5)
    fake_clock.advance(5)
    assert type(ctx.err()) is tether.DeadlineExceeded
    cancel()


def test_plugin_ctx_fixture(ctx):
    assert ctx.err() is None
    assert isinstance(ctx, tether.Context)
