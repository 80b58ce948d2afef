"""A first pass over the core; the Go ports live in test_go_context.py."""

from __future__ import annotations

import asyncio
import gc
import threading
import time

import pytest

import tether


def test_cancel_wakes_waiter(runtime):
    ctx, cancel = tether.with_cancel(tether.background())
    fut = runtime.waiter(ctx)
    t0 = time.monotonic()
    cancel()
    assert fut.result(5) >= t0
    assert isinstance(ctx.err(), tether.Canceled)


def test_fake_clock_fires_in_order(fake_clock):
    bg = tether.background()
    order = []
    with tether.with_timeout(bg, 2) as a, tether.with_timeout(bg, 1) as b:
        tether.after_func(a, lambda: order.append("a"))
        fake_clock.advance(0.5)
        assert a.err() is None
        assert b.err() is None
        fake_clock.advance(1)
        assert isinstance(b.err(), tether.DeadlineExceeded)
        assert a.err() is None
        assert b.remaining() <= 0
        fake_clock.advance(1)
        assert isinstance(a.err(), tether.DeadlineExceeded)


def test_async_with_interrupts_and_restores_cancelling():
    async def main():
        task = asyncio.current_task()
        with pytest.raises(tether.DeadlineExceeded):
            async with tether.with_timeout(tether.background(), 0.01):
                await asyncio.sleep(10)
        assert task.cancelling() == 0

    asyncio.run(main())


@pytest.mark.tether_allow_leaks
def test_lost_cancel_warns_with_site():
    parent, cancel_parent = tether.with_cancel(tether.background())

    def leak():
        ctx, _cancel = tether.with_cancel(parent)
        return ctx

    with pytest.warns(tether.LostCancelWarning, match=r"created at .*test_smoke\.py"):
        leak()
    cancel_parent()
    gc.collect()


def test_threads_do_not_leak():
    t = threading.Thread(target=time.sleep, args=(0.01,))
    t.start()
    t.join()
