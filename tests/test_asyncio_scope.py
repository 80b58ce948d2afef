"""``async with tether.with_timeout(...)`` behaves exactly like ``asyncio.timeout``, with
the context's error in place of TimeoutError; plus ``await ctx.done()`` from any loop and
``tether.current()`` inside scopes.

Deadlines run on a FakeClock: ``clock.advance()`` called from the loop ends the context
synchronously, and the task is interrupted at its next suspension, deterministically.
"""

# The block under test in `pytest.raises` is the whole `async with` body: PT012 is moot.
# ruff: noqa: PT012

from __future__ import annotations

import asyncio
import contextvars
import threading
import time

import pytest

import tether
from tether.testing import FakeClock

bg = tether.background


@pytest.fixture
def clock():
    with FakeClock(start=1000.0) as c:
        yield c


def run(coro):
    return asyncio.run(coro)


# --------------------------------------------------------------------------------------
# What interrupts the body


def test_interrupts_on_deadline(clock):
    async def main():
        entered = asyncio.Event()
        after_sleep = []

        async def body():
            async with tether.with_timeout(bg(), 5) as ctx:
                entered.set()
                await asyncio.sleep(3600)
                after_sleep.append(True)
            return ctx

        task = asyncio.create_task(body())
        await entered.wait()
        clock.advance(4.5)
        await asyncio.sleep(0)
        assert not task.done()
        clock.advance(0.5)
        with pytest.raises(tether.DeadlineExceeded) as info:
            await task
        assert after_sleep == []
        assert isinstance(info.value.__cause__, asyncio.CancelledError)
        assert task.cancelling() == 0

    run(main())


def test_interrupts_on_parent_cancel_with_its_cause():
    async def main():
        parent, cancel_parent = tether.with_cancel(bg())
        entered = asyncio.Event()

        async def body():
            async with tether.with_timeout(parent, 3600):
                entered.set()
                await asyncio.sleep(3600)

        task = asyncio.create_task(body())
        await entered.wait()
        reason = ConnectionResetError("client went away")
        cancel_parent(reason)
        with pytest.raises(tether.Canceled) as info:
            await task
        assert info.value.__cause__ is reason

    run(main())


def test_interrupts_on_cancel_from_another_thread():
    async def main():
        scope = tether.with_cancel(bg())
        ctx, cancel = scope
        t0 = time.monotonic()
        with pytest.raises(tether.Canceled):
            async with scope:
                t = threading.Timer(0.02, cancel, args=(ValueError("stop"),))
                t.start()
                await asyncio.sleep(30)
        t.join()
        assert time.monotonic() - t0 < 30
        assert isinstance(tether.cause(ctx), ValueError)
        assert asyncio.current_task().cancelling() == 0

    run(main())


@pytest.mark.realtime
def test_interrupts_on_a_real_deadline_never_early():
    async def main():
        t0 = time.monotonic()
        with pytest.raises(tether.DeadlineExceeded):
            async with tether.with_timeout(bg(), 0.05) as ctx:
                await asyncio.sleep(30)
        assert time.monotonic() - t0 >= 0.05
        assert ctx.remaining() <= 0

    run(main())


# --------------------------------------------------------------------------------------
# It raises only if it interrupted


def test_no_error_when_the_body_finishes_first():
    async def main():
        async with tether.with_timeout(bg(), 3600) as ctx:
            await asyncio.sleep(0)
        assert type(ctx.err()) is tether.Canceled  # leaving the block cancels
        assert asyncio.current_task().cancelling() == 0

    run(main())


def test_body_that_completes_before_the_interruption_runs_is_not_affected(clock):
    # The context ends inside the body, which then returns without suspending: the
    # interruption has not run yet, so nothing is raised and nothing stays pending.
    async def by_deadline():
        async with tether.with_timeout(bg(), 1) as ctx:
            clock.advance(1)
            assert type(ctx.err()) is tether.DeadlineExceeded
        await asyncio.sleep(0)  # no stray CancelledError
        await asyncio.sleep(0)
        assert asyncio.current_task().cancelling() == 0

    async def by_cancel():
        scope = tether.with_cancel(bg())
        async with scope as ctx:
            scope.cancel()  # a handler that gives up on its own, then returns
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert type(ctx.err()) is tether.Canceled
        assert asyncio.current_task().cancelling() == 0

    run(by_deadline())
    run(by_cancel())


def test_ended_from_another_thread_while_the_body_blocks():
    async def main():
        scope = tether.with_cancel(bg())
        async with scope as ctx:
            t = threading.Thread(target=scope.cancel)
            t.start()
            assert ctx.done().wait(10)  # blocks the loop: the interrupt cannot run yet
            t.join()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert asyncio.current_task().cancelling() == 0

    run(main())


def test_body_that_swallows_the_interruption(clock):
    async def main():
        async with tether.with_timeout(bg(), 1) as ctx:
            try:
                clock.advance(1)
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                pass  # swallowed: the block ends normally, as with asyncio.timeout
        assert type(ctx.err()) is tether.DeadlineExceeded
        assert asyncio.current_task().cancelling() == 0
        await asyncio.sleep(0)

    run(main())


def test_body_error_wins_over_the_interruption(clock):
    async def main():
        with pytest.raises(KeyError):
            async with tether.with_timeout(bg(), 1):
                try:
                    clock.advance(1)
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    raise KeyError("handled differently") from None
        assert asyncio.current_task().cancelling() == 0

        # ...and an error raised before the interruption ran is the body's own.
        with pytest.raises(KeyError):
            async with tether.with_timeout(bg(), 1):
                clock.advance(1)
                raise KeyError("before any suspension")
        await asyncio.sleep(0)
        assert asyncio.current_task().cancelling() == 0

    run(main())


def test_unrelated_error_propagates_and_cancels_the_context():
    async def main():
        with pytest.raises(ZeroDivisionError):
            async with tether.with_timeout(bg(), 3600) as ctx:
                await asyncio.sleep(0)
                1 / 0
        assert type(ctx.err()) is tether.Canceled

    run(main())


# --------------------------------------------------------------------------------------
# Cancellation from elsewhere passes through


def test_external_task_cancel_passes_through():
    async def main():
        entered = asyncio.Event()
        seen = {}

        async def body():
            try:
                async with tether.with_timeout(bg(), 3600) as ctx:
                    entered.set()
                    await asyncio.sleep(3600)
            except asyncio.CancelledError:
                seen["cancelling"] = asyncio.current_task().cancelling()
                seen["ctx"] = ctx
                raise

        task = asyncio.create_task(body())
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert seen["cancelling"] == 1, "the external cancel request must still be counted"
        assert type(seen["ctx"].err()) is tether.Canceled

    run(main())


def test_external_cancel_at_the_same_time_as_the_deadline(clock):
    async def main():
        entered = asyncio.Event()

        async def body():
            async with tether.with_timeout(bg(), 1):
                entered.set()
                await asyncio.sleep(3600)

        task = asyncio.create_task(body())
        await entered.wait()
        clock.advance(1)  # the interruption is scheduled...
        task.cancel()  # ...and so is a cancellation from elsewhere
        with pytest.raises(asyncio.CancelledError) as info:
            await task
        assert not isinstance(info.value, tether.ContextError)

    run(main())


def test_cancelling_restored_when_entered_with_a_pending_count(clock):
    async def main():
        task = asyncio.current_task()
        task.cancel()
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            pass  # swallowed without uncancel(): cancelling() stays 1
        assert task.cancelling() == 1
        with pytest.raises(tether.DeadlineExceeded):
            async with tether.with_timeout(bg(), 1):
                clock.advance(1)
                await asyncio.sleep(3600)
        assert task.cancelling() == 1
        task.uncancel()

    run(main())


# --------------------------------------------------------------------------------------
# Nested scopes


def test_nested_inner_expires_first(clock):
    async def main():
        task = asyncio.current_task()
        with pytest.raises(tether.DeadlineExceeded) as outer_info:
            async with tether.with_timeout(bg(), 5, cause=TimeoutError("outer")) as outer:
                with pytest.raises(tether.DeadlineExceeded) as inner_info:
                    async with tether.with_timeout(outer, 1, cause=TimeoutError("inner")):
                        clock.advance(1)
                        await asyncio.sleep(3600)
                assert str(inner_info.value.__cause__) == "inner"
                assert outer.err() is None
                assert task.cancelling() == 0
                clock.advance(4)
                await asyncio.sleep(3600)
        assert str(outer_info.value.__cause__) == "outer"
        assert task.cancelling() == 0

    run(main())


@pytest.mark.parametrize("derived", [True, False], ids=["inner-derived", "independent"])
def test_nested_outer_expires_first(clock, derived):
    async def main():
        task = asyncio.current_task()
        inner_saw = []
        with pytest.raises(tether.DeadlineExceeded) as info:
            async with tether.with_timeout(bg(), 1, cause=TimeoutError("outer")) as outer:
                try:
                    async with tether.with_timeout(outer if derived else bg(), 5):
                        clock.advance(1)
                        await asyncio.sleep(3600)
                except BaseException as e:
                    inner_saw.append(type(e))
                    raise
        if derived:
            # The inner context ended by the (outer) deadline: the code inside the inner
            # scope sees DeadlineExceeded, whoever delivered the interruption (issue 8).
            assert inner_saw == [tether.DeadlineExceeded]
        else:
            # An independent inner context is live: the outer interruption is foreign to
            # it and passes through, as with asyncio.timeout.
            assert inner_saw == [asyncio.CancelledError]
        assert str(info.value.__cause__) == "outer"
        assert task.cancelling() == 0

    run(main())


def test_nested_both_expire_together(clock):
    async def main():
        task = asyncio.current_task()
        inner_saw = []
        with pytest.raises(tether.DeadlineExceeded):
            async with tether.with_timeout(bg(), 1) as outer:
                try:
                    async with tether.with_deadline(outer, outer.deadline()):
                        clock.advance(1)
                        await asyncio.sleep(3600)
                except BaseException as e:
                    inner_saw.append(type(e))
                    raise
        assert inner_saw == [tether.DeadlineExceeded]  # its context ended by a deadline
        assert task.cancelling() == 0

    run(main())


# --------------------------------------------------------------------------------------
# Born ended


@pytest.mark.parametrize("how", ["cancelled-parent", "zero-timeout", "past-deadline"])
def test_born_ended_interrupts_at_the_first_await(how):
    async def main():
        parent, cancel_parent = tether.with_cancel(bg())
        if how == "cancelled-parent":
            cancel_parent()
            scope, err = tether.with_timeout(parent, 3600), tether.Canceled
        elif how == "zero-timeout":
            scope, err = tether.with_timeout(parent, 0), tether.DeadlineExceeded
        else:
            scope, err = tether.with_deadline(parent, 0.0), tether.DeadlineExceeded
        ran = []
        with pytest.raises(err):
            async with scope:
                ran.append("before")  # the body runs up to its first suspension
                await asyncio.sleep(3600)
                ran.append("after")
        assert ran == ["before"]
        assert asyncio.current_task().cancelling() == 0
        cancel_parent()

    run(main())


def test_born_ended_without_an_await_is_not_interrupted():
    async def main():
        async with tether.with_timeout(bg(), 0) as ctx:
            pass  # like asyncio.timeout(0) around a body that never suspends
        assert type(ctx.err()) is tether.DeadlineExceeded
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert asyncio.current_task().cancelling() == 0

    run(main())


# --------------------------------------------------------------------------------------
# current()


def test_current_in_with_and_async_with():
    assert tether.current() is bg()
    with tether.with_cancel(bg()) as a:
        assert tether.current() is a
        with tether.with_timeout(a, 60) as b:
            assert tether.current() is b
        assert tether.current() is a
    assert tether.current() is bg()

    async def main():
        seen = {}
        async with tether.with_cancel(bg()) as a:
            assert tether.current() is a

            async def child():
                seen["task"] = tether.current()  # tasks copy their creator's context

            await asyncio.create_task(child())
            async with tether.with_timeout(a, 60) as b:
                assert tether.current() is b
                await asyncio.sleep(0)
                assert tether.current() is b
            assert tether.current() is a
        assert tether.current() is bg()
        assert seen["task"] is a

    run(main())
    assert tether.current() is bg()


def test_current_restored_after_an_error():
    with pytest.raises(KeyError), tether.with_cancel(bg()):
        raise KeyError

    assert tether.current() is bg()

    async def main():
        with pytest.raises(tether.DeadlineExceeded):
            async with tether.with_timeout(bg(), 0):
                await asyncio.sleep(1)
        assert tether.current() is bg()

    run(main())


def test_current_is_per_thread():
    seen = []
    with tether.with_cancel(bg()) as a:
        t = threading.Thread(target=lambda: seen.append(tether.current()))
        t.start()
        t.join()
        # ...unless the contextvars context is carried across explicitly
        ctx_copy = contextvars.copy_context()
        t = threading.Thread(target=lambda: seen.append(ctx_copy.run(tether.current)))
        t.start()
        t.join()
    assert seen == [bg(), a]


# --------------------------------------------------------------------------------------
# await ctx.done()


def test_await_done_from_loops_in_other_threads():
    ctx, cancel = tether.with_cancel(bg())
    ready = threading.Barrier(4)
    woke: list[float] = []

    async def wait():
        ready.wait(10)
        await asyncio.wait_for(ctx.done(), 30)
        woke.append(time.monotonic())

    threads = [threading.Thread(target=asyncio.run, args=(wait(),)) for _ in range(3)]
    for t in threads:
        t.start()
    ready.wait(10)
    time.sleep(0.02)  # let them reach their await
    t0 = time.monotonic()
    cancel()
    for t in threads:
        t.join(30)
    assert len(woke) == 3
    assert all(w >= t0 for w in woke)


def test_await_done_returns_at_once_when_ended():
    async def main():
        ctx, cancel = tether.with_cancel(bg())
        cancel()
        await asyncio.wait_for(ctx.done(), 5)
        ctx2, cancel2 = tether.with_timeout(bg(), 0)
        await asyncio.wait_for(ctx2.done(), 5)
        cancel2()

    run(main())


@pytest.mark.parametrize("make", [tether.background, tether.todo], ids=["background", "todo"])
def test_awaiting_a_context_that_never_ends_can_be_cancelled(make):
    async def main():
        task = asyncio.create_task(_await(make().done()))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(make().done(), 0.01)
        m = make()
        assert (m._c or m)._waiters is None

    run(main())


async def _await(awaitable):
    await awaitable


def test_cancelled_waiter_leaves_nothing_on_the_context():
    async def main():
        ctx, cancel = tether.with_cancel(bg())
        tasks = [asyncio.create_task(_await(ctx.done())) for _ in range(10)]
        await asyncio.sleep(0)
        assert ctx._waiters is not None
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        ws = ctx._waiters
        assert not ws, f"cancelled waiters left behind: {ws!r}"
        cancel()

    run(main())


def test_cancel_from_the_loop_wakes_waiters_on_it():
    async def main():
        ctx, cancel = tether.with_cancel(bg())
        tasks = [asyncio.create_task(_await(ctx.done())) for _ in range(5)]
        await asyncio.sleep(0)
        cancel()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)

    run(main())


# --------------------------------------------------------------------------------------
# Many tasks


def test_a_thousand_scopes_all_interrupted(clock):
    async def main():
        entered = 0
        all_in = asyncio.Event()

        async def one(i):
            nonlocal entered
            async with tether.with_timeout(bg(), 1 + (i % 7) / 8):
                entered += 1
                if entered == 1000:
                    all_in.set()
                await asyncio.sleep(3600)

        tasks = [asyncio.create_task(one(i)) for i in range(1000)]
        await all_in.wait()
        assert clock.timers() == 1000
        clock.advance(2)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(type(r) is tether.DeadlineExceeded for r in results)
        assert all(t.cancelling() == 0 for t in tasks)
        assert clock.timers() == 0

    run(main())


@pytest.mark.realtime
def test_a_thousand_scopes_on_the_real_clock():
    async def main():
        async def one():
            async with tether.with_timeout(bg(), 0.05):
                await asyncio.sleep(30)

        t0 = time.monotonic()
        results = await asyncio.gather(*(one() for _ in range(1000)), return_exceptions=True)
        assert all(type(r) is tether.DeadlineExceeded for r in results)
        assert time.monotonic() - t0 < 30

    run(main())


def test_cancel_after_the_waiting_loop_closed_is_harmless():
    # A task awaits the context (and another sits in `async with`), then its loop is
    # closed under it. Cancelling later must not raise (the loop can no longer be woken),
    # must still end the context, and must leave the loop's waker usable by nobody.
    ctx, cancel = tether.with_cancel(bg())
    loop = asyncio.new_event_loop()

    async def awaits_done():
        await ctx.done()

    async def in_scope():
        async with tether.with_cancel(ctx):
            await asyncio.sleep(3600)

    tasks = [loop.create_task(awaits_done()), loop.create_task(in_scope())]
    loop.run_until_complete(asyncio.sleep(0.01))
    assert not any(t.done() for t in tasks)
    loop.close()  # the tasks stay pending forever: nobody runs this loop again

    cancel(ValueError("after close"))
    assert isinstance(ctx.err(), tether.Canceled)
    assert isinstance(tether.cause(ctx), ValueError)
    waker = tether._aio.waker_for(loop)
    assert waker._pending is None  # the failed post left no batch behind
    for t in tasks:
        t._log_destroy_pending = False  # silence asyncio's "Task was destroyed" at exit
