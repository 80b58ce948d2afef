"""Row 6: ``n`` live distinct deadlines, created, held, then all cancelled.

Every implementation is ``run(n, hooks) -> (create_seconds, cancel_seconds)``.
``hooks.start()`` is called just before the timed creation and ``hooks.live()`` once all
``n`` deadlines are live (both outside the timed regions): the timing pass in
``run.py`` counts threads there, the memory pass (``_mem.py``, a fresh process per
implementation) reads the resident set size there.

The deadlines are 60 s plus a distinct offset of i microseconds, armed in a shuffled
order (so tether's heap and asyncio's heap see random insertions), and cancelled in
creation order (so most cancellations are not of the newest timer).

- tether: ``with_timeout(background(), d)`` each, then every ``cancel()``.
- cantok: ``TimeoutToken(d)`` each, then every ``cancel()``. A cantok timeout is a clock
  reading compared on every poll: it never fires by itself and arms nothing.
- asyncio tasks: one task per deadline, each ``async with asyncio.timeout(d)`` around an
  ``await`` that never completes (the issue's asyncio figure); created when every task has
  entered its timeout; "cancel all" is ``task.cancel()`` on each and the gather that
  waits for them to finish.
- trio tasks: the same in a nursery with ``move_on_after(d)``; "cancel all" is the
  nursery's ``cancel_scope.cancel()`` until the nursery exits.
- asyncio timers (reference): ``loop.call_at`` handles, then ``handle.cancel()``: the
  timer under ``asyncio.timeout`` with no task or scope around it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["IMPLS", "LABELS", "delays"]

_timer = time.perf_counter


class Hooks(Protocol):
    def start(self) -> None: ...
    def live(self) -> None: ...


def delays(n: int) -> list[float]:
    ds = [60.0 + i * 1e-6 for i in range(n)]
    random.Random(42).shuffle(ds)
    return ds


def run_tether(n: int, hooks: Hooks) -> tuple[float, float]:
    import tether

    bg = tether.background()
    with_timeout = tether.with_timeout
    ds = delays(n)
    hooks.start()
    t0 = _timer()
    scopes = [with_timeout(bg, d) for d in ds]
    t1 = _timer()
    hooks.live()
    t2 = _timer()
    for _, cancel in scopes:
        cancel()
    t3 = _timer()
    return t1 - t0, t3 - t2


def run_cantok(n: int, hooks: Hooks) -> tuple[float, float]:
    import cantok

    TimeoutToken = cantok.TimeoutToken
    ds = delays(n)
    hooks.start()
    t0 = _timer()
    tokens = [TimeoutToken(d) for d in ds]
    t1 = _timer()
    hooks.live()
    t2 = _timer()
    for tok in tokens:
        tok.cancel()
    t3 = _timer()
    return t1 - t0, t3 - t2


def run_asyncio_tasks(n: int, hooks: Hooks) -> tuple[float, float]:
    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        ds = delays(n)
        entered = 0
        all_in = loop.create_future()
        never = loop.create_future()

        async def worker(d: float) -> None:
            nonlocal entered
            async with asyncio.timeout(d):
                entered += 1
                if entered == n:
                    all_in.set_result(None)
                await never

        hooks.start()
        t0 = _timer()
        tasks = [asyncio.create_task(worker(d)) for d in ds]
        await all_in
        t1 = _timer()
        hooks.live()
        t2 = _timer()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        t3 = _timer()
        return t1 - t0, t3 - t2

    return asyncio.run(main())


def run_trio_tasks(n: int, hooks: Hooks) -> tuple[float, float]:
    import trio

    async def main() -> tuple[float, float]:
        ds = delays(n)
        entered = 0
        all_in = trio.Event()

        async def worker(d: float) -> None:
            nonlocal entered
            with trio.move_on_after(d):
                entered += 1
                if entered == n:
                    all_in.set()
                await trio.sleep_forever()

        hooks.start()
        t0 = _timer()
        async with trio.open_nursery() as nursery:
            for d in ds:
                nursery.start_soon(worker, d)
            await all_in.wait()
            t1 = _timer()
            hooks.live()
            t2 = _timer()
            nursery.cancel_scope.cancel()
        t3 = _timer()
        return t1 - t0, t3 - t2

    return trio.run(main)


def run_asyncio_timers(n: int, hooks: Hooks) -> tuple[float, float]:
    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        call_at = loop.call_at
        base = loop.time()
        ds = delays(n)
        f = int
        hooks.start()
        t0 = _timer()
        handles = [call_at(base + d, f) for d in ds]
        t1 = _timer()
        hooks.live()
        t2 = _timer()
        for h in handles:
            h.cancel()
        t3 = _timer()
        return t1 - t0, t3 - t2

    return asyncio.run(main())


# name -> (impl, label, reference)
IMPLS: dict[str, tuple[Callable[[int, Any], tuple[float, float]], str, bool]] = {
    "tether": (run_tether, "with_timeout(background(), d) each; cancel() each", False),
    "cantok": (run_cantok, "TimeoutToken(d) each; cancel() each", False),
    "asyncio": (
        run_asyncio_tasks,
        "a task each in asyncio.timeout(d); task.cancel() each + gather",
        False,
    ),
    "trio": (
        run_trio_tasks,
        "a task each in move_on_after(d), one nursery; nursery cancel",
        False,
    ),
    "asyncio-timers": (
        run_asyncio_timers,
        "loop.call_at(d) handles, handle.cancel() each (bare timers: reference)",
        True,
    ),
}
LABELS = {name: label for name, (_, label, _) in IMPLS.items()}
