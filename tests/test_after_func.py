"""after_func: fn runs once, off the cancelling thread, after the context ends; stop()
returns True exactly when it prevented the call. (Go's own AfterFunc tests are ported in
test_go_context.py; these cover the rest of the contract.)"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
import weakref

import pytest

import tether
from tether import _runner
from tether.testing import FakeClock

bg = tether.background


def wait_until(check, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            pytest.fail("condition not reached in time")
        time.sleep(0.005)


class Recorder:
    """A callback that records the thread it ran on, and how many times."""

    def __init__(self) -> None:
        self.threads: list[int] = []
        self.called = threading.Event()

    def __call__(self) -> None:
        self.threads.append(threading.get_ident())
        self.called.set()


def test_runs_off_the_cancelling_thread(runtime):
    ctx, cancel = tether.with_cancel(bg())
    fn = Recorder()
    tether.after_func(ctx, fn)
    if runtime.name == "asyncio":

        async def cancel_on_loop():
            cancel()
            return threading.get_ident()

        canceller = runtime.call(cancel_on_loop())
    else:
        cancel()
        canceller = threading.get_ident()
    assert fn.called.wait(5)
    assert fn.threads[0] != canceller, "after_func ran on the cancelling thread"


def test_runs_once_whatever_ends_the_context():
    with FakeClock(start=1000.0) as clock:
        parent, cancel_parent = tether.with_cancel(bg())
        ctx, cancel = tether.with_timeout(parent, 1)
        fn = Recorder()
        stop = tether.after_func(tether.with_value(ctx, "k", "v"), fn)
        cancel(ValueError("first"))
        cancel()
        cancel_parent()
        clock.advance(5)
        assert fn.called.wait(5)
        # Give a second call every chance to happen.
        sentinel = Recorder()
        tether.after_func(ctx, sentinel)
        assert sentinel.called.wait(5)
        time.sleep(0.02)
        assert len(fn.threads) == 1
        assert stop() is False


def test_fn_sees_the_ended_context():
    ctx, cancel = tether.with_cancel(bg())
    seen = []
    done = threading.Event()
    tether.after_func(ctx, lambda: (seen.append((ctx.err(), tether.cause(ctx))), done.set()))
    reason = KeyError("gone")
    cancel(reason)
    assert done.wait(5)
    assert type(seen[0][0]) is tether.Canceled
    assert seen[0][1] is reason


def test_already_ended_context_starts_at_once():
    ctx, cancel = tether.with_cancel(bg())
    cancel()
    fn = Recorder()
    stop = tether.after_func(ctx, fn)
    assert stop() is False, "fn was already started: stop() cannot prevent it"
    assert fn.called.wait(5)
    assert fn.threads[0] != threading.get_ident()


@pytest.mark.parametrize(
    "make",
    [lambda p: tether.background(), lambda p: tether.todo(), tether.without_cancel],
    ids=["background", "todo", "without_cancel"],
)
def test_context_that_never_ends_never_runs_fn_and_keeps_nothing(make):
    parent, cancel_parent = tether.with_cancel(bg())
    ctx = make(parent)
    fn = Recorder()
    ref = weakref.ref(fn)
    stops = [tether.after_func(ctx, fn) for _ in range(1000)]
    assert bg()._waiters is None, "background must not accumulate callbacks"
    cancel_parent()  # ends without_cancel's parent: not the context itself
    assert not fn.called.wait(0.05)
    assert stops[0]() is True  # it would never run: stopping it "prevented" it, as in Go
    del fn, stops
    gc.collect()
    assert ref() is None


def test_stop_before_the_end_prevents_the_call_and_releases_fn():
    ctx, cancel = tether.with_cancel(bg())
    fn = Recorder()
    ref = weakref.ref(fn)
    stop = tether.after_func(ctx, fn)
    assert stop() is True
    assert stop() is False
    del fn, stop
    gc.collect()
    assert ref() is None, "a stopped callback must not stay referenced by a live context"
    cancel()


def test_stop_races_with_cancel_exactly_one_wins():
    runs = []
    for _ in range(300):
        ctx, cancel = tether.with_cancel(bg())
        fn = Recorder()
        stop = tether.after_func(ctx, fn)
        start = threading.Barrier(2)
        result = []

        def stopper(stop=stop, start=start, result=result):
            start.wait(5)
            result.append(stop())

        t = threading.Thread(target=stopper)
        t.start()
        start.wait(5)
        cancel()
        t.join(5)
        runs.append((result[0], fn))
    for stopped, fn in runs:
        if not stopped:
            assert fn.called.wait(5), "stop() returned False but fn never ran"
    time.sleep(0.05)
    for stopped, fn in runs:
        if stopped:
            assert not fn.called.is_set(), "stop() returned True but fn ran"


@pytest.mark.realtime
def test_after_func_on_a_deadline():
    ctx, cancel = tether.with_timeout(bg(), 0.01)
    fn = Recorder()
    tether.after_func(ctx, fn)
    assert fn.called.wait(10)
    assert type(ctx.err()) is tether.DeadlineExceeded
    cancel()


def test_exception_is_logged_and_the_runner_survives(caplog):
    caplog.set_level(logging.ERROR, logger="tether")
    ctx, cancel = tether.with_cancel(bg())

    def boom():
        raise ValueError("boom from after_func")

    after = Recorder()
    tether.after_func(ctx, boom)
    cancel()
    wait_until(lambda: any("after_func" in r.getMessage() for r in caplog.records))
    record = next(r for r in caplog.records if "after_func" in r.getMessage())
    assert record.name == "tether"
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None
    assert record.exc_info[0] is ValueError
    assert record.getMessage().startswith("tether:")
    # Later callbacks still run.
    ctx2, cancel2 = tether.with_cancel(bg())
    tether.after_func(ctx2, after)
    cancel2()
    assert after.called.wait(5)


def test_a_blocking_callback_does_not_delay_the_others():
    release = threading.Event()
    a, cancel_a = tether.with_cancel(bg())
    b, cancel_b = tether.with_cancel(bg())
    blocked = Recorder()
    fn = Recorder()
    tether.after_func(a, lambda: (blocked(), release.wait(10)))
    tether.after_func(b, fn)
    cancel_a()
    assert blocked.called.wait(5)
    cancel_b()
    assert fn.called.wait(5), "a blocked after_func callback delayed another one"
    release.set()


def test_callbacks_may_cancel_and_derive():
    # fn runs outside tether's lock: it can use the whole API without deadlocking.
    parent, cancel_parent = tether.with_cancel(bg())
    other, cancel_other = tether.with_cancel(bg())
    done = threading.Event()

    def fn():
        cancel_other(ValueError("cascade"))
        with tether.with_timeout(other, 1) as c:
            assert c.err() is not None
        done.set()

    tether.after_func(parent, fn)
    cancel_parent()
    assert done.wait(5)
    assert isinstance(tether.cause(other), ValueError)


def test_many_callbacks_on_one_context_all_run():
    ctx, cancel = tether.with_cancel(bg())
    n = 200 - 2 + 3  # registered, minus stopped in time, plus started late
    lock = threading.Lock()
    count = [0]
    all_ran = threading.Event()

    def fn():
        with lock:
            count[0] += 1
            if count[0] == n:
                all_ran.set()

    stops = [tether.after_func(ctx, fn) for _ in range(200)]
    assert stops[0]() is True
    assert stops[1]() is True
    cancel()
    assert stops[2]() is False  # too late: already started
    for _ in range(3):
        tether.after_func(ctx, fn)  # already ended: these start at once
    assert all_ran.wait(10)
    time.sleep(0.02)
    assert count[0] == n


def test_worker_threads_exit_when_idle(monkeypatch):
    monkeypatch.setattr(_runner, "IDLE_SECONDS", 0.05)
    ctx, cancel = tether.with_cancel(bg())
    fn = Recorder()
    tether.after_func(ctx, fn)
    cancel()
    assert fn.called.wait(5)
    wait_until(
        lambda: not any(t.name.startswith("tether-after-func-") for t in threading.enumerate())
    )


def test_after_func_from_asyncio_code():
    async def main():
        ctx, cancel = tether.with_cancel(bg())
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        tether.after_func(ctx, lambda: loop.call_soon_threadsafe(fut.set_result, "ran"))
        cancel()
        assert await asyncio.wait_for(fut, 5) == "ran"

    asyncio.run(main())
