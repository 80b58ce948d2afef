"""tether.sleep / tether.asleep: a pause a context can cut short, on fake time."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta

import pytest
from tests.conftest import eventually

import tether

bg = tether.background


def in_thread(fn):
    out = []

    def target():
        try:
            out.append(("ok", fn()))
        except BaseException as e:
            out.append(("raised", e))

    t = threading.Thread(target=target)
    t.start()
    return t, out


def test_sleep_returns_after_the_duration(fake_clock):
    t, out = in_thread(lambda: tether.sleep(bg(), 5))
    eventually(lambda: fake_clock.timers() == 1)
    fake_clock.advance(4.99)
    assert not out
    fake_clock.advance(0.01)
    t.join(10)
    assert out == [("ok", None)]
    assert fake_clock.timers() == 0


def test_sleep_accepts_timedelta(fake_clock):
    t, out = in_thread(lambda: tether.sleep(bg(), timedelta(milliseconds=1500)))
    eventually(lambda: fake_clock.timers() == 1)
    fake_clock.advance(1.5)
    t.join(10)
    assert out == [("ok", None)]


def test_parent_deadline_first_raises_deadline_exceeded_at_the_deadline(fake_clock):
    with tether.with_timeout(bg(), 2) as ctx:
        t, out = in_thread(lambda: tether.sleep(ctx, 10))
        eventually(
            lambda: (ctx._c or ctx)._children
        )  # the sleep's child exists (no timer of its own)
        fake_clock.advance(1.9)
        assert not out
        fake_clock.advance(0.1)
        t.join(10)
    kind, exc = out[0]
    assert kind == "raised"
    assert isinstance(exc, tether.DeadlineExceeded)
    assert fake_clock.timers() == 0


def test_cancel_raises_at_once_with_the_cause(runtime):
    ctx, cancel = tether.with_cancel(bg())
    why = ConnectionResetError("peer gone")
    if runtime.name == "thread":
        t, out = in_thread(lambda: tether.sleep(ctx, 3600))
        eventually(lambda: (ctx._c or ctx)._children)
        cancel(why)
        t.join(10)
        exc = out[0][1]
    else:

        async def sleeper():
            try:
                await tether.asleep(ctx, 3600)
            except tether.Canceled as e:
                return e

        fut = asyncio.run_coroutine_threadsafe(sleeper(), runtime.loop)
        eventually(lambda: (ctx._c or ctx)._children)
        cancel(why)
        exc = fut.result(10)
    assert isinstance(exc, tether.Canceled)
    assert exc.__cause__ is why


def test_ended_context_raises_at_once():
    ctx, cancel = tether.with_cancel(bg())
    cancel()
    with pytest.raises(tether.Canceled):
        tether.sleep(ctx, 0)
    with pytest.raises(tether.Canceled):
        tether.sleep(ctx, 10)
    with pytest.raises(tether.Canceled):
        asyncio.run(tether.asleep(ctx, 10))


def test_zero_or_negative_returns_at_once():
    tether.sleep(bg(), 0)
    tether.sleep(bg(), -1)
    asyncio.run(tether.asleep(bg(), 0))


@pytest.mark.parametrize(
    ("seconds", "exc"),
    [("1", TypeError), (True, TypeError), (None, TypeError), (float("nan"), ValueError)],
)
def test_bad_durations(seconds, exc):
    with pytest.raises(exc, match=r"^tether: "):
        tether.sleep(bg(), seconds)
    with pytest.raises(exc, match=r"^tether: "):
        asyncio.run(tether.asleep(bg(), seconds))


def test_none_context():
    with pytest.raises(TypeError, match=r"^tether: "):
        tether.sleep(None, 1)


def test_asleep_on_fake_time(fake_clock):
    async def main():
        done = []

        async def sleeper():
            await tether.asleep(bg(), 3)
            done.append(fake_clock.now())

        t = asyncio.create_task(sleeper())
        while fake_clock.timers() < 1:
            await asyncio.sleep(0.001)
        start = fake_clock.now()
        fake_clock.advance(2)
        await asyncio.sleep(0.01)
        assert not done
        fake_clock.advance(1)
        await asyncio.wait_for(t, 10)
        assert done == [start + 3]

    asyncio.run(main())


def test_asleep_parent_deadline(fake_clock):
    async def main():
        with tether.with_timeout(bg(), 1) as ctx:
            t = asyncio.create_task(tether.asleep(ctx, 60))
            await asyncio.sleep(0.01)
            fake_clock.advance(1)
            with pytest.raises(tether.DeadlineExceeded):
                await asyncio.wait_for(t, 10)

    asyncio.run(main())


def test_asleep_cancelled_task_leaves_nothing(fake_clock):
    async def main():
        t = asyncio.create_task(tether.asleep(bg(), 60))
        while fake_clock.timers() < 1:
            await asyncio.sleep(0.001)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        assert fake_clock.timers() == 0  # the sleep's context was cancelled

    asyncio.run(main())
