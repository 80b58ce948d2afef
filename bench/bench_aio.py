"""tether's asyncio scopes against ``asyncio.timeout``, row by row (issue 7), in one run.

    python bench/bench_aio.py [--quick] [--repeats N] [--json out.json] [--only a,a0,...]
    python bench/bench_aio.py --instr [--base-src OTHER/src]   (callgrind, rows a, a0, b)

Rows (each measured for tether and ``asyncio.timeout``, interleaved in this process so
both see the same machine; the ratio printed is tether / asyncio, from the medians):

- a:  in a task, derive a child scope of a live parent, cancel it, observe the
      interruption (tether: ``async with with_cancel(parent)`` + ``cancel()`` + one
      ``await``; asyncio: ``async with timeout(None)`` + ``reschedule(past)`` + ``await``);
- a0: enter and leave a child scope, no cancellation;
- b:  enter and leave a 60 s deadline scope (``with_timeout(bg, 60)`` / ``timeout(60)``);
- e:  cancel a root with 10,000 tasks, each in its own scope, until all unwound;
- f:  100,000 tasks each in a scope with its own deadline: memory per task
      (``tracemalloc`` in a fresh process per side, so nothing is shared or reused);
- g:  10,000 tasks, each ``await asyncio.sleep(10)`` under a 50 ms scope: the lateness of
      each interruption after its deadline (median, p99, max) and the wall time;
- h:  (extra) one 20 ms scope at a time while another thread spins in Python: the
      lateness of each interruption (the deadline must get the GIL from that thread).

``--quick`` shrinks every row (it is what the smoke test runs).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

import tether  # noqa: E402

BG = tether.background()
_timer = time.perf_counter


# -- micro rows: per-operation time inside one task ------------------------------------


def _micro(kind: str, row: str, n: int) -> float:
    async def main() -> float:
        parent, pcancel = tether.with_cancel(BG)
        sleep0 = asyncio.sleep
        t0 = _timer()
        if row == "a" and kind == "tether":
            for _ in range(n):
                s = tether.with_cancel(parent)
                try:
                    async with s:
                        s[1]()
                        await sleep0(0)
                except tether.Canceled:
                    pass
        elif row == "a":
            for _ in range(n):
                try:
                    async with asyncio.timeout(None) as to:
                        to.reschedule(-1.0)
                        await sleep0(0)
                except TimeoutError:
                    pass
        elif row == "a0" and kind == "tether":
            wc = tether.with_cancel
            for _ in range(n):
                async with wc(parent):
                    pass
        elif row == "a0":
            to = asyncio.timeout
            for _ in range(n):
                async with to(None):
                    pass
        elif row == "b" and kind == "tether":
            wt = tether.with_timeout
            for _ in range(n):
                async with wt(BG, 60.0):
                    pass
        else:
            to = asyncio.timeout
            for _ in range(n):
                async with to(60.0):
                    pass
        dt = _timer() - t0
        pcancel()
        return dt / n

    return asyncio.run(main())


# -- e: cancel a root with n tasks, each in its own scope ------------------------------


def _cancel_root(kind: str, n: int) -> float:
    async def main() -> float:
        started = 0
        if kind == "tether":
            root, root_cancel = tether.with_cancel(BG)

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

        async def aworker() -> None:
            nonlocal started
            try:
                async with asyncio.timeout(3600):
                    started += 1
                    await asyncio.sleep(3600)
            except asyncio.CancelledError:
                pass

        tasks = [asyncio.create_task(aworker()) for _ in range(n)]
        while started < n:
            await asyncio.sleep(0)
        t0 = _timer()
        for t in tasks:  # what "cancel the root" is for asyncio: cancel each task
            t.cancel()
        await asyncio.gather(*tasks)
        return _timer() - t0

    return asyncio.run(main())


# -- g: n tasks under a 50 ms scope around sleep(10): lateness and wall ----------------


def _lateness(kind: str, n: int) -> tuple[list[float], float]:
    late: list[float] = []

    async def with_tether() -> None:
        s = tether.with_timeout(BG, 0.05)
        try:
            async with s as ctx:
                await asyncio.sleep(10)
        except tether.DeadlineExceeded:
            late.append(time.monotonic() - ctx.deadline())  # type: ignore[operator]

    async def with_asyncio() -> None:
        try:
            async with asyncio.timeout(0.05) as to:
                await asyncio.sleep(10)
        except TimeoutError:
            late.append(time.monotonic() - to.when())  # type: ignore[operator]

    worker = with_tether if kind == "tether" else with_asyncio

    async def main() -> float:
        t0 = _timer()
        tasks = [asyncio.create_task(worker()) for _ in range(n)]
        await asyncio.gather(*tasks)
        return _timer() - t0

    wall = asyncio.run(main())
    assert len(late) == n, (kind, len(late))
    return late, wall


# -- h: one deadline at a time while a thread keeps the GIL busy ----------------------


def _busy_lateness(kind: str, n: int) -> list[float]:
    """Lateness of n sequential 20 ms scopes while another thread spins in Python.

    The deadline must get the GIL from the spinning thread: through the timer thread and
    then the loop (two hand-offs), or through the loop's own timer (one).
    """
    late: list[float] = []
    stop = threading.Event()

    def spin() -> None:
        x = 0
        while not stop.is_set():
            for _ in range(1000):
                x += 1

    async def once() -> None:
        if kind == "tether":
            try:
                async with tether.with_timeout(BG, 0.02) as ctx:
                    await asyncio.sleep(10)
            except tether.DeadlineExceeded:
                late.append(time.monotonic() - ctx.deadline())  # type: ignore[operator]
        else:
            try:
                async with asyncio.timeout(0.02) as to:
                    await asyncio.sleep(10)
            except TimeoutError:
                late.append(time.monotonic() - to.when())  # type: ignore[operator]

    async def main() -> None:
        for _ in range(n):
            await once()
            await asyncio.sleep(0.003)

    t = threading.Thread(target=spin)
    t.start()
    try:
        asyncio.run(main())
    finally:
        stop.set()
        t.join()
    return late


# -- f: memory per task, in a fresh process --------------------------------------------

_MEM = r"""
import asyncio, sys, tracemalloc, gc
sys.path.insert(0, sys.argv[3])
import tether
kind, n = sys.argv[1], int(sys.argv[2])
BG = tether.background()
async def main():
    loop = asyncio.get_running_loop()
    never = loop.create_future()
    entered = 0
    all_in = loop.create_future()
    async def tw(d):
        nonlocal entered
        try:
            async with tether.with_timeout(BG, d):
                entered += 1
                if entered == n: all_in.set_result(None)
                await never
        except BaseException:
            pass
    async def aw(d):
        nonlocal entered
        try:
            async with asyncio.timeout(d):
                entered += 1
                if entered == n: all_in.set_result(None)
                await never
        except BaseException:
            pass
    w = tw if kind == "tether" else aw
    # a warm-up round, so that one-time allocations (the timer thread, caches) are not
    # charged to the tasks
    t = asyncio.create_task(w(3600.0)); await asyncio.sleep(0); t.cancel()
    await asyncio.gather(t, return_exceptions=True)
    entered = 0
    # a fresh future: cancelling the warm-up task cancelled the one it awaited, and tasks
    # awaiting a cancelled future would unwind at once (measuring finished tasks)
    never = loop.create_future()
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    tasks = [asyncio.create_task(w(3600.0 + i * 1e-3)) for i in range(n)]
    await all_in
    await asyncio.sleep(0)
    assert not any(t.done() for t in tasks), "tether: a task left its scope early"
    gc.collect()
    live = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    for t in tasks: t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    print((live - base) / n)
asyncio.run(main())
"""


def _memory(kind: str, n: int) -> float:
    out = subprocess.run(
        [sys.executable, "-c", _MEM, kind, str(n), str(HERE.parent / "src")],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return float(out.stdout.strip().splitlines()[-1])


# -- reporting --------------------------------------------------------------------------


def _fmt(x: float, unit: str) -> str:
    if unit == "B":
        return f"{x:,.0f} B"
    for scale, u in ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs"), (1e-9, "ns")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {u}"
    return f"{x / 1e-9:.3g} ns"


def _interleaved(fns: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            gc.collect()
            out[k].append(fn())
    return out


def _instructions(row: str, kind: str, n: int, src: str) -> float:
    """Instructions of one operation (callgrind: runs of n and 2n, difference / n)."""
    counts = []
    for k in (n, 2 * n):
        out = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--callgrind-out-file=/dev/null",
                sys.executable,
                str(HERE / "_aio_instr.py"),
                row,
                kind,
                str(k),
                src,
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=900,
            # one hash seed for every run: set and dict layouts, hence the instructions
            # of their operations, no longer vary from run to run
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )
        line = next(x for x in out.stderr.splitlines() if "Collected" in x)
        counts.append(int(line.split()[-1]))
    return (counts[1] - counts[0]) / n


def instr_main(base_src: str | None, n: int) -> int:
    """Rows a, a0, b in instructions: tether (this tree, and ``base_src``) and asyncio."""
    here = str(HERE.parent / "src")
    print(f"{'row':4} {'tether':>10} {'tether base':>12} {'asyncio':>10} {'ratio':>7}")
    for row in ("a", "a0", "b"):
        t = _instructions(row, "tether", n, here)
        b = _instructions(row, "tether", n, base_src) if base_src else float("nan")
        a = _instructions(row, "asyncio", n, here)
        print(f"{row:4} {t:10,.0f} {b:12,.0f} {a:10,.0f} {t / a:6.2f}x", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=0)
    ap.add_argument("--json")
    ap.add_argument("--only", default="a,a0,b,e,f,g,h")
    ap.add_argument(
        "--instr",
        action="store_true",
        help="rows a, a0, b in instructions per operation (callgrind), then exit",
    )
    ap.add_argument("--base-src", help="with --instr: another tree's src/ to count too")
    args = ap.parse_args(argv)
    if args.instr:
        return instr_main(args.base_src, 1_000 if args.quick else 5_000)
    rows = set(args.only.split(","))
    q = args.quick
    repeats = args.repeats or (2 if q else 7)
    n_micro = 2_000 if q else 50_000
    n_e = 1_000 if q else 10_000
    n_f = 2_000 if q else 100_000
    n_g = 1_000 if q else 10_000
    results: dict[str, dict[str, Any]] = {}

    def report(row: str, title: str, t: float, a: float, unit: str = "s", **extra: Any) -> None:
        ratio = t / a if a else float("nan")
        results[row] = {"title": title, "tether": t, "asyncio": a, "ratio": ratio, **extra}
        print(
            f"{row:3} {title:62} tether {_fmt(t, unit):>10}  asyncio {_fmt(a, unit):>10}"
            f"  ratio {ratio:5.2f}x",
            flush=True,
        )

    for row, title in (
        ("a", "derive a child scope, cancel it, observe the interruption"),
        ("a0", "enter and exit a child scope, no cancellation"),
        ("b", "enter and exit a 60 s deadline scope"),
    ):
        if row in rows:
            r = _interleaved(
                {k: (lambda k=k, row=row: _micro(k, row, n_micro)) for k in ("tether", "asyncio")},
                repeats,
            )
            report(row, title, statistics.median(r["tether"]), statistics.median(r["asyncio"]))
    if "e" in rows:
        r = _interleaved(
            {k: (lambda k=k: _cancel_root(k, n_e)) for k in ("tether", "asyncio")}, repeats
        )
        report(
            "e",
            f"cancel a root with {n_e:,} tasks in scopes, until all unwound",
            statistics.median(r["tether"]),
            statistics.median(r["asyncio"]),
        )
    if "f" in rows:
        r = _interleaved({k: (lambda k=k: _memory(k, n_f)) for k in ("tether", "asyncio")}, 1)
        report(
            "f",
            f"{n_f:,} tasks each in its own deadline scope: memory per task",
            r["tether"][0],
            r["asyncio"][0],
            unit="B",
        )
    if "g" in rows:
        lat: dict[str, list[float]] = {"tether": [], "asyncio": []}
        walls: dict[str, list[float]] = {"tether": [], "asyncio": []}
        meds: dict[str, list[float]] = {"tether": [], "asyncio": []}
        for _ in range(max(3, repeats // 2) if not q else 1):
            for k in ("tether", "asyncio"):
                gc.collect()
                late, wall = _lateness(k, n_g)
                lat[k].extend(late)
                meds[k].append(statistics.median(late))
                walls[k].append(wall)
        print(
            "    per-round median lateness (ms): "
            + "; ".join(f"{k} " + ", ".join(f"{m * 1e3:.0f}" for m in ms) for k, ms in meds.items())
        )
        stats = {}
        for k, ys in lat.items():
            xs = sorted(ys)
            stats[k] = {
                "median": statistics.median(meds[k]),
                "p99": xs[int(len(xs) * 0.99)],
                "max": xs[-1],
            }
        report(
            "g",
            f"{n_g:,} tasks x 50 ms scope around sleep(10): median lateness",
            stats["tether"]["median"],
            stats["asyncio"]["median"],
            lateness=stats,
        )
        for p in ("p99", "max"):
            print(
                f"    lateness {p:6} tether {_fmt(stats['tether'][p], 's'):>10}  "
                f"asyncio {_fmt(stats['asyncio'][p], 's'):>10}"
            )
        report(
            "g-wall",
            f"{n_g:,} tasks x 50 ms scope around sleep(10): wall time",
            statistics.median(walls["tether"]),
            statistics.median(walls["asyncio"]),
        )
    if "h" in rows:
        hl: dict[str, list[float]] = {"tether": [], "asyncio": []}
        for _ in range(1 if q else 3):
            for k, xs in hl.items():
                xs.extend(_busy_lateness(k, 10 if q else 40))
        report(
            "h",
            "one 20 ms scope at a time, a thread spinning: median lateness",
            statistics.median(hl["tether"]),
            statistics.median(hl["asyncio"]),
            p90={k: sorted(v)[int(len(v) * 0.9)] for k, v in hl.items()},
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
