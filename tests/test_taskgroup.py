"""tether.TaskGroup: errgroup's own tests restated for asyncio, then what asyncio adds.

Same order as test_group.py. Every test runs its own ``asyncio.run``; no timing is
asserted (events, futures and contexts decide, with generous timeouts).
"""

from __future__ import annotations

import asyncio
import contextvars
import subprocess
import sys
import threading

import pytest

import tether

bg = tether.background

ERR1 = ValueError("errgroup_test: 1")
ERR2 = ValueError("errgroup_test: 2")
DOOM = RuntimeError("group_test: doomed")


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def returning(err):
    async def fn(ctx):
        if err is not None:
            raise err

    return fn


async def wait_error(g):
    try:
        await g.wait()
    except BaseException as e:
        return e
    return None


# -- errgroup_test.go ----------------------------------------------------------------


@pytest.mark.parametrize("errs", [[], [None], [ERR1], [ERR1, None], [ERR1, None, ERR2]], ids=repr)
def test_zero_group(errs):
    async def main():
        g = tether.TaskGroup(bg())
        first = None
        for err in errs:
            g.go(returning(err))
            if first is None and err is not None:
                first = err
            assert await wait_error(g) is first
        assert await wait_error(g) is first

    run(main())


@pytest.mark.parametrize(
    ("errs", "want"),
    [([], None), ([None], None), ([DOOM], DOOM), ([DOOM, None], DOOM)],
    ids=repr,
)
def test_with_context(errs, want):
    async def main():
        g = tether.TaskGroup(bg())
        for err in errs:
            g.go(returning(err))
        assert await wait_error(g) is want
        assert g.ctx.done().is_set()

    run(main())


def test_try_go():
    async def main():
        n = 42
        gate = asyncio.Semaphore(0)

        async def fn(ctx):
            await gate.acquire()

        g = tether.TaskGroup(bg(), limit=n)
        for i in range(n):
            assert g.try_go(fn) is not None, f"try_go failed at call {i}"
        assert g.try_go(fn) is None
        for _ in range(n):
            gate.release()
        await g.wait()
        assert g.try_go(fn) is not None
        gate.release()
        await g.wait()

        g = tether.TaskGroup(bg(), limit=1)
        assert g.try_go(fn) is not None
        assert g.try_go(fn) is None
        gate.release()
        await g.wait()

        g = tether.TaskGroup(bg(), limit=0)
        for _ in range(1 << 10):
            assert g.try_go(fn) is None
        await g.wait()

    run(main())


def test_go_limit():
    async def main():
        limit = 10
        active = peak = 0

        async def fn(ctx):
            nonlocal active, peak
            active += 1
            peak = max(peak, active)
            if active > limit:
                raise AssertionError(f"saw {active} active tasks; want <= {limit}")
            await asyncio.sleep(0)
            active -= 1

        g = tether.TaskGroup(bg(), limit=limit)
        hs = [g.go(fn) for _ in range((1 << 10) + 1)]
        assert sum(not h.done() and h._task is None for h in hs) > 0  # queued
        await g.wait()
        assert peak == limit

    run(main())


@pytest.mark.parametrize(
    ("errs", "want"),
    [([], None), ([None], None), ([DOOM], DOOM), ([DOOM, None], DOOM)],
    ids=repr,
)
def test_cancel_cause(errs, want):
    async def main():
        g = tether.TaskGroup(bg())
        for err in errs:
            g.try_go(returning(err))
        assert await wait_error(g) is want
        cause = tether.cause(g.ctx)
        if want is None:
            assert isinstance(cause, tether.Canceled)
        else:
            assert cause is want

    run(main())


# -- first error, interruption ---------------------------------------------------------


def test_first_error_wins_and_interrupts_the_others():
    async def main():
        first = ValueError("first")

        async def sleeper(ctx):
            await asyncio.sleep(100)

        async def failing(ctx):
            await asyncio.sleep(0)
            raise first

        g = tether.TaskGroup(bg())
        hs = []

        async def block():
            async with g:
                hs.extend(g.go(sleeper) for _ in range(3))
                g.go(failing)
                await asyncio.sleep(100)  # the body is interrupted too

        with pytest.raises(ValueError) as info:
            await block()
        assert info.value is first
        assert tether.cause(g.ctx) is first
        for h in hs:
            with pytest.raises(tether.Canceled) as hinfo:
                await h
            assert hinfo.value.__cause__ is first
        assert asyncio.current_task().cancelling() == 0

    run(main())


def test_task_that_handles_the_interrupt_returns_normally():
    async def main():
        async def stubborn(ctx):
            try:
                await asyncio.sleep(100)
            except asyncio.CancelledError:
                return "cleaned up"

        g = tether.TaskGroup(bg())
        h = g.go(stubborn)
        g.go(returning(DOOM))
        with pytest.raises(RuntimeError):
            await g.wait()
        assert await h == "cleaned up"

    run(main())


def test_error_does_not_touch_the_parent():
    async def main():
        parent, cancel = tether.with_cancel(bg())
        g = tether.TaskGroup(parent)
        g.go(returning(DOOM))
        with pytest.raises(RuntimeError):
            await g.wait()
        assert parent.err() is None
        cancel()

    run(main())


def test_parent_cancel_from_another_thread_interrupts_with_its_cause():
    async def main():
        parent, cancel = tether.with_cancel(bg())
        why = ConnectionError("client went away")
        started = asyncio.Event()

        async def task(ctx):
            started.set()
            await asyncio.sleep(100)

        g = tether.TaskGroup(parent)
        h = g.go(task)
        await started.wait()
        t = threading.Thread(target=cancel, args=(why,))
        t.start()
        with pytest.raises(tether.Canceled) as info:
            await g.wait()
        t.join()
        assert info.value.__cause__ is why
        assert tether.cause(g.ctx) is why
        with pytest.raises(tether.Canceled):
            await h

    run(main())


def test_parent_deadline_under_fake_clock_interrupts_the_body(fake_clock):
    async def main():
        parent, cancel = tether.with_timeout(bg(), 5)
        started = asyncio.Event()

        async def task(ctx):
            started.set()
            await asyncio.sleep(100)

        async def block():
            async with tether.TaskGroup(parent) as g:
                g.go(task)
                await started.wait()
                fake_clock.advance(5)
                await asyncio.sleep(100)

        with pytest.raises(tether.DeadlineExceeded):
            await block()
        cancel()
        assert asyncio.current_task().cancelling() == 0

    run(main())


def test_born_ended_context_interrupts_at_first_suspension():
    async def main():
        parent, cancel = tether.with_cancel(bg())
        cancel()
        reached = []

        async def task(ctx):
            reached.append("before")  # runs: fn is always called, as in errgroup
            await asyncio.sleep(100)
            reached.append("after")

        async def quick(ctx):
            return "no await, no interrupt"

        g = tether.TaskGroup(parent)
        h1 = g.go(task)
        h2 = g.go(quick)
        with pytest.raises(tether.Canceled):
            await g.wait()
        assert reached == ["before"]
        assert await h2 == "no await, no interrupt"
        with pytest.raises(tether.Canceled):
            await h1

    run(main())


# -- BaseException ---------------------------------------------------------------------


@pytest.mark.parametrize("coe", [True, False])
def test_generator_exit_and_custom_base_exceptions_are_raised_bare(coe):
    class Fatal(BaseException):
        pass

    async def main():
        fatal = Fatal()
        ordinary = ValueError("ordinary, first")
        ordinary_done = asyncio.Event()

        async def ordinary_fn(ctx):
            try:
                raise ordinary
            finally:
                ordinary_done.set()

        async def fatal_fn(ctx):
            await ordinary_done.wait()
            raise fatal

        async def watcher(ctx):
            await ctx.done()

        g = tether.TaskGroup(bg(), cancel_on_error=coe)
        g.go(ordinary_fn)
        g.go(fatal_fn)
        g.go(watcher)
        with pytest.raises(Fatal) as info:
            await g.wait()
        assert info.value is fatal

    run(main())


KI_SCRIPT = """
import asyncio, sys, tether

async def main():
    async def fn(ctx):
        raise {exc}

    async with tether.TaskGroup(tether.background()) as g:
        g.go(fn)
        await asyncio.sleep(10)

try:
    asyncio.run(main())
except {exc}:
    print("raised", flush=True)
    sys.exit(0)
print("swallowed", flush=True)
sys.exit(1)
"""


@pytest.mark.parametrize("exc", ["KeyboardInterrupt", "SystemExit"])
def test_keyboard_interrupt_in_a_task_is_not_swallowed(exc):
    # asyncio re-raises these out of the event loop at once; the group records them too,
    # so nothing is lost whichever reaches the caller first. In a child process: raising
    # them from a task corrupts CPython 3.11's recursion counter (also with
    # asyncio.TaskGroup), which breaks later ast.parse calls in the same process.
    proc = subprocess.run(
        [sys.executable, "-c", KI_SCRIPT.format(exc=exc)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.stdout.strip() == "raised", proc.stdout + proc.stderr
    assert proc.returncode == 0


def test_external_cancel_of_a_task_is_not_a_group_error():
    async def main():
        started = asyncio.Event()

        async def task(ctx):
            started.set()
            await asyncio.sleep(100)

        g = tether.TaskGroup(bg())
        h = g.go(task)
        await started.wait()
        h._task.cancel()
        await g.wait()  # no error
        with pytest.raises(asyncio.CancelledError):
            await h

    run(main())


def test_external_cancel_of_the_body_cancels_the_group_then_propagates():
    async def main():
        stopped = []

        async def task(ctx):
            try:
                await asyncio.sleep(100)
            finally:
                stopped.append(tether.cause(ctx))

        async def owner():
            async with tether.TaskGroup(bg()) as g:
                g.go(task)
                await asyncio.sleep(100)

        t = asyncio.create_task(owner())
        await asyncio.sleep(0.01)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        assert len(stopped) == 1
        assert isinstance(stopped[0], asyncio.CancelledError)

    run(main())


def test_cancel_while_waiting_still_waits_for_the_tasks():
    async def main():
        cleaned = asyncio.Event()

        async def task(ctx):
            try:
                await asyncio.sleep(100)
            finally:
                await asyncio.sleep(0.01)  # slow cleanup, awaited by wait()
                cleaned.set()

        g = tether.TaskGroup(bg())
        g.go(task)
        waiter = asyncio.create_task(g.wait())
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert cleaned.is_set()

    run(main())


# -- collect-all mode ------------------------------------------------------------------


def test_collect_all_runs_every_task_and_raises_all_errors():
    async def main():
        e1, e2 = ValueError("a"), KeyError("b")

        async def ok(ctx, i):
            await asyncio.sleep(0.01)
            assert ctx.err() is None
            return i

        g = tether.TaskGroup(bg(), cancel_on_error=False)
        g.go(returning(e1))
        oks = [g.go(ok, i) for i in range(5)]
        g.go(returning(e2))
        with pytest.raises(ExceptionGroup) as info:
            await g.wait()
        assert list(info.value.exceptions) == [e1, e2]
        assert [await h for h in oks] == list(range(5))

    run(main())


# -- body, contextvars, limits, handles ------------------------------------------------

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")


def test_body_error_cancels_tasks_and_propagates_unchanged():
    async def main():
        body = LookupError("body")
        seen = []

        async def task(ctx):
            try:
                await asyncio.sleep(100)
            finally:
                seen.append(tether.cause(ctx))

        async def block():
            async with tether.TaskGroup(bg()) as g:
                g.go(task)
                await asyncio.sleep(0)
                raise body

        with pytest.raises(LookupError) as info:
            await block()
        assert info.value is body
        assert seen == [body]

    run(main())


def test_tasks_carry_contextvars_and_current():
    async def main():
        VAR.set("caller")

        async def task(ctx):
            assert tether.current() is ctx
            v = VAR.get()
            VAR.set("task")
            return v

        async with tether.TaskGroup(bg()) as g:
            assert tether.current() is g.ctx
            h = g.go(task)
        assert tether.current() is bg()
        assert await h == "caller"
        assert VAR.get() == "caller"

    run(main())


def test_ago_gives_back_pressure():
    async def main():
        gate = asyncio.Event()

        async def blocked(ctx):
            await gate.wait()

        async with tether.TaskGroup(bg(), limit=2) as g:
            g.go(blocked)
            g.go(blocked)
            producer = asyncio.create_task(g.ago(blocked))
            await asyncio.sleep(0.01)
            assert not producer.done()  # waiting for a slot
            gate.set()
            h = await producer
        assert h.done()

    run(main())


def test_ago_cancelled_while_waiting_starts_nothing():
    async def main():
        gate = asyncio.Event()
        called = []

        async def blocked(ctx):
            await gate.wait()

        async def never(ctx):
            called.append(1)

        async with tether.TaskGroup(bg(), limit=1) as g:
            g.go(blocked)
            producer = asyncio.create_task(g.ago(never))
            await asyncio.sleep(0.01)
            producer.cancel()
            with pytest.raises(asyncio.CancelledError):
                await producer
            gate.set()
        assert called == []

    run(main())


def test_handle_result_and_done():
    async def main():
        gate = asyncio.Event()

        async def task(ctx):
            await gate.wait()
            return 7

        g = tether.TaskGroup(bg())
        h = g.go(task)
        assert not h.done()
        with pytest.raises(asyncio.InvalidStateError):
            h.result()
        gate.set()
        assert await h == 7
        assert await h == 7
        assert h.result() == 7
        await g.wait()
        assert "done" in repr(h)

    run(main())


def test_cancelling_an_awaiter_does_not_cancel_the_task():
    async def main():
        gate = asyncio.Event()

        async def task(ctx):
            await gate.wait()
            return "finished"

        g = tether.TaskGroup(bg())
        h = g.go(task)
        awaiter = asyncio.create_task(asyncio.wait_for(h, 0.01))
        with pytest.raises(TimeoutError):
            await awaiter
        gate.set()
        assert await h == "finished"
        await g.wait()

    run(main())


# -- misuse ----------------------------------------------------------------------------


def test_go_needs_a_coroutine_function():
    async def main():
        g = tether.TaskGroup(bg())
        with pytest.raises(TypeError, match=r"^tether: .*async function"):
            g.go(lambda ctx: 42)
        await g.wait()

    run(main())


def test_go_outside_a_loop_or_on_another_loop():
    g = tether.TaskGroup(bg())
    with pytest.raises(RuntimeError, match=r"^tether: "):
        g.go(returning(None))

    async def bind():
        g.go(returning(None))
        await asyncio.sleep(0)

    async def other():
        with pytest.raises(RuntimeError, match=r"^tether: .*another event loop"):
            g.go(returning(None))

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(bind())
        run(other())
        loop.run_until_complete(g.wait())
    finally:
        loop.close()


def test_limit_zero_go_raises():
    async def main():
        g = tether.TaskGroup(bg(), limit=0)
        with pytest.raises(ValueError, match=r"^tether: "):
            g.go(returning(None))
        with pytest.raises(ValueError, match=r"^tether: "):
            await g.ago(returning(None))
        await g.wait()

    run(main())


def test_enter_twice_raises():
    async def main():
        g = tether.TaskGroup(bg())
        async with g:
            with pytest.raises(RuntimeError, match=r"^tether: "):
                await g.__aenter__()

    run(main())
