"""tether.to_thread: a worker thread that watches a child context of the awaiting task."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest
from tests.conftest import eventually

import tether

bg = tether.background
VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_result_child_context_and_contextvars():
    async def main():
        VAR.set("caller")
        with tether.with_cancel(bg()) as ctx:

            def fn(child, x):
                assert child is not ctx
                assert child.err() is None
                assert tether.current() is child
                assert threading.current_thread() is not threading.main_thread()
                return (x * 2, VAR.get(), repr(child))

            value, var, rep = await tether.to_thread(ctx, fn, 21)
        assert value == 42
        assert var == "caller"
        assert "to_thread" in rep

    run(main())


def test_exception_propagates():
    async def main():
        def fn(child):
            raise KeyError("boom")

        with pytest.raises(KeyError, match="boom"):
            await tether.to_thread(bg(), fn)

    run(main())


def test_task_cancel_cancels_the_child_and_waits_for_fn():
    async def main():
        entered = threading.Event()
        finished = []

        def fn(child):
            entered.set()
            assert child.done().wait(30)  # blocks until the awaiting task is cancelled
            finished.append(tether.cause(child))
            return "late result"

        task = asyncio.create_task(tether.to_thread(bg(), fn))
        await asyncio.get_running_loop().run_in_executor(None, entered.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # the await waited for fn: it had already finished when CancelledError came
        assert len(finished) == 1
        assert isinstance(finished[0], asyncio.CancelledError)

    run(main())


def test_repeated_cancels_still_wait():
    async def main():
        entered = threading.Event()
        release = threading.Event()
        finished = []

        def fn(child):
            entered.set()
            assert release.wait(30)  # ignores child on purpose, until released
            finished.append(1)

        task = asyncio.create_task(tether.to_thread(bg(), fn))
        await asyncio.get_running_loop().run_in_executor(None, entered.wait, 10)
        for _ in range(3):
            task.cancel()
            await asyncio.sleep(0.01)
            assert not task.done()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert finished == [1]

    run(main())


def test_abandon_returns_at_once():
    release = threading.Event()
    finished = []

    async def main():
        entered = threading.Event()

        def fn(child):
            entered.set()
            assert release.wait(30)
            finished.append(child.err())

        task = asyncio.create_task(tether.to_thread(bg(), fn, abandon=True))
        await asyncio.get_running_loop().run_in_executor(None, entered.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert finished == []  # fn still runs, abandoned

    run(main())
    release.set()
    eventually(lambda: len(finished) == 1)
    assert isinstance(finished[0], tether.Canceled)  # it was told to stop


def test_parent_end_reaches_fn_but_does_not_raise_by_itself():
    async def main():
        ctx, cancel = tether.with_cancel(bg())
        entered = threading.Event()

        def fn(child):
            entered.set()
            assert child.done().wait(30)
            return "stopped cleanly"

        task = asyncio.create_task(tether.to_thread(ctx, fn))
        await asyncio.get_running_loop().run_in_executor(None, entered.wait, 10)
        cancel()
        assert await task == "stopped cleanly"

    run(main())


def test_deadline_reaches_the_thread(fake_clock):
    async def main():
        with tether.with_timeout(bg(), 2) as ctx:

            def fn(child):
                assert 1.9 < child.remaining() <= 2
                assert child.done().wait(30)
                child.check()

            task = asyncio.create_task(tether.to_thread(ctx, fn))
            await asyncio.sleep(0.05)
            fake_clock.advance(2)
            with pytest.raises(tether.DeadlineExceeded):
                await task

    run(main())


def test_ended_context_raises_without_calling_fn():
    async def main():
        ctx, cancel = tether.with_cancel(bg())
        cancel()
        called = []
        with pytest.raises(tether.Canceled):
            await tether.to_thread(ctx, lambda child: called.append(1))
        assert called == []

    run(main())


def test_wait_for_timeout_waits_for_fn_then_raises_timeout():
    async def main():
        finished = []

        def fn(child):
            assert child.done().wait(30)
            finished.append(1)

        with pytest.raises(TimeoutError):
            await asyncio.wait_for(tether.to_thread(bg(), fn), 0.05)
        assert finished == [1]

    run(main())


def test_misuse():
    async def main():
        with pytest.raises(TypeError, match=r"^tether: "):
            await tether.to_thread(bg(), 42)
        with pytest.raises(TypeError, match=r"^tether: "):
            await tether.to_thread(None, print)

    run(main())
    with pytest.raises(RuntimeError):
        tether.to_thread(bg(), print).send(None)


def test_base_exceptions_from_fn_reach_the_awaiter():
    class Fatal(BaseException):
        pass

    async def main():
        def fn(child):
            raise Fatal

        with pytest.raises(Fatal):
            await tether.to_thread(bg(), fn)

    run(main())
