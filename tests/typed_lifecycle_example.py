"""tether.lifecycle used the way a service would, checked by mypy --strict (and run).

tests/test_lifecycle_api.py runs mypy over this file and then runs it.
"""

from __future__ import annotations

import asyncio
from typing import assert_type

import tether
from tether import lifecycle


def handle(ctx: tether.Context, order_id: int) -> None:
    assert_type(ctx.value(lifecycle.REQUEST_ID), str | None)
    assert_type(lifecycle.log_extra(ctx), dict[str, str])


def audit(ctx: tether.Context, action: str, amount: int) -> None:
    pass


async def notify(ctx: tether.Context, who: str) -> None:
    await asyncio.sleep(0)


async def api(ctx: tether.Context) -> None:
    runner.go(ctx, notify, "ops")  # a coroutine job, on this loop
    await ctx.done()


def tick(ctx: tether.Context) -> None:
    pass


pool: lifecycle.WorkerPool[int] = lifecycle.WorkerPool(handle, workers=2, queue_size=10)
pool.submit(42)
unprocessed: list[tuple[str, str]] = []


def keep(job: lifecycle.DetachedJob, reason: str) -> None:
    unprocessed.append((job.name, reason))


runner = lifecycle.DetachedRunner(limit=2, on_unprocessed=keep)
runner.go(tether.background(), audit, "refund", 10)
sched = lifecycle.every(30, tick)
assert_type(sched, lifecycle.Scheduler)

sup = lifecycle.Supervisor(signals=(), drain_timeout=5, close_timeout=1)
sup.on_close("detached", runner.close)
sup.add("api", api)
sup.add("pool", pool.run, stop_after="api")
sup.add("ticks", sched.arun, stop_after=["api", "pool"])
sup.shutdown()  # before run: each component is called with its ctx ended, then closers
code: int = sup.run()
report = sup.report
assert report is not None
assert_type(report.exit_code, int)
assert_type(pool.stats(), lifecycle.PoolStats)
assert pool.stats().succeeded == 1  # the item queued before run() was still processed

with tether.signal_context(parent=tether.background()) as ctx:
    assert_type(ctx, tether.Context)
scope = tether.signal_context()
assert_type(scope.stop, lifecycle.StopFunc)
scope.stop()
print("ok", code)
