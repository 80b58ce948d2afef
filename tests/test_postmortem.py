"""The postmortem, replayed: a prefetch whose dependency slows from 30 ms to 9 s.

The incident: every request starts a background "prefetch" that calls a dependency.
Normally the call takes 30 ms. Then the dependency degrades and every call takes 9 s.
Requests keep arriving at the same rate, every one starts another prefetch, none
finishes: threads (or tasks) and the memory they hold grow without bound until the
process falls over.

The fix is two lines: a ``Limiter`` caps the prefetches in flight (``try_acquire``
sheds the rest: a prefetch is optional work), and a bounded context
(``with_timeout``) makes each one give up after 200 ms. Same code otherwise.

Each scenario runs twice, with and without the two lines, on the same dependency and
the same request rate, and measures live prefetches, live threads/tasks and traced
memory while the requests keep arriving after the slowdown. The unbounded run is then
stopped (its server context cancelled: the dependency calls watch it) and cleaned up,
so no thread or task leaks. Only counts are asserted, never durations: a slow machine
sends the same requests, more slowly.
"""

from __future__ import annotations

import asyncio
import threading
import time
import tracemalloc
from dataclasses import dataclass, field

import pytest

import tether

pytestmark = pytest.mark.slow

CAP = 8  # prefetches in flight, at most
TIMEOUT = 0.2  # each prefetch's budget, seconds
HEALTHY = 40  # requests while the dependency answers in 30 ms
DEGRADED = 200  # requests after it slowed to 9 s
PACE = 0.004  # seconds between requests
BUF = 64 * 1024  # what one in-flight prefetch holds (its response buffer)
FAST, SLOW = 0.03, 9.0


@dataclass
class Run:
    """What one run measured."""

    accepted: int = 0
    shed: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    samples: list[tuple[int, int, int]] = field(default_factory=list)  # (in flight, live, mem)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def enter(self) -> None:
        with self.lock:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def exit(self) -> None:
        with self.lock:
            self.in_flight -= 1

    @property
    def mem_growth(self) -> int:
        """Traced memory at the last sample minus at the first (after the slowdown)."""
        return self.samples[-1][2] - self.samples[0][2]

    @property
    def peak_live(self) -> int:
        return max(s[1] for s in self.samples)

    def report(self, name: str) -> str:
        return (
            f"{name}: accepted={self.accepted} shed={self.shed} "
            f"peak in flight={self.peak_in_flight} peak live={self.peak_live} "
            f"memory growth={self.mem_growth / 1e6:.1f} MB "
            f"samples(in flight, live, MB)="
            f"{[(a, b, round(c / 1e6, 1)) for a, b, c in self.samples]}"
        )


class Dependency:
    """A client call that honours its context (as a real client with clamped timeouts)."""

    def __init__(self) -> None:
        self.delay = FAST

    def call(self, ctx: tether.Context) -> bytes:
        buf = bytearray(BUF)  # the response being received
        if ctx.done().wait(self.delay):  # the context ended before the answer
            ctx.check()
        return bytes(buf[:16])

    async def acall(self, ctx: tether.Context) -> bytes:
        buf = bytearray(BUF)
        await tether.asleep(ctx, self.delay)
        return bytes(buf[:16])


def traced() -> int:
    return tracemalloc.get_traced_memory()[0]


# -- threads ---------------------------------------------------------------------------


def run_threads(bounded: bool) -> Run:
    run = Run()
    dep = Dependency()
    server, stop = tether.with_cancel(tether.background())
    limiter = tether.Limiter(CAP)
    threads: list[threading.Thread] = []
    baseline = threading.active_count()

    def prefetch(ctx: tether.Context) -> None:
        run.enter()
        try:
            dep.call(ctx)
        except tether.ContextError:
            pass  # gave up: a prefetch is optional
        finally:
            run.exit()

    def prefetch_bounded(ctx: tether.Context) -> None:
        try:
            with tether.with_timeout(ctx, TIMEOUT) as c:
                prefetch(c)
        finally:
            limiter.release()

    def handle_request() -> None:
        if bounded:
            if not limiter.try_acquire():
                run.shed += 1
                return
            t = threading.Thread(target=prefetch_bounded, args=(server,))
        else:
            t = threading.Thread(target=prefetch, args=(server,))
        run.accepted += 1
        t.start()
        threads.append(t)

    try:
        for _ in range(HEALTHY):
            handle_request()
            time.sleep(PACE)
        dep.delay = SLOW
        for i in range(DEGRADED):
            handle_request()
            time.sleep(PACE)
            if i % 25 == 0 or i == DEGRADED - 1:
                live = threading.active_count() - baseline
                run.samples.append((run.in_flight, live, traced()))
    finally:
        stop()  # shutdown: every dependency call watching `server` returns
        for t in threads:
            t.join(30)
    assert not any(t.is_alive() for t in threads)
    return run


def test_threads_capped_and_flat_with_limiter_and_timeout():
    tracemalloc.start()
    try:
        unbounded = run_threads(bounded=False)
        bounded = run_threads(bounded=True)
    finally:
        tracemalloc.stop()
    print(unbounded.report("threads, unbounded"))
    print(bounded.report("threads, Limiter + with_timeout"))

    # Without the fix: every request after the slowdown is still in flight, holding a
    # thread and its buffer, and the count only grows.
    assert unbounded.peak_in_flight >= DEGRADED // 2 > 10 * CAP
    assert unbounded.peak_live >= DEGRADED // 2
    counts = [s[0] for s in unbounded.samples]
    assert counts == sorted(counts)  # never shrinks while requests arrive
    assert unbounded.mem_growth >= (DEGRADED // 2) * BUF

    # With it: never more than CAP prefetches, the rest shed; memory flat.
    assert bounded.peak_in_flight <= CAP
    assert bounded.peak_live <= 2 * CAP  # a thread exits just after releasing its slot
    assert bounded.shed > 0
    assert bounded.mem_growth <= (CAP + 4) * BUF + 2_000_000
    assert unbounded.mem_growth > 5 * max(bounded.mem_growth, BUF)


# -- asyncio ---------------------------------------------------------------------------


async def run_tasks(bounded: bool) -> Run:
    run = Run()
    dep = Dependency()
    server, stop = tether.with_cancel(tether.background())
    limiter = tether.Limiter(CAP)
    tasks: set[asyncio.Task[None]] = set()
    baseline = len(asyncio.all_tasks())

    async def prefetch(ctx: tether.Context) -> None:
        run.enter()
        try:
            await dep.acall(ctx)
        except tether.ContextError:
            pass
        finally:
            run.exit()

    async def prefetch_bounded(ctx: tether.Context) -> None:
        try:
            with tether.with_timeout(ctx, TIMEOUT) as c:
                await prefetch(c)
        finally:
            limiter.release()

    def handle_request() -> None:
        if bounded:
            if not limiter.try_acquire():
                run.shed += 1
                return
            coro = prefetch_bounded(server)
        else:
            coro = prefetch(server)
        run.accepted += 1
        t = asyncio.create_task(coro)
        tasks.add(t)
        t.add_done_callback(tasks.discard)

    try:
        for _ in range(HEALTHY):
            handle_request()
            await asyncio.sleep(PACE)
        dep.delay = SLOW
        for i in range(DEGRADED):
            handle_request()
            await asyncio.sleep(PACE)
            if i % 25 == 0 or i == DEGRADED - 1:
                live = len(asyncio.all_tasks()) - baseline
                run.samples.append((run.in_flight, live, traced()))
    finally:
        stop()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
    return run


def test_tasks_capped_and_flat_with_limiter_and_timeout():
    tracemalloc.start()
    try:
        unbounded = asyncio.run(run_tasks(bounded=False))
        bounded = asyncio.run(run_tasks(bounded=True))
    finally:
        tracemalloc.stop()
    print(unbounded.report("tasks, unbounded"))
    print(bounded.report("tasks, Limiter + with_timeout"))

    assert unbounded.peak_in_flight >= DEGRADED // 2 > 10 * CAP
    assert unbounded.peak_live >= DEGRADED // 2
    counts = [s[0] for s in unbounded.samples]
    assert counts == sorted(counts)
    assert unbounded.mem_growth >= (DEGRADED // 2) * BUF

    assert bounded.peak_in_flight <= CAP
    assert bounded.peak_live <= CAP
    assert bounded.shed > 0
    assert bounded.mem_growth <= (CAP + 4) * BUF + 2_000_000
    assert unbounded.mem_growth > 5 * max(bounded.mem_growth, BUF)
