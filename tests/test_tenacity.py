"""tether.integrations.tenacity against real tenacity: stop, retry and sleep with a context.

Deadlines run on a FakeClock; the retry loop runs in a thread (or task) while the test
moves time, so nothing depends on the machine's speed.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from types import SimpleNamespace

import pytest
import tenacity
from tenacity import RetryError, stop_after_attempt, wait_fixed
from tests.conftest import eventually

import tether
from tether.integrations.tenacity import (
    asleep_with,
    async_retrying,
    retry_unless_ended,
    retrying,
    sleep_with,
    stop_when_ended,
)

bg = tether.background


class Flaky(Exception):
    pass


def state(upcoming: float) -> SimpleNamespace:
    return SimpleNamespace(upcoming_sleep=upcoming)


# -- the stop condition ----------------------------------------------------------------


def test_stop_when_ended_compares_the_budget_with_the_next_sleep(fake_clock):
    with tether.with_timeout(bg(), 2.5) as ctx:
        stop = stop_when_ended(ctx)
        assert not stop(state(1.0))
        assert stop(state(2.5))  # sleeping the whole budget away is pointless
        assert stop(state(3.0))
        assert stop_when_ended(ctx, margin=2)(state(1.0))
        fake_clock.advance(2)
        assert stop(state(0.4)) is False
        assert stop(state(0.5))
    assert stop(state(0.0))  # ended


def test_stop_when_ended_without_deadline_stops_only_when_cancelled():
    ctx, cancel = tether.with_cancel(bg())
    stop = stop_when_ended(ctx)
    assert not stop(state(1e9))
    cancel()
    assert stop(state(0))


def test_composes_both_ways_with_tenacity_stops():
    ctx, cancel = tether.with_cancel(bg())
    left = stop_when_ended(ctx) | stop_after_attempt(3)
    right = stop_after_attempt(3) | stop_when_ended(ctx)
    assert isinstance(left, tenacity.stop_any)
    assert isinstance(right, tenacity.stop_any)
    both = stop_when_ended(ctx) & stop_after_attempt(3)
    assert isinstance(both, tenacity.stop_all)
    retry = retry_unless_ended(ctx) & tenacity.retry_if_exception_type(Flaky)
    assert isinstance(retry, tenacity.retry_all)
    cancel()


# -- retrying(ctx) end to end ----------------------------------------------------------


def run_in_thread(fn):
    """Run fn() in a thread; return (thread, outcome list)."""
    out: list[object] = []

    def target():
        try:
            out.append(("ok", fn()))
        except BaseException as e:
            out.append(("raised", e))

    t = threading.Thread(target=target)
    t.start()
    return t, out


def test_retrying_stops_when_the_budget_cannot_cover_the_next_sleep(fake_clock):
    attempts = []

    def op(ctx):
        attempts.append(fake_clock.now())
        raise Flaky

    with tether.with_timeout(bg(), 2.5) as ctx:
        r = retrying(ctx, wait=wait_fixed(1))
        t, out = run_in_thread(lambda: r(op, ctx))
        for _ in range(2):  # two sleeps of 1 s fit in 2.5 s; the third would not
            eventually(lambda: fake_clock.timers() == 2)  # ctx's deadline + the sleep's
            fake_clock.advance(1)
        t.join(10)
    kind, exc = out[0]
    assert kind == "raised"
    assert isinstance(exc, RetryError)
    assert isinstance(exc.last_attempt.exception(), Flaky)
    assert len(attempts) == 3
    assert attempts[2] - attempts[0] == 2


def test_user_stop_still_applies():
    calls = []

    def op():
        calls.append(1)
        raise Flaky

    with tether.with_cancel(bg()) as ctx:
        with pytest.raises(RetryError):
            retrying(ctx, stop=stop_after_attempt(2))(op)
    assert len(calls) == 2


def test_cancel_interrupts_the_sleep_and_raises_the_context_error():
    first_attempt = threading.Event()

    def op():
        first_attempt.set()
        raise Flaky

    ctx, cancel = tether.with_cancel(bg())
    r = retrying(ctx, wait=wait_fixed(3600))
    t, out = run_in_thread(lambda: r(op))
    assert first_attempt.wait(10)
    why = ConnectionAbortedError("shutting down")
    eventually(lambda: (ctx._c or ctx)._children)  # the sleep's child context exists
    cancel(why)
    t.join(10)
    assert not t.is_alive()
    _, exc = out[0]
    assert isinstance(exc, tether.Canceled)  # not RetryError, not after an hour
    assert exc.__cause__ is why


def test_attempt_failing_with_the_context_error_is_not_retried():
    ctx, cancel = tether.with_cancel(bg())
    calls = []

    def op():
        calls.append(1)
        if len(calls) == 2:
            cancel()
        ctx.check()
        raise Flaky

    with pytest.raises(tether.Canceled):
        retrying(ctx, wait=wait_fixed(0))(op)
    assert len(calls) == 2


def test_already_ended_context_runs_one_attempt_and_raises_it():
    ctx, cancel = tether.with_cancel(bg())
    cancel()
    calls = []

    def op():
        calls.append(1)
        ctx.check()

    with pytest.raises(tether.Canceled):
        retrying(ctx)(op)
    assert calls == [1]


def test_success_returns_the_value():
    calls = []

    def op():
        calls.append(1)
        if len(calls) < 3:
            raise Flaky
        return "done"

    with tether.with_cancel(bg()) as ctx:
        assert retrying(ctx, wait=wait_fixed(0), reraise=True)(op) == "done"


def test_sleep_is_not_overridable():
    with tether.with_cancel(bg()) as ctx, pytest.raises(TypeError, match=r"^tether: "):
        retrying(ctx, sleep=lambda s: None)


def test_bad_margin():
    with tether.with_cancel(bg()) as ctx:
        with pytest.raises(ValueError, match=r"^tether: "):
            stop_when_ended(ctx, margin=-1)
        with pytest.raises(TypeError, match=r"^tether: "):
            retrying(ctx, margin="1")
    with pytest.raises(TypeError, match=r"^tether: "):
        sleep_with(None)


def test_sleep_with_uses_the_fake_clock(fake_clock):
    with tether.with_cancel(bg()) as ctx:
        s = sleep_with(ctx)
        t, out = run_in_thread(lambda: s(5))
        eventually(lambda: fake_clock.timers() == 1)
        fake_clock.advance(5)
        t.join(10)
    assert out == [("ok", None)]


# -- async -------------------------------------------------------------------------------


def test_async_retrying_cancel_interrupts_the_sleep():
    async def main():
        ctx, cancel = tether.with_cancel(bg())
        calls = []

        async def op():
            calls.append(1)
            if len(calls) == 1:
                asyncio.get_running_loop().call_later(0.01, cancel)
            raise Flaky

        async def loop():
            async for attempt in async_retrying(ctx, wait=wait_fixed(3600)):
                with attempt:
                    await op()

        with pytest.raises(tether.Canceled):
            await loop()
        assert calls == [1]

    asyncio.run(asyncio.wait_for(main(), 30))


def test_async_retrying_stops_on_budget_and_awaits_async_predicates(fake_clock):
    async def main():
        seen = []

        async def retry_on_flaky(rs):
            seen.append(rs.attempt_number)
            return isinstance(rs.outcome.exception(), Flaky)

        async def advance_when_sleeping():
            for _ in range(2):
                while fake_clock.timers() < 2:
                    await asyncio.sleep(0.001)
                fake_clock.advance(1)

        with tether.with_timeout(bg(), 2.5) as ctx:
            mover = asyncio.create_task(advance_when_sleeping())
            attempts = []

            async def loop():
                async for attempt in async_retrying(ctx, wait=wait_fixed(1), retry=retry_on_flaky):
                    with attempt:
                        attempts.append(1)
                        raise Flaky

            with pytest.raises(RetryError):
                await loop()
            await mover
        assert len(attempts) == 3
        assert seen == [1, 2, 3]

    asyncio.run(asyncio.wait_for(main(), 30))


def test_asleep_with_raises_when_the_context_ends():
    async def main():
        ctx, cancel = tether.with_cancel(bg())
        asyncio.get_running_loop().call_later(0.01, cancel)
        with pytest.raises(tether.Canceled):
            await asleep_with(ctx)(3600)

    asyncio.run(asyncio.wait_for(main(), 30))


# -- without tenacity ------------------------------------------------------------------


def test_missing_tenacity_raises_import_error_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tenacity", None)  # `import tenacity` now fails
    with tether.with_cancel(bg()) as ctx:
        with pytest.raises(ImportError, match=r"pip install 'tether\[tenacity\]'"):
            retrying(ctx)
        with pytest.raises(ImportError, match=r"tether\[tenacity\]"):
            async_retrying(ctx)
        with pytest.raises(ImportError, match=r"tether\[tenacity\]"):
            stop_when_ended(ctx) | (lambda rs: False)
        # the hooks themselves need no tenacity
        assert stop_when_ended(ctx)(state(0)) is False


def test_import_tether_does_not_import_tenacity():
    import subprocess

    code = (
        "import sys, tether, tether.integrations; "
        "assert 'tenacity' not in sys.modules, 'tenacity imported'; "
        "import tether.integrations.tenacity; "
        "assert 'tenacity' not in sys.modules, 'tenacity imported by the module'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
