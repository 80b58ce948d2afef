"""Issue 7 and issue 8 item 3: the loop's own deadline timer, and the rule that a scope
whose context ended by a deadline surfaces ``DeadlineExceeded`` to the code inside it.

No timing is asserted: the loop-local path is shown by stopping the timer thread, not by
measuring lateness (that is ``bench/bench_aio.py``'s job).
"""

# The block under test in `pytest.raises` is the whole `async with` body: PT012 is moot.
# ruff: noqa: PT012

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import tether
from lifehelp import run_child
from tether import _aio, _clock, _context
from tether.testing import FakeClock

bg = tether.background


@pytest.fixture
def timer_thread_blocked(monkeypatch):
    """Make the shared timer thread unable to end anything until the test is over.

    The thread takes the tree lock through ``queue.locked`` for every look at its heap;
    from the timer thread that call now blocks (without the lock) until released. The
    loop's own path uses ``_context._locked`` directly, so it is unaffected.
    """
    q = _context._REAL_TIMERS
    release = threading.Event()
    blocked = threading.Event()
    real = q.locked

    def locked(fn, *args):
        if threading.current_thread().name == "tether-timer":
            blocked.set()
            release.wait()
        return real(fn, *args)

    monkeypatch.setattr(q, "locked", locked)
    # Make sure the thread runs and reaches the blocking call: arm a deadline.
    _, cancel = tether.with_timeout(bg(), 0.001)
    assert blocked.wait(10), "the timer thread did not reach its heap"
    yield blocked
    release.set()
    cancel()


def test_a_deadline_scope_on_a_loop_ends_without_the_timer_thread(timer_thread_blocked):
    async def main():
        t0 = time.monotonic()
        with pytest.raises(tether.DeadlineExceeded) as info:
            async with tether.with_timeout(bg(), 0.05, cause=TimeoutError("budget")) as ctx:
                await asyncio.sleep(5)
        assert time.monotonic() >= ctx.deadline()  # never early
        assert time.monotonic() - t0 < 4  # not the sleep: the deadline ended it
        assert type(ctx.err()) is tether.DeadlineExceeded
        assert str(info.value.__cause__) == "budget"
        assert asyncio.current_task().cancelling() == 0

    asyncio.run(main())
    assert timer_thread_blocked.is_set()


def test_an_inherited_deadline_is_delivered_by_the_loop_too(timer_thread_blocked):
    async def main():
        parent, cancel = tether.with_timeout(bg(), 0.05)
        try:
            with pytest.raises(tether.DeadlineExceeded):
                async with tether.with_cancel(parent) as ctx:
                    await asyncio.sleep(5)
            assert type(ctx.err()) is tether.DeadlineExceeded
            assert type(parent.err()) is tether.DeadlineExceeded
        finally:
            cancel()

    asyncio.run(main())


def test_many_scopes_later_deadlines_are_reached_after_the_first(timer_thread_blocked):
    # One loop timer at the earliest deadline; after it fires it re-arms for the next.
    async def main():
        results = []

        async def one(d):
            try:
                async with tether.with_timeout(bg(), d):
                    await asyncio.sleep(5)
            except tether.DeadlineExceeded:
                results.append(d)

        await asyncio.gather(*(one(d) for d in (0.08, 0.02, 0.05, 0.11)))
        assert sorted(results) == [0.02, 0.05, 0.08, 0.11]
        assert _aio.waker_for(asyncio.get_running_loop()).scopes == 0

    asyncio.run(main())


def test_a_thread_waiting_on_the_context_is_released_by_the_loop(timer_thread_blocked):
    waited = []

    async def main():
        with pytest.raises(tether.DeadlineExceeded):
            async with tether.with_timeout(bg(), 0.05) as ctx:
                t = threading.Thread(target=lambda: waited.append(ctx.done().wait(20)))
                t.start()
                try:
                    await asyncio.sleep(5)
                finally:
                    await asyncio.to_thread(t.join)
        return ctx

    ctx = asyncio.run(main())
    assert waited == [True]
    assert type(ctx.err()) is tether.DeadlineExceeded


def test_no_loop_timer_under_a_fake_clock():
    # A FakeClock drives every deadline itself, deterministically: the loop arms nothing.
    with FakeClock(start=50.0) as clock:

        async def main():
            loop = asyncio.get_running_loop()
            w = _aio.waker_for(loop)
            with pytest.raises(tether.DeadlineExceeded):
                async with tether.with_timeout(bg(), 5):
                    assert w.timer is None
                    assert w.scopes == 0
                    clock.advance(5)
                    await asyncio.sleep(3600)

        asyncio.run(main())
    assert _clock.timers is _context._REAL_TIMERS


def test_the_loop_timer_is_left_alone_by_a_scope_that_ends_first():
    async def main():
        loop = asyncio.get_running_loop()
        w = _aio.waker_for(loop)
        async with tether.with_timeout(bg(), 60):
            assert w.scopes == 1
            assert w.timer is not None
            first = w.timer_at
            async with tether.with_timeout(bg(), 120):  # later: no new loop timer
                assert w.timer_at == first
                assert w.scopes == 2
            async with tether.with_timeout(bg(), 30):  # earlier: re-armed
                assert w.timer_at < first
        assert w.scopes == 0

    asyncio.run(main())


# --------------------------------------------------------------------------------------
# Issue 8 item 3: DeadlineExceeded inside a scope, whoever delivered the interruption


def test_taskgroup_task_sees_deadline_exceeded_inside_its_own_scope():
    seen = []

    async def slow_dependency(ctx):
        try:
            async with tether.with_timeout(ctx, 10):
                await asyncio.sleep(3600)
        except tether.DeadlineExceeded as e:
            seen.append((type(e), asyncio.current_task().cancelling()))
            return "fallback"
        return "fresh"

    async def main():
        ctx, cancel = tether.with_timeout(bg(), 0.05)
        try:
            async with tether.TaskGroup(ctx) as g:
                h = g.go(slow_dependency)
            return h.result()
        finally:
            cancel()

    assert asyncio.run(main()) == "fallback"
    # the group's cancel request was answered by the error: the task is not cancelling
    assert seen == [(tether.DeadlineExceeded, 0)]


def test_taskgroup_task_that_lets_the_deadline_out_fails_the_group_with_it():
    async def slow_dependency(ctx):
        async with tether.with_timeout(ctx, 10):
            await asyncio.sleep(3600)

    async def main():
        ctx, cancel = tether.with_timeout(bg(), 0.05)
        try:
            with pytest.raises(tether.DeadlineExceeded):
                async with tether.TaskGroup(ctx) as g:
                    h = g.go(slow_dependency)
            with pytest.raises(tether.DeadlineExceeded):
                h.result()
        finally:
            cancel()

    asyncio.run(main())


def test_taskgroup_cancelled_not_by_deadline_keeps_its_error():
    # A sibling fails: the group's context is Canceled; the scope inside sees its
    # context's error (Canceled), the group raises the sibling's error.
    seen = []

    async def waits(ctx):
        try:
            async with tether.with_cancel(ctx):
                await asyncio.sleep(3600)
        except BaseException as e:
            seen.append(type(e))
            raise

    async def fails(ctx):
        await asyncio.sleep(0.01)
        raise ValueError("boom")

    async def main():
        with pytest.raises(ValueError, match="boom"):
            async with tether.TaskGroup(bg()) as g:
                g.go(waits)
                g.go(fails)

    asyncio.run(main())
    assert seen == [tether.Canceled]


def test_a_foreign_cancel_still_passes_through_a_group_deadline():
    # The group's deadline and a cancel from elsewhere land together: the foreign request
    # is not swallowed (it would be lost for good), so CancelledError passes through.
    seen = []

    async def slow(ctx):
        try:
            async with tether.with_timeout(ctx, 10):
                await asyncio.sleep(3600)
        except BaseException as e:
            seen.append(type(e))
            raise

    async def main():
        with FakeClock(start=10.0) as clock:
            ctx, cancel = tether.with_timeout(bg(), 1)
            try:
                async with tether.TaskGroup(ctx) as g:
                    h = g.go(slow)
                    await asyncio.sleep(0)
                    clock.advance(1)  # the group and the scope interrupt the task ...
                    h._task.cancel()  # ... and so does someone else
            except BaseException:
                pass
            finally:
                cancel()

    asyncio.run(main())
    assert seen == [asyncio.CancelledError]
    assert not _aio.group_cancels
    assert not _aio.scope_cancels


def test_group_delivery_alone_still_surfaces_the_deadline(monkeypatch):
    # The scope's own interruption has not run when the group's reaches the task (it was
    # posted later): the code inside still sees DeadlineExceeded.
    monkeypatch.setattr(tether.CancelFunc, "_interrupt", lambda self: None)
    seen = []

    async def slow(ctx):
        try:
            async with tether.with_timeout(ctx, 10):
                await asyncio.sleep(3600)
        except BaseException as e:
            seen.append((type(e), asyncio.current_task().cancelling()))
            raise

    async def main():
        with tether.with_timeout(bg(), 0.05) as ctx:
            with pytest.raises(tether.DeadlineExceeded):
                async with tether.TaskGroup(ctx) as g:
                    g.go(slow)

    asyncio.run(main())
    assert seen == [(tether.DeadlineExceeded, 0)]
    assert not _aio.group_cancels


def test_an_ended_scope_never_converts_a_foreign_cancel_alone():
    # The context ended, but the only cancel request came from outside tether.
    seen = []

    async def main():
        async def body():
            s = tether.with_cancel(bg())
            try:
                async with s:
                    s.cancel()  # ends the context; its interruption is posted...
                    asyncio.current_task().cancel()  # ...a foreign cancel lands first
                    await asyncio.sleep(3600)
            except BaseException as e:
                seen.append(type(e))
                raise

        with pytest.raises(asyncio.CancelledError):
            await asyncio.create_task(body())

    asyncio.run(main())
    assert seen == [asyncio.CancelledError]


def test_scopes_interrupt_whichever_module_imports_the_bridge_first():
    # `async with` runs tether._aio's coroutines, installed on Scope when that module is
    # imported; the core reaches the module through a global that must be set however it
    # was imported (here directly, before any scope: a fresh interpreter).
    out = run_child(
        """
        import asyncio
        from tether import _aio
        import tether

        async def main():
            parent, cancel = tether.with_cancel(tether.background())
            try:
                async with tether.with_cancel(parent):
                    cancel()
                    await asyncio.sleep(5)
            except tether.Canceled:
                print("canceled")

        asyncio.run(main())
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "canceled", out.stdout + out.stderr
