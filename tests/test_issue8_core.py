"""Issue 8, items 8 and 11: a wall-clock deadline, and three small inconsistencies.

Each failed before its fix: ``with_deadline(bg, time.time() + 5)`` was accepted (a
deadline 56 years away), ``background().value([])`` returned ``None``,
``tether.sleep(ctx, math.inf)`` raised ``ValueError``.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

import tether

bg = tether.background


# -- item 8: a time.time() value where a monotonic one is expected ----------------------


def test_with_deadline_rejects_a_wall_clock_value():
    with pytest.raises(ValueError, match=r"^tether: .*time\.time\(\).*with_timeout") as info:
        tether.with_deadline(bg(), time.time() + 5)
    assert "datetime" in str(info.value)


def test_with_deadline_rejects_it_under_a_fake_clock_too(fake_clock):
    with pytest.raises(ValueError, match=r"^tether: .*years from now"):
        tether.with_deadline(bg(), fake_clock.now() + 11 * 365.25 * 86400)


@pytest.mark.parametrize("ahead", [5.0, 86400.0 * 365 * 9])
def test_with_deadline_accepts_monotonic_values(ahead):
    with tether.with_deadline(bg(), time.monotonic() + ahead) as ctx:
        assert 0 < ctx.remaining() <= ahead


def test_with_deadline_accepts_aware_datetimes_and_past_values():
    with tether.with_deadline(bg(), datetime.now(UTC) + timedelta(seconds=5)) as ctx:
        assert 0 < ctx.remaining() <= 5
    with tether.with_deadline(bg(), 0.0) as ctx:  # long past: born ended, as before
        assert isinstance(ctx.err(), tether.DeadlineExceeded)


# -- item 11 -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [bg, tether.todo, lambda: tether.without_cancel(bg())],
    ids=["background", "todo", "without_cancel"],
)
def test_value_with_an_unhashable_key_raises_on_every_context(make):
    with pytest.raises(TypeError):
        make().value([])
    with tether.with_cancel(make()) as ctx:
        with pytest.raises(TypeError):
            ctx.value({})
    assert make().value("absent") is None


def test_value_with_an_unhashable_key_raises_on_contexts_with_values_too():
    ctx = tether.with_value(bg(), "k", 1)
    with pytest.raises(TypeError):
        ctx.value([])


def test_sleep_forever_ends_with_the_context():
    ctx, cancel = tether.with_cancel(bg())
    t = threading.Timer(0.05, cancel)
    t.start()
    try:
        with pytest.raises(tether.Canceled):
            tether.sleep(ctx, math.inf)
    finally:
        t.join()
        cancel()


def test_sleep_forever_on_an_ended_context_raises_at_once(fake_clock):
    with tether.with_timeout(bg(), 1) as ctx:
        fake_clock.advance(1)
        with pytest.raises(tether.DeadlineExceeded):
            tether.sleep(ctx, math.inf)


@pytest.mark.parametrize("bad", [-math.inf, math.nan])
def test_sleep_still_rejects_nan_and_minus_inf(bad):
    with pytest.raises(ValueError, match=r"^tether: "):
        tether.sleep(bg(), bad)


def test_asleep_forever_ends_with_the_context():
    async def main():
        ctx, cancel = tether.with_cancel(bg())
        asyncio.get_running_loop().call_later(0.05, cancel)
        with pytest.raises(tether.Canceled):
            await tether.asleep(ctx, math.inf)
        cancel()

    asyncio.run(asyncio.wait_for(main(), 30))
