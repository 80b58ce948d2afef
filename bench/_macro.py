"""The whole-operation rows: 5 (cancel a root with 10,000 children), 7 (10,000 tasks
under a 50 ms timeout), and X4 (wake-up latency of a cancel from another thread).

Each function sets up outside the timed region and returns the seconds of the operation
itself; ``run.py`` calls them interleaved, ``repeats`` times. Row 6 lives in
``_deadlines.py`` (it reports two times and is also run in a subprocess for memory).
"""

from __future__ import annotations

import asyncio
import queue
import statistics
import threading
import time
from collections.abc import Callable

import anyio
import cantok
import trio

import tether
from _harness import Macro

__all__ = ["cancel_root_async", "cancel_root_sync", "latency", "timeouts_10k"]

_timer = time.perf_counter
BG = tether.background()


# --------------------------------------------------------------------------------------
# Row 5a: cancel a root with n live children, and observe every child's cancellation.
# tether cancels eagerly (cancel() has ended all of them when it returns); cantok is
# lazy (cancel() sets a flag, each child finds it by walking up when polled), so the
# fair figure for both is cancel + one poll of every child.


def _tether_root(n: int, observe: bool) -> float:
    root, root_cancel = tether.with_cancel(BG)
    scopes = [tether.with_cancel(root) for _ in range(n)]
    ctxs = [s[0] for s in scopes]
    t0 = _timer()
    root_cancel()
    if observe:
        for c in ctxs:
            c.err()
    t1 = _timer()
    assert all(c.err() is not None for c in ctxs)
    return t1 - t0


def _cantok_root(n: int) -> float:
    root = cantok.SimpleToken()
    children = [cantok.SimpleToken(root) for _ in range(n)]
    t0 = _timer()
    root.cancel()
    for c in children:
        c.cancelled
    t1 = _timer()
    assert all(c.cancelled for c in children)
    return t1 - t0


def cancel_root_sync(n: int) -> list[Macro]:
    return [
        Macro(
            "tether",
            f"root cancel() with {n:,} with_cancel children + err() on each",
            lambda: _tether_root(n, True),
            primary=True,
        ),
        Macro(
            "tether",
            "root cancel() alone (children already ended on return)",
            lambda: _tether_root(n, False),
        ),
        Macro(
            "cantok",
            f"root.cancel() with {n:,} SimpleToken(root) + .cancelled on each",
            lambda: _cantok_root(n),
        ),
    ]


# --------------------------------------------------------------------------------------
# Row 5b: n tasks, each inside its own child scope of a root, parked in a sleep; time
# from cancelling the root until every task has finished.


def _tether_root_tasks(n: int) -> float:
    async def main() -> float:
        root, root_cancel = tether.with_cancel(BG)
        started = 0

        async def worker() -> None:
            nonlocal started
            try:
                async with tether.with_cancel(root):
                    started += 1
                    await asyncio.sleep(3600)
            except tether.Canceled:
                pass

        tasks = [asyncio.create_task(worker()) for _ in range(n)]
        while started < n:
            await asyncio.sleep(0)
        t0 = _timer()
        root_cancel()
        await asyncio.gather(*tasks)
        return _timer() - t0

    return asyncio.run(main())


def _asyncio_root_tasks(n: int) -> float:
    async def main() -> float:
        started = 0

        async def worker() -> None:
            nonlocal started
            async with asyncio.timeout(3600):
                started += 1
                await asyncio.sleep(3600)

        async def root() -> None:
            async with asyncio.TaskGroup() as tg:
                for _ in range(n):
                    tg.create_task(worker())

        root_task = asyncio.create_task(root())
        while started < n:
            await asyncio.sleep(0)
        t0 = _timer()
        root_task.cancel()
        try:
            await root_task
        except asyncio.CancelledError:
            pass
        return _timer() - t0

    return asyncio.run(main())


def _anyio_root_tasks(n: int) -> float:
    async def main() -> float:
        started = 0

        async def worker() -> None:
            nonlocal started
            with anyio.CancelScope():
                started += 1
                await anyio.sleep(3600)

        async with anyio.create_task_group() as tg:
            for _ in range(n):
                tg.start_soon(worker)
            while started < n:
                await anyio.sleep(0)
            t0 = _timer()
            tg.cancel_scope.cancel()
        return _timer() - t0

    return asyncio.run(main())


def _trio_root_tasks(n: int) -> float:
    async def main() -> float:
        started = 0

        async def worker() -> None:
            nonlocal started
            with trio.CancelScope():
                started += 1
                await trio.sleep(3600)

        async with trio.open_nursery() as nursery:
            for _ in range(n):
                nursery.start_soon(worker)
            while started < n:
                await trio.sleep(0)
            t0 = _timer()
            nursery.cancel_scope.cancel()
        return _timer() - t0

    return trio.run(main)


def cancel_root_async(n: int) -> list[Macro]:
    return [
        Macro(
            "tether",
            f"{n:,} tasks in `async with with_cancel(root)`; root cancel() -> all finished",
            lambda: _tether_root_tasks(n),
            primary=True,
        ),
        Macro(
            "asyncio",
            f"{n:,} tasks in asyncio.timeout(3600) under a TaskGroup; cancel its task",
            lambda: _asyncio_root_tasks(n),
        ),
        Macro(
            "anyio",
            f"{n:,} tasks in CancelScope() under a task group; tg.cancel_scope.cancel()",
            lambda: _anyio_root_tasks(n),
        ),
        Macro(
            "trio",
            f"{n:,} tasks in CancelScope() under a nursery; nursery.cancel_scope.cancel()",
            lambda: _trio_root_tasks(n),
        ),
    ]


# --------------------------------------------------------------------------------------
# Row 7: n tasks, each `async with <50 ms timeout>` around `await asyncio.sleep(10)`;
# wall time from creating the first task until every one has timed out.


def _aio_timeouts(n: int, kind: str) -> float:
    async def with_tether() -> int:
        try:
            async with tether.with_timeout(BG, 0.05):
                await asyncio.sleep(10)
        except tether.DeadlineExceeded:
            return 1
        return 0

    async def with_asyncio() -> int:
        try:
            async with asyncio.timeout(0.05):
                await asyncio.sleep(10)
        except TimeoutError:
            return 1
        return 0

    async def with_anyio() -> int:
        try:
            with anyio.fail_after(0.05):
                await anyio.sleep(10)
        except TimeoutError:
            return 1
        return 0

    worker = {"tether": with_tether, "asyncio": with_asyncio, "anyio": with_anyio}[kind]

    async def main() -> float:
        t0 = _timer()
        tasks = [asyncio.create_task(worker()) for _ in range(n)]
        fired = sum(await asyncio.gather(*tasks))
        t1 = _timer()
        assert fired == n, (kind, fired)
        return t1 - t0

    return asyncio.run(main())


def _trio_timeouts(n: int) -> float:
    async def main() -> float:
        fired = 0

        async def worker() -> None:
            nonlocal fired
            try:
                with trio.fail_after(0.05):
                    await trio.sleep(10)
            except trio.TooSlowError:
                fired += 1

        t0 = _timer()
        async with trio.open_nursery() as nursery:
            for _ in range(n):
                nursery.start_soon(worker)
        t1 = _timer()
        assert fired == n
        return t1 - t0

    return trio.run(main)


def timeouts_10k(n: int) -> list[Macro]:
    return [
        Macro(
            "tether",
            f"{n:,} tasks: async with with_timeout(bg, 0.05): await sleep(10)",
            lambda: _aio_timeouts(n, "tether"),
            primary=True,
        ),
        Macro(
            "asyncio",
            f"{n:,} tasks: async with asyncio.timeout(0.05): await sleep(10)",
            lambda: _aio_timeouts(n, "asyncio"),
        ),
        Macro(
            "anyio",
            f"{n:,} tasks: with fail_after(0.05): await sleep(10)  (asyncio backend)",
            lambda: _aio_timeouts(n, "anyio"),
        ),
        Macro(
            "trio",
            f"{n:,} tasks: with fail_after(0.05): await sleep(10)  (trio's own loop)",
            lambda: _trio_timeouts(n),
        ),
    ]


# --------------------------------------------------------------------------------------
# X4: how long after another thread calls cancel() does the waiter run? One helper
# thread takes a "fire" function from a queue, lets the waiter park (1 ms), stamps the
# time and fires. The figure per repeat is the median over ``trials`` wake-ups.


class _Helper:
    def __init__(self) -> None:
        self.q: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self.t0 = 0.0
        self.thread = threading.Thread(target=self._run, name="bench-helper", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (fire := self.q.get()) is not None:
            time.sleep(0.001)
            self.t0 = _timer()
            fire()

    def close(self) -> None:
        self.q.put(None)
        self.thread.join()


def _latency_tether_async(trials: int) -> float:
    helper = _Helper()

    async def main() -> float:
        out = []
        for _ in range(trials):
            ctx, cancel = tether.with_cancel(BG)
            helper.q.put(cancel)
            await ctx.done()
            out.append(_timer() - helper.t0)
        return statistics.median(out)

    try:
        return asyncio.run(main())
    finally:
        helper.close()


def _latency_asyncio(trials: int) -> float:
    helper = _Helper()

    async def main() -> float:
        loop = asyncio.get_running_loop()
        out = []
        for _ in range(trials):
            fut = loop.create_future()
            helper.q.put(lambda fut=fut: loop.call_soon_threadsafe(fut.set_result, None))
            await fut
            out.append(_timer() - helper.t0)
        return statistics.median(out)

    try:
        return asyncio.run(main())
    finally:
        helper.close()


def _latency_trio(trials: int) -> float:
    helper = _Helper()

    async def main() -> float:
        token = trio.lowlevel.current_trio_token()
        out = []
        for _ in range(trials):
            ev = trio.Event()
            helper.q.put(lambda ev=ev: token.run_sync_soon(ev.set))
            await ev.wait()
            out.append(_timer() - helper.t0)
        return statistics.median(out)

    try:
        return trio.run(main)
    finally:
        helper.close()


def _latency_tether_thread(trials: int) -> float:
    helper = _Helper()
    out = []
    try:
        for _ in range(trials):
            ctx, cancel = tether.with_cancel(BG)
            helper.q.put(cancel)
            ctx.done().wait()
            out.append(_timer() - helper.t0)
    finally:
        helper.close()
    return statistics.median(out)


def _latency_event(trials: int) -> float:
    helper = _Helper()
    out = []
    try:
        for _ in range(trials):
            ev = threading.Event()
            helper.q.put(ev.set)
            ev.wait()
            out.append(_timer() - helper.t0)
    finally:
        helper.close()
    return statistics.median(out)


def latency(trials: int) -> list[tuple[str, list[Macro]]]:
    return [
        (
            "X4a",
            [
                Macro(
                    "tether",
                    "await ctx.done(); cancel() from another thread",
                    lambda: _latency_tether_async(trials),
                    primary=True,
                ),
                Macro(
                    "asyncio",
                    "await fut; loop.call_soon_threadsafe(fut.set_result) from a thread",
                    lambda: _latency_asyncio(trials),
                ),
                Macro(
                    "trio",
                    "await event.wait(); token.run_sync_soon(event.set) from a thread",
                    lambda: _latency_trio(trials),
                ),
            ],
        ),
        (
            "X4b",
            [
                Macro(
                    "tether",
                    "ctx.done().wait() in a thread; cancel() from another thread",
                    lambda: _latency_tether_thread(trials),
                    primary=True,
                ),
                Macro(
                    "threading",
                    "threading.Event().wait(); set() from another thread",
                    lambda: _latency_event(trials),
                ),
            ],
        ),
    ]
