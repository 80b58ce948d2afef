"""Issue 8, item 4: a blocking tether call on an event loop's thread is not silent.

Before: ``tether.sleep``, ``ctx.done().wait(t)``, ``Limiter.acquire``, ``with Group``,
``Group.wait()`` each blocked the loop without a word. Now each warns
(``tether.BlockingCallWarning``, a ``RuntimeWarning``: shown by default) at the caller's
line, naming the async form; a call that does not wait does not warn, and off the loop
nothing changes. Subprocess tests show the default (shown) and ``-W error`` behaviour.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import warnings

import pytest

import tether

bg = tether.background


def on_loop(fn):
    """Run ``fn()`` inside a coroutine on a fresh loop; return the warnings it raised."""

    async def main():
        with warnings.catch_warnings(record=True) as got:
            warnings.simplefilter("always")
            fn()
        return got

    return asyncio.run(main())


def blocking(got):
    return [w for w in got if issubclass(w.category, tether.BlockingCallWarning)]


def test_the_warning_is_a_runtime_warning_shown_by_default():
    assert issubclass(tether.BlockingCallWarning, RuntimeWarning)
    assert tether.BlockingCallWarning.__module__ == "tether"


def test_sleep_on_the_loop_warns_at_the_callers_line():
    got = blocking(on_loop(lambda: tether.sleep(bg(), 0.001)))
    assert len(got) == 1
    msg = str(got[0].message)
    assert msg.startswith("tether: tether.sleep")
    assert "await tether.asleep(ctx, seconds)" in msg
    assert got[0].filename == __file__


def test_done_wait_with_a_timeout_warns_and_a_poll_does_not():
    def calls():
        with tether.with_cancel(bg()) as ctx:
            assert ctx.done().wait(0) is False  # a poll: allowed
            assert ctx.done().wait(-1) is False
            assert ctx.done().wait(0.001) is False  # blocks: warns

    got = blocking(on_loop(calls))
    assert len(got) == 1
    assert "await ctx.done()" in str(got[0].message)
    assert got[0].filename == __file__


def test_ended_context_does_not_warn():
    def calls():
        ctx, cancel = tether.with_cancel(bg())
        cancel()
        assert ctx.done().wait(10) is True
        with pytest.raises(tether.Canceled):
            tether.sleep(ctx, 10)

    assert blocking(on_loop(calls)) == []


def test_limiter_acquire_warns_only_when_it_would_wait():
    lim = tether.Limiter(1)

    def calls():
        lim.acquire(bg())  # a free slot: does not block, no warning
        with tether.with_timeout(bg(), 0.001) as ctx:
            with pytest.raises(tether.DeadlineExceeded):
                lim.acquire(ctx)  # must wait: warns
        lim.release()

    got = blocking(on_loop(calls))
    assert len(got) == 1
    assert "aacquire" in str(got[0].message)
    assert got[0].filename == __file__


def test_with_limiter_warns_at_the_with_line():
    lim = tether.Limiter(1)

    def calls():
        lim.acquire(bg())
        with tether.with_timeout(bg(), 0.001), pytest.raises(tether.DeadlineExceeded):
            with lim:
                pass
        lim.release()

    got = blocking(on_loop(calls))
    assert len(got) == 1
    assert got[0].filename == __file__


def test_group_block_wait_and_result_warn():
    def calls():
        with tether.Group(bg()) as g:  # warns: leaving the block waits
            h = g.go(lambda ctx: 1)
        assert h.result() == 1  # done: does not wait, no warning
        g.wait()  # warns
        g2 = tether.Group(bg())
        gate = threading.Event()
        h2 = g2.go(lambda ctx: gate.wait(10))
        assert h2.result(0) if h2.done() else True  # timeout 0: a poll, never warns
        gate.set()
        h2.result(10)  # would wait: warns (unless the task already finished)
        g2.wait()  # warns

    got = blocking(on_loop(calls))
    msgs = [str(w.message) for w in got]
    assert any("TaskGroup" in m and "with tether.Group" in m for m in msgs)
    assert sum("Group.wait()" in m for m in msgs) == 2
    assert all(w.filename == __file__ for w in got)


def test_trio_run_warns_too():
    trio = pytest.importorskip("trio")

    async def main():
        with warnings.catch_warnings(record=True) as got:
            warnings.simplefilter("always")
            tether.sleep(bg(), 0.001)
        return got

    got = blocking(trio.run(main))
    assert len(got) == 1
    assert "asyncio or Trio" in str(got[0].message)


def test_no_warning_off_the_loop():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tether.sleep(bg(), 0.001)
        with tether.with_cancel(bg()) as ctx:
            assert ctx.done().wait(0.001) is False
        with tether.Group(bg()) as g:
            g.go(lambda ctx: None)
        g.wait()


def test_no_warning_in_a_worker_thread_started_from_the_loop():
    async def main():
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            await tether.to_thread(bg(), lambda ctx: tether.sleep(ctx, 0.001))
            await asyncio.to_thread(tether.sleep, bg(), 0.001)

    asyncio.run(main())


PROGRAM = """
import asyncio, tether
async def main():
    tether.sleep(tether.background(), 0.01)
    print("returned")
asyncio.run(main())
"""


@pytest.mark.slow
def test_default_python_shows_it_and_w_error_raises_it():
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert "returned" in out.stdout
    assert "BlockingCallWarning: tether: tether.sleep" in out.stderr

    out = subprocess.run(
        # Python's -W cannot name a category of a module not yet imported: use the base.
        [sys.executable, "-W", "error::RuntimeWarning", "-c", PROGRAM],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 1
    assert "returned" not in out.stdout
    assert "tether.BlockingCallWarning: tether: tether.sleep" in out.stderr
