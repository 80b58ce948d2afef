"""Typed usage of tether, checked by ``mypy --strict`` from tests/test_api.py.

This is how users write against the API; every ``assert_type`` is a claim about the
types they get. It also runs (test_api.py executes it).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import assert_type

import tether
from tether.testing import FakeClock

REQUEST_ID = tether.Key[str]("request_id")
ATTEMPT = tether.Key[int]("attempt")


def handler(ctx: tether.Context) -> str | None:
    ctx = tether.with_value(ctx, REQUEST_ID, "a1b2")
    assert_type(ctx, tether.Context)
    ctx, cancel = tether.with_cancel(ctx)
    assert_type(ctx, tether.Context)
    assert_type(cancel, tether.CancelFunc)
    try:
        rid = ctx.value(REQUEST_ID)
        assert_type(rid, str | None)
        assert_type(ctx.value(ATTEMPT), int | None)
        assert_type(ctx.deadline(), float | None)
        assert_type(ctx.remaining(), float | None)
        assert_type(ctx.err(), tether.ContextError | None)
        assert_type(ctx.done(), tether.Done)
        assert_type(ctx.done().wait(0.01), bool)
        assert_type(ctx.done().is_set(), bool)
        ctx.check()
        return rid
    finally:
        cancel(ValueError("finished"))


def deadlines(parent: tether.Context) -> None:
    with tether.with_timeout(parent, 2.5) as ctx:
        assert_type(ctx, tether.Context)
        assert tether.current() is ctx
    with tether.with_timeout(parent, timedelta(seconds=1), cause=TimeoutError("slow")) as ctx:
        assert_type(ctx, tether.Context)
    when = datetime.now(UTC) + timedelta(seconds=5)
    scope = tether.with_deadline(parent, when)
    assert_type(scope, tether.Scope)
    ctx, cancel = scope
    assert_type(ctx, tether.Context)
    cancel()
    assert_type(tether.cause(ctx), BaseException | None)
    stop = tether.after_func(ctx, lambda: None)
    assert_type(stop(), bool)
    detached = tether.without_cancel(ctx)
    assert_type(detached, tether.Context)


async def in_a_task(parent: tether.Context) -> None:
    async with tether.with_timeout(parent, 5) as ctx:
        assert_type(ctx, tether.Context)
        await asyncio.sleep(0)
    await ctx.done()


def main() -> None:
    assert handler(tether.background()) == "a1b2"
    deadlines(tether.todo())
    asyncio.run(in_a_task(tether.background()))
    with FakeClock() as clock:
        ctx, cancel = tether.with_timeout(tether.background(), 1)
        clock.advance(1)
        err = ctx.err()
        assert isinstance(err, tether.DeadlineExceeded)
        cancel()


if __name__ == "__main__":
    main()
