"""``await ctx.done()`` from Trio and from AnyIO (both backends)."""

from __future__ import annotations

import threading
import time

import anyio
import pytest
import trio

import tether


def test_trio_task_woken_by_cancel_from_another_thread():
    ctx, cancel = tether.with_cancel(tether.background())
    timer = threading.Timer(0.05, cancel)

    async def main() -> float:
        timer.start()
        t0 = time.monotonic()
        with trio.fail_after(10):
            await ctx.done()
        return time.monotonic() - t0

    waited = trio.run(main)
    timer.join()
    assert ctx.err() is not None
    assert 0.0 < waited < 10


def test_trio_already_ended_returns_at_once():
    ctx, cancel = tether.with_cancel(tether.background())
    cancel()

    async def main() -> None:
        with trio.fail_after(5):
            await ctx.done()

    trio.run(main)


def test_trio_cancellation_unregisters_the_waiter():
    ctx, cancel = tether.with_cancel(tether.background())

    async def main() -> None:
        with trio.move_on_after(0.01) as scope:
            await ctx.done()
        assert scope.cancelled_caught

    trio.run(main)
    assert not ctx._waiters  # nothing left behind on the context
    cancel()


def test_trio_background_waits_until_cancelled():
    async def main() -> None:
        with trio.move_on_after(0.01) as scope:
            await tether.background().done()
        assert scope.cancelled_caught

    trio.run(main)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_anyio_both_backends(backend):
    async def main() -> None:
        with tether.with_timeout(tether.background(), 0.02) as ctx:
            with anyio.fail_after(10):
                await ctx.done()
            assert isinstance(ctx.err(), tether.DeadlineExceeded)

    anyio.run(main, backend=backend)


def test_trio_many_waiters_one_cancel():
    ctx, cancel = tether.with_cancel(tether.background())
    woken = 0

    async def waiter() -> None:
        nonlocal woken
        await ctx.done()
        woken += 1

    async def main() -> None:
        async with trio.open_nursery() as n:
            for _ in range(200):
                n.start_soon(waiter)
            await trio.sleep(0.01)
            canceller = threading.Thread(target=cancel)
            canceller.start()
            await trio.sleep(0)
        canceller.join()

    trio.run(main)
    assert woken == 200


def test_await_outside_any_loop_is_a_clear_error():
    ctx, cancel = tether.with_cancel(tether.background())
    gen = ctx.done().__await__()
    with pytest.raises(RuntimeError, match=r"^tether: .*ctx\.done\(\)\.wait"):
        next(gen)
    cancel()
