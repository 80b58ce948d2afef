"""tether.Limiter: shedding, waiting with a context, FIFO hand-off, threads and tasks."""

from __future__ import annotations

import asyncio
import random
import threading

import pytest
from tests.conftest import eventually

import tether

bg = tether.background


def test_try_acquire_sheds_at_the_limit_and_release_frees():
    lim = tether.Limiter(3)
    assert [lim.try_acquire() for _ in range(4)] == [True, True, True, False]
    assert lim.in_use == 3
    lim.release()
    assert lim.in_use == 2
    assert lim.try_acquire()
    for _ in range(3):
        lim.release()
    assert lim.in_use == 0
    assert lim.limit == 3


def test_release_without_acquire_raises():
    lim = tether.Limiter(1)
    with pytest.raises(ValueError, match=r"^tether: .*release"):
        lim.release()
    assert lim.try_acquire()
    lim.release()
    with pytest.raises(ValueError, match=r"^tether: "):
        lim.release()


@pytest.mark.parametrize(("n", "exc"), [(-1, ValueError), (1.0, TypeError), (True, TypeError)])
def test_bad_n(n, exc):
    with pytest.raises(exc, match=r"^tether: "):
        tether.Limiter(n)


def test_zero_slots_always_sheds():
    lim = tether.Limiter(0)
    assert not lim.try_acquire()
    ctx, cancel = tether.with_cancel(bg())
    cancel()
    with pytest.raises(tether.Canceled):
        lim.acquire(ctx)


def test_acquire_waits_for_a_release():
    lim = tether.Limiter(1)
    assert lim.try_acquire()
    got = threading.Event()

    def waiter():
        lim.acquire(bg())
        got.set()

    t = threading.Thread(target=waiter)
    t.start()
    eventually(lambda: len(lim._waiters) == 1)
    assert not got.is_set()
    lim.release()  # handed straight to the waiter
    assert got.wait(10)
    t.join(10)
    assert lim.in_use == 1
    assert not lim.try_acquire()  # the slot went to the waiter, not to a barging caller
    lim.release()


def test_acquire_raises_when_the_context_ends_and_holds_nothing():
    lim = tether.Limiter(1)
    assert lim.try_acquire()
    ctx, cancel = tether.with_cancel(bg())
    why = TimeoutError("upstream budget")
    out = []

    def waiter():
        try:
            lim.acquire(ctx)
            out.append("acquired")
        except tether.Canceled as e:
            out.append(e)

    t = threading.Thread(target=waiter)
    t.start()
    eventually(lambda: len(lim._waiters) == 1)
    cancel(why)
    t.join(10)
    assert isinstance(out[0], tether.Canceled)
    assert out[0].__cause__ is why
    assert not lim._waiters
    lim.release()
    assert lim.in_use == 0


def test_acquire_with_an_ended_context_raises_even_if_a_slot_is_free():
    lim = tether.Limiter(1)
    ctx, cancel = tether.with_cancel(bg())
    cancel()
    with pytest.raises(tether.Canceled):
        lim.acquire(ctx)
    assert lim.in_use == 0


def test_acquire_deadline_under_fake_clock(fake_clock):
    lim = tether.Limiter(1)
    assert lim.try_acquire()
    ctx, cancel = tether.with_timeout(bg(), 5)
    out = []

    def waiter():
        try:
            lim.acquire(ctx)
        except tether.DeadlineExceeded as e:
            out.append(e)

    t = threading.Thread(target=waiter)
    t.start()
    eventually(lambda: len(lim._waiters) == 1)
    fake_clock.advance(4.9)
    assert not out
    fake_clock.advance(0.1)
    t.join(10)
    assert isinstance(out[0], tether.DeadlineExceeded)
    cancel()
    lim.release()


def test_waiters_are_served_first_come_first_served():
    lim = tether.Limiter(1)
    assert lim.try_acquire()
    order = []
    threads = []
    for i in range(5):
        t = threading.Thread(target=lambda i=i: (lim.acquire(bg()), order.append(i)))
        t.start()
        threads.append(t)
        eventually(lambda i=i: len(lim._waiters) == i + 1)
    for _ in range(5):
        n = len(order)
        lim.release()
        eventually(lambda n=n: len(order) == n + 1)
    for t in threads:
        t.join(10)
    assert order == [0, 1, 2, 3, 4]
    lim.release()


def test_with_uses_the_current_context():
    lim = tether.Limiter(1)
    with lim:
        assert lim.in_use == 1
    assert lim.in_use == 0
    assert lim.try_acquire()
    parent, cancel = tether.with_cancel(bg())
    out = []

    def blocked():
        with tether.with_cancel(parent):  # current() is now a child of parent
            try:
                with lim:
                    out.append("ran")
            except tether.Canceled:
                out.append("canceled")

    t = threading.Thread(target=blocked)
    t.start()
    eventually(lambda: len(lim._waiters) == 1)
    cancel()
    t.join(10)
    assert out == ["canceled"]
    lim.release()


def test_stress_threads_never_exceed_the_limit():
    lim = tether.Limiter(4)
    lock = threading.Lock()
    active = peak = 0
    errors = []
    timers = []

    def worker(seed):
        nonlocal active, peak
        rnd = random.Random(seed)
        for _ in range(300):
            ctx, cancel = tether.with_cancel(bg())
            if rnd.random() < 0.2:
                tm = threading.Timer(rnd.random() / 1000, cancel)
                timers.append(tm)
                tm.start()
            try:
                if rnd.random() < 0.5:
                    if not lim.try_acquire():
                        cancel()
                        continue
                else:
                    lim.acquire(ctx)
            except tether.Canceled:
                cancel()
                continue
            try:
                with lock:
                    active += 1
                    peak = max(peak, active)
                    if active > 4:
                        errors.append(active)
                with lock:
                    active -= 1
            finally:
                lim.release()
                cancel()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert 1 <= peak <= 4
    eventually(lambda: lim.in_use == 0 and not lim._waiters)
    for tm in timers:
        tm.join(10)


# -- asyncio -----------------------------------------------------------------------------


def test_aacquire_waits_and_is_handed_the_slot_from_a_thread():
    async def main():
        lim = tether.Limiter(1)
        assert lim.try_acquire()
        waiter = asyncio.create_task(lim.aacquire(bg()))
        await asyncio.sleep(0.01)
        assert not waiter.done()
        t = threading.Thread(target=lim.release)
        t.start()
        await asyncio.wait_for(waiter, 10)
        t.join()
        assert lim.in_use == 1
        lim.release()

    asyncio.run(main())


def test_aacquire_raises_when_the_context_ends():
    async def main():
        lim = tether.Limiter(1)
        assert lim.try_acquire()
        ctx, cancel = tether.with_cancel(bg())
        asyncio.get_running_loop().call_later(0.01, cancel)
        with pytest.raises(tether.Canceled):
            await lim.aacquire(ctx)
        assert not lim._waiters
        lim.release()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_aacquire_cancelled_task_holds_no_slot():
    async def main():
        lim = tether.Limiter(1)
        assert lim.try_acquire()
        waiter = asyncio.create_task(lim.aacquire(bg()))
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        lim.release()
        assert lim.in_use == 0
        assert not lim._waiters

    asyncio.run(main())


def test_aacquire_granted_then_cancelled_passes_the_slot_on():
    async def main():
        lim = tether.Limiter(1)
        assert lim.try_acquire()
        first = asyncio.create_task(lim.aacquire(bg()))
        second = asyncio.create_task(lim.aacquire(bg()))
        await asyncio.sleep(0.01)
        lim.release()  # granted to `first`, which is cancelled before it resumes
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        await asyncio.wait_for(second, 10)  # the slot went on
        assert lim.in_use == 1
        lim.release()

    asyncio.run(main())


def test_async_with_and_mixed_waiters_fifo():
    async def main():
        lim = tether.Limiter(1)
        order = []
        async with lim:
            assert lim.in_use == 1
            t = threading.Thread(target=lambda: (lim.acquire(bg()), order.append("thread")))
            t.start()
            while not lim._waiters:
                await asyncio.sleep(0.001)

            async def task():
                await lim.aacquire(bg())
                order.append("task")
                lim.release()

            tk = asyncio.create_task(task())
            while len(lim._waiters) < 2:
                await asyncio.sleep(0.001)
        t.join(10)
        assert order == ["thread"]
        lim.release()  # the thread's slot
        await asyncio.wait_for(tk, 10)
        assert order == ["thread", "task"]
        assert lim.in_use == 0

    asyncio.run(main())


def test_acquire_needs_a_context():
    lim = tether.Limiter(1)
    with pytest.raises(TypeError, match=r"^tether: "):
        lim.acquire(None)
    assert "in_use=0/1" in repr(lim)
