"""Structured concurrency benchmark: tether's groups, limiter and to_thread vs the stdlib.

Run: ``python bench/bench_concurrency.py [--quick] [--json PATH]``

Every figure is measured in this run, tether and its peer interleaved, and the best
(minimum) of the repeats is reported with the median beside it; the ratio is tether's
best over the peer's best. Rows (issue 3's speed targets first):

- C1  ``Group.go`` + completion, per task   vs ``ThreadPoolExecutor.submit`` + ``result``
      (N no-op tasks started in a loop, then all waited for; pools warm)   target <= 2x
- C2  ``TaskGroup.go`` + completion, per task vs ``asyncio.TaskGroup.create_task``
      (N no-op coroutines started in a loop inside the block, then waited) target <= 1.3x
- C3  ``Limiter.try_acquire``, ns per call (a free slot; and shedding, none free) vs
      ``threading.Semaphore.acquire(blocking=False)``                    target <= 200 ns
- C4  fan-out: a request that makes a ``Group`` of 3 tasks and waits, per request, vs
      the same with ``ThreadPoolExecutor`` (3 submits, 3 results)         (no target)
- C5  ``await tether.to_thread`` vs ``await asyncio.to_thread``, per call (no target)

The machine is whatever runs this; the figures in docs/concurrency.md say which.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import gc
import json
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import tether

BG = tether.background()
TIMER = time.perf_counter


def noop_ctx(ctx: tether.Context) -> None:
    pass


def noop() -> None:
    pass


async def anoop_ctx(ctx: tether.Context) -> None:
    pass


async def anoop() -> None:
    pass


# -- the cases: each returns seconds per operation ---------------------------------------


def tpe_tasks(ex: concurrent.futures.ThreadPoolExecutor, n: int) -> float:
    t0 = TIMER()
    futs = [ex.submit(noop) for _ in range(n)]
    for f in futs:
        f.result()
    return (TIMER() - t0) / n


def group_tasks(n: int) -> float:
    t0 = TIMER()
    g = tether.Group(BG)
    go = g.go
    for _ in range(n):
        go(noop_ctx)
    g.wait()
    return (TIMER() - t0) / n


def asyncio_tg_tasks(n: int) -> float:
    async def main() -> float:
        t0 = TIMER()
        async with asyncio.TaskGroup() as tg:
            ct = tg.create_task
            for _ in range(n):
                ct(anoop())
        return (TIMER() - t0) / n

    return asyncio.run(main())


def tether_tg_tasks(n: int) -> float:
    async def main() -> float:
        t0 = TIMER()
        async with tether.TaskGroup(BG) as g:
            go = g.go
            for _ in range(n):
                go(anoop_ctx)
        return (TIMER() - t0) / n

    return asyncio.run(main())


def asyncio_tg_spawn(n: int) -> float:
    async def main() -> float:
        async with asyncio.TaskGroup() as tg:
            ct = tg.create_task
            t0 = TIMER()
            for _ in range(n):
                ct(anoop())
            t = TIMER() - t0
        return t / n

    return asyncio.run(main())


def tether_tg_spawn(n: int) -> float:
    async def main() -> float:
        async with tether.TaskGroup(BG) as g:
            go = g.go
            t0 = TIMER()
            for _ in range(n):
                go(anoop_ctx)
            t = TIMER() - t0
        return t / n

    return asyncio.run(main())


def limiter_free(n: int) -> float:
    lim = tether.Limiter(n)
    ta = lim.try_acquire
    t0 = TIMER()
    for _ in range(n):
        ta()
    return (TIMER() - t0) / n


def limiter_shed(n: int) -> float:
    lim = tether.Limiter(0)
    ta = lim.try_acquire
    t0 = TIMER()
    for _ in range(n):
        ta()
    return (TIMER() - t0) / n


def semaphore_free(n: int) -> float:
    sem = threading.Semaphore(n)
    acq = sem.acquire
    t0 = TIMER()
    for _ in range(n):
        acq(blocking=False)
    return (TIMER() - t0) / n


def semaphore_shed(n: int) -> float:
    sem = threading.Semaphore(0)
    acq = sem.acquire
    t0 = TIMER()
    for _ in range(n):
        acq(blocking=False)
    return (TIMER() - t0) / n


def empty_loop(n: int) -> float:
    t0 = TIMER()
    for _ in range(n):
        pass
    return (TIMER() - t0) / n


def fanout_group(n: int) -> float:
    t0 = TIMER()
    for _ in range(n):
        with tether.Group(BG) as g:
            g.go(noop_ctx)
            g.go(noop_ctx)
            g.go(noop_ctx)
    return (TIMER() - t0) / n


def fanout_tpe(ex: concurrent.futures.ThreadPoolExecutor, n: int) -> float:
    t0 = TIMER()
    for _ in range(n):
        fs = [ex.submit(noop), ex.submit(noop), ex.submit(noop)]
        for f in fs:
            f.result()
    return (TIMER() - t0) / n


def to_thread_tether(n: int) -> float:
    async def main() -> float:
        t0 = TIMER()
        for _ in range(n):
            await tether.to_thread(BG, noop_ctx)
        return (TIMER() - t0) / n

    return asyncio.run(main())


def to_thread_asyncio(n: int) -> float:
    async def main() -> float:
        t0 = TIMER()
        for _ in range(n):
            await asyncio.to_thread(noop)
        return (TIMER() - t0) / n

    return asyncio.run(main())


# -- running -----------------------------------------------------------------------------


def measure(cases: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Run every case ``repeats`` times, interleaved, rotating the order each turn."""
    out: dict[str, list[float]] = {k: [] for k in cases}
    names = list(cases)
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            gc.collect()
            out[name].append(cases[name]())
    return out


def fmt(seconds: float) -> str:
    ns = seconds * 1e9
    if ns < 1000:
        return f"{ns:7.0f} ns"
    return f"{ns / 1000:7.2f} us"


def row(
    rid: str, title: str, res: dict[str, list[float]], ours: str, peer: str, target: float | None
) -> dict[str, object]:
    a, b = min(res[ours]), min(res[peer])
    ratio = a / b
    verdict = "" if target is None else ("  ok" if ratio <= target else "  OVER TARGET")
    tgt = "" if target is None else f" (target <= {target}x)"
    print(f"{rid:<4} {title}")
    for name in (ours, peer):
        vals = res[name]
        print(f"       {name:<44} best {fmt(min(vals))}   median {fmt(statistics.median(vals))}")
    print(f"       ratio tether/peer = {ratio:.2f}x{tgt}{verdict}")
    return {
        "id": rid,
        "title": title,
        "tether": min(res[ours]),
        "peer": min(res[peer]),
        "ratio": ratio,
        "target": target,
        "results": {k: v for k, v in res.items() if k in (ours, peer)},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, few repeats (smoke)")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = ap.parse_args()
    q = args.quick
    n_tasks = 2_000 if q else 20_000
    n_ops = 100_000 if q else 1_000_000
    n_fan = 300 if q else 3_000
    n_thr = 300 if q else 3_000
    repeats = 3 if q else 9

    print(
        f"tether {tether.__version__} concurrency benchmark - Python {platform.python_version()}"
        f" on {platform.machine()}, {os.cpu_count()} CPUs{' (--quick)' if q else ''}"
    )
    rows = []
    workers = min(32, (os.cpu_count() or 1) + 4)  # ThreadPoolExecutor's default
    with concurrent.futures.ThreadPoolExecutor(workers) as ex:
        # warm both pools (threads started) before timing
        tpe_tasks(ex, n_tasks)
        group_tasks(n_tasks)
        res = measure(
            {
                "ThreadPoolExecutor.submit + result": lambda: tpe_tasks(ex, n_tasks),
                "tether.Group.go + wait": lambda: group_tasks(n_tasks),
            },
            repeats,
        )
        rows.append(
            row(
                "C1",
                f"thread task start + completion, per task ({n_tasks} no-op tasks)",
                res,
                "tether.Group.go + wait",
                "ThreadPoolExecutor.submit + result",
                2.0,
            )
        )
        res = measure(
            {
                "ThreadPoolExecutor: 3 submits + 3 results": lambda: fanout_tpe(ex, n_fan),
                "tether.Group of 3 + wait": lambda: fanout_group(n_fan),
            },
            repeats,
        )
        fan = row(
            "C4",
            "fan-out: one request = a group of 3 no-op tasks, per request",
            res,
            "tether.Group of 3 + wait",
            "ThreadPoolExecutor: 3 submits + 3 results",
            None,
        )
    res = measure(
        {
            "asyncio.TaskGroup.create_task + exit": lambda: asyncio_tg_tasks(n_tasks),
            "tether.TaskGroup.go + exit": lambda: tether_tg_tasks(n_tasks),
        },
        repeats,
    )
    rows.append(
        row(
            "C2",
            f"asyncio task start + completion, per task ({n_tasks} no-op tasks)",
            res,
            "tether.TaskGroup.go + exit",
            "asyncio.TaskGroup.create_task + exit",
            1.3,
        )
    )
    res = measure(
        {
            "asyncio.TaskGroup.create_task (call only)": lambda: asyncio_tg_spawn(n_tasks),
            "tether.TaskGroup.go (call only)": lambda: tether_tg_spawn(n_tasks),
        },
        repeats,
    )
    rows.append(
        row(
            "C2s",
            "asyncio task start only (the call), per task",
            res,
            "tether.TaskGroup.go (call only)",
            "asyncio.TaskGroup.create_task (call only)",
            1.3,
        )
    )
    res = measure(
        {
            "threading.Semaphore.acquire(blocking=False)": lambda: semaphore_free(n_ops),
            "tether.Limiter.try_acquire": lambda: limiter_free(n_ops),
            "empty loop": lambda: empty_loop(n_ops),
        },
        repeats,
    )
    loop_ns = min(res["empty loop"])
    c3 = row(
        "C3",
        "Limiter.try_acquire with a free slot, per call",
        res,
        "tether.Limiter.try_acquire",
        "threading.Semaphore.acquire(blocking=False)",
        None,
    )
    ta = min(res["tether.Limiter.try_acquire"])
    print(
        f"       try_acquire = {ta * 1e9:.0f} ns per call, loop included "
        f"({(ta - loop_ns) * 1e9:.0f} ns without it); target <= 200 ns"
        f"{'  ok' if ta <= 200e-9 else '  OVER TARGET'}"
    )
    c3["target_ns"] = 200
    rows.append(c3)
    res = measure(
        {
            "threading.Semaphore.acquire(blocking=False) (none free)": lambda: semaphore_shed(
                n_ops
            ),
            "tether.Limiter.try_acquire (none free)": lambda: limiter_shed(n_ops),
        },
        repeats,
    )
    rows.append(
        row(
            "C3s",
            "Limiter.try_acquire shedding (no slot free), per call",
            res,
            "tether.Limiter.try_acquire (none free)",
            "threading.Semaphore.acquire(blocking=False) (none free)",
            None,
        )
    )
    rows.append(fan)
    res = measure(
        {
            "await asyncio.to_thread(fn)": lambda: to_thread_asyncio(n_thr),
            "await tether.to_thread(ctx, fn)": lambda: to_thread_tether(n_thr),
        },
        repeats,
    )
    rows.append(
        row(
            "C5",
            "to_thread round trip, per call",
            res,
            "await tether.to_thread(ctx, fn)",
            "await asyncio.to_thread(fn)",
            None,
        )
    )
    print("Summary")
    for r in rows:
        tgt = r["target"]
        extra = f" target {tgt}x" if tgt else ""
        print(f"  {r['id']:<4} {r['ratio']:.2f}x{extra}")
    if args.json:
        args.json.write_text(json.dumps({"quick": q, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
