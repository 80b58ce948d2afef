"""Lifecycle benchmarks: what the promise costs, against the stdlib peers in the same run.

L1  WorkerPool vs concurrent.futures.ThreadPoolExecutor: no-op items through 4 workers
    (per-item cost: a context, a request id, the ledger's transition).
L2  DetachedRunner.go vs ThreadPoolExecutor.submit vs a bare threading.Thread per job:
    no-op fire-and-forget jobs, limit 8, until all are done.
L3  drain_scope(ctx) created and cancelled vs with_cancel(ctx) (the per-request cost of
    running work under the drain context).
L4  reporting: 10,000 queued items dropped at shutdown, logged and handed to
    on_unprocessed (per-item cost of "reported").

Run: ``python bench/bench_life.py`` (``--quick`` for a smoke run). Prints one line per
row with the ratio to the fastest peer; no figure is asserted anywhere.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable

import tether
from tether import lifecycle


def best(fn: Callable[[], float], repeat: int) -> float:
    return min(fn() for _ in range(repeat))


def pool_tether(n: int) -> float:
    done = threading.Semaphore(0)
    pool = lifecycle.WorkerPool(lambda ctx, i: done.release(), workers=4, queue_size=n)
    t0 = time.perf_counter()
    with tether.with_cancel(tether.background()) as ctx:
        runner = threading.Thread(target=pool.run, args=(ctx,))
        runner.start()
        for i in range(n):
            pool.submit(i)
        for _ in range(n):
            done.acquire()
    runner.join()
    return time.perf_counter() - t0


def pool_executor(n: int) -> float:
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        futs = [ex.submit(lambda i: None, i) for i in range(n)]
        for f in futs:
            f.result()
    return time.perf_counter() - t0


def detached_tether(n: int) -> float:
    runner = lifecycle.DetachedRunner(limit=8, backlog=n)
    t0 = time.perf_counter()
    for _ in range(n):
        runner.go(tether.background(), lambda ctx: None)
    runner.close(tether.background())
    return time.perf_counter() - t0


def detached_executor(n: int) -> float:
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        for _ in range(n):
            ex.submit(lambda: None)
    return time.perf_counter() - t0


def detached_threads(n: int) -> float:
    sem = threading.Semaphore(8)
    threads = []
    t0 = time.perf_counter()
    for _ in range(n):
        sem.acquire()
        t = threading.Thread(target=sem.release)
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def scope_drain(n: int) -> float:
    drain, end = tether.with_cancel(tether.background())
    ctx = lifecycle.with_drain(tether.background(), drain)
    t0 = time.perf_counter()
    for _ in range(n):
        lifecycle.drain_scope(ctx)[1]()
    took = time.perf_counter() - t0
    end()
    return took


def scope_cancel(n: int) -> float:
    ctx = tether.background()
    t0 = time.perf_counter()
    for _ in range(n):
        tether.with_cancel(ctx)[1]()
    return time.perf_counter() - t0


def report_dropped(n: int) -> float:
    log = logging.getLogger("bench.life")
    log.addHandler(logging.NullHandler())
    log.propagate = False
    got = []
    gate = threading.Event()
    pool = lifecycle.WorkerPool(
        lambda ctx, i: gate.wait(10),
        workers=1,
        queue_size=n + 1,
        drain_queue=False,
        on_unprocessed=lambda item, why: got.append(item),
        logger=log,
    )
    for i in range(n + 1):
        pool.submit(i)
    with tether.with_cancel(tether.background()) as ctx:
        runner = threading.Thread(target=pool.run, args=(ctx,))
        runner.start()
        while pool.stats().in_flight == 0:
            time.sleep(0.001)
        t0 = time.perf_counter()
    while len(got) < n:
        time.sleep(0.0005)
    took = time.perf_counter() - t0
    gate.set()
    runner.join()
    return took


def report_list(n: int) -> float:
    log = logging.getLogger("bench.life")
    got = []
    t0 = time.perf_counter()
    for i in range(n):
        log.warning("dropped %r", i)
        got.append(i)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small sizes, one repeat")
    args = ap.parse_args()
    k = 10 if args.quick else 1
    repeat = 1 if args.quick else 5
    rows = [
        (
            "L1",
            "pool, no-op items",
            20000 // k,
            pool_tether,
            [("ThreadPoolExecutor", pool_executor)],
        ),
        (
            "L2",
            "detached, no-op jobs",
            5000 // k,
            detached_tether,
            [("ThreadPoolExecutor", detached_executor), ("Thread per job", detached_threads)],
        ),
        (
            "L3",
            "drain_scope create+cancel",
            100000 // k,
            scope_drain,
            [("with_cancel", scope_cancel)],
        ),
        ("L4", "report a dropped item", 10000 // k, report_dropped, [("log + list", report_list)]),
    ]
    print(f"{'row':4} {'what':30} {'tether us/op':>13}  peers (us/op, tether/peer)")
    for row, what, n, mine, peers in rows:
        t = best(lambda: mine(n), repeat) / n * 1e6
        cells = []
        for name, fn in peers:
            p = best(lambda fn=fn: fn(n), repeat) / n * 1e6
            cells.append(f"{name} {p:.2f} ({t / p:.2f}x)")
        print(f"{row:4} {what:30} {t:13.2f}  " + "; ".join(cells))


if __name__ == "__main__":
    main()
