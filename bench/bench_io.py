"""Real I/O benchmark: what ``bind`` costs per query, against the bare query, same run.

Run: ``python bench/bench_io.py [--quick] [--json PATH]``

Each row times the bare operation and the same operation inside a ``bind`` block,
interleaved (bare, bound, bare, bound, ...), ``repeats`` times; the figure is the best
(minimum) per-operation time of the repeats, the median beside it. The overhead is
bound minus bare, in microseconds; the ratio is bound over bare.

- S1  sqlite3 point query (``SELECT v FROM t WHERE k = ?``, 1,000 rows, in memory), one
      ``with bind(ctx, conn)`` per query, ctx with a deadline     target overhead <= 10 us
- S2  the same with ``tether.background()`` (no deadline: the progress handler only
      checks ``err()``)                                                      (no target)
- S3  sqlite3 scan of 200,000 rows (``SELECT sum(...)`` over a recursive CTE): the
      progress handler's cost while a long statement runs                   (no target)
- R1  Redis ``GET`` through a bound view vs the client (skipped if Redis is down)
- P1  psycopg ``SELECT 1`` in ``with bind(ctx, conn)`` vs bare (skipped if PostgreSQL
      is down)

The machine is whatever runs this; docs/benchmarks.md says which produced its figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import socket
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import tether
from tether.integrations import sqlite3 as tsqlite

TIMER = time.perf_counter


def reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def measure(
    pairs: dict[str, Callable[[int], float]], n: int, repeats: int
) -> dict[str, list[float]]:
    """Seconds per operation, per case, interleaved over the repeats."""
    out: dict[str, list[float]] = {k: [] for k in pairs}
    for fn in pairs.values():
        fn(max(1, n // 10))  # warm-up
    for r in range(repeats):
        order = list(pairs.items())
        order = order[r % len(order) :] + order[: r % len(order)]
        for name, fn in order:
            gc.collect()
            out[name].append(fn(n) / n)
    return out


def row(
    rid: str, what: str, res: dict[str, list[float]], target_us: float | None
) -> dict[str, Any]:
    bare, bound = min(res["bare"]), min(res["bound"])
    over = (bound - bare) * 1e6
    r = {
        "id": rid,
        "what": what,
        "bare_us": bare * 1e6,
        "bound_us": bound * 1e6,
        "bare_median_us": statistics.median(res["bare"]) * 1e6,
        "bound_median_us": statistics.median(res["bound"]) * 1e6,
        "overhead_us": over,
        "ratio": bound / bare,
        "target_us": target_us,
    }
    mark = "" if target_us is None else ("  ok" if over <= target_us else "  MISSED")
    tgt = "" if target_us is None else f"  target <= {target_us:g} us{mark}"
    print(
        f"{rid:<3} {what:<52} bare {bare * 1e6:8.2f} us  bound {bound * 1e6:8.2f} us  "
        f"+{over:6.2f} us  x{bound / bare:5.2f}{tgt}"
    )
    return r


def sqlite_rows(n: int, repeats: int) -> list[dict[str, Any]]:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", ((i, f"v{i}") for i in range(1000)))
    conn.commit()
    q = "SELECT v FROM t WHERE k = ?"
    rows = []

    def bare(k: int) -> float:
        ex = conn.execute
        t0 = TIMER()
        for i in range(k):
            ex(q, (i % 1000,)).fetchone()
        return TIMER() - t0

    def bound_with(ctx: tether.Context) -> Callable[[int], float]:
        def bound(k: int) -> float:
            ex = conn.execute
            b = tsqlite.bind
            t0 = TIMER()
            for i in range(k):
                with b(ctx, conn):
                    ex(q, (i % 1000,)).fetchone()
            return TIMER() - t0

        return bound

    with tether.with_timeout(tether.background(), 3600) as ctx:
        res = measure({"bare": bare, "bound": bound_with(ctx)}, n, repeats)
        rows.append(row("S1", "sqlite3 point query, ctx with a deadline", res, 10.0))
    res = measure({"bare": bare, "bound": bound_with(tether.background())}, n, repeats)
    rows.append(row("S2", "sqlite3 point query, background()", res, None))

    scan = (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 200000) "
        "SELECT sum(x) FROM c"
    )

    def scan_bare(k: int) -> float:
        t0 = TIMER()
        for _ in range(k):
            conn.execute(scan).fetchone()
        return TIMER() - t0

    with tether.with_timeout(tether.background(), 3600) as ctx:

        def scan_bound(k: int) -> float:
            t0 = TIMER()
            for _ in range(k):
                with tsqlite.bind(ctx, conn):
                    conn.execute(scan).fetchone()
            return TIMER() - t0

        res = measure({"bare": scan_bare, "bound": scan_bound}, max(3, n // 2000), repeats)
        rows.append(row("S3", "sqlite3 200,000-row CTE (progress handler)", res, None))
    conn.close()
    return rows


def redis_row(n: int, repeats: int) -> list[dict[str, Any]]:
    if not reachable(6379):
        print("R1  skipped: Redis is not reachable on 127.0.0.1:6379")
        return []
    import redis

    from tether.integrations import redis as tredis

    client = redis.Redis(host="127.0.0.1", port=6379)
    key = f"tether-bench-{os.getpid()}"
    client.set(key, "x")
    try:
        with tether.with_timeout(tether.background(), 3600) as ctx, tredis.bind(ctx, client) as r:

            def bare(k: int) -> float:
                t0 = TIMER()
                for _ in range(k):
                    client.get(key)
                return TIMER() - t0

            def bound(k: int) -> float:
                t0 = TIMER()
                for _ in range(k):
                    r.get(key)
                return TIMER() - t0

            res = measure({"bare": bare, "bound": bound}, max(50, n // 5), repeats)
            return [row("R1", "Redis GET, bound view vs client (loopback)", res, None)]
    finally:
        client.delete(key)
        client.close()


def psycopg_row(n: int, repeats: int) -> list[dict[str, Any]]:
    if not reachable(5432):
        print("P1  skipped: PostgreSQL is not reachable on 127.0.0.1:5432")
        return []
    import psycopg

    from tether.integrations import psycopg as tpsy

    dsn = "host=127.0.0.1 user=postgres dbname=test"
    with (
        psycopg.connect(dsn, autocommit=True) as conn,
        tether.with_timeout(tether.background(), 3600) as ctx,
    ):

        def bare(k: int) -> float:
            t0 = TIMER()
            for _ in range(k):
                conn.execute("SELECT 1").fetchone()
            return TIMER() - t0

        def bound(k: int) -> float:
            t0 = TIMER()
            for _ in range(k):
                with tpsy.bind(ctx, conn):
                    conn.execute("SELECT 1").fetchone()
            return TIMER() - t0

        res = measure({"bare": bare, "bound": bound}, max(50, n // 5), repeats)
        return [row("P1", "psycopg SELECT 1 in bind vs bare (loopback)", res, None)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run: few iterations")
    ap.add_argument("--json", type=Path, help="write the rows here")
    args = ap.parse_args()
    n, repeats = (500, 2) if args.quick else (20000, 7)
    print(
        f"tether bench_io: Python {platform.python_version()}, SQLite "
        f"{sqlite3.sqlite_version}, {os.cpu_count()} CPUs, n={n}, repeats={repeats}"
    )
    rows = sqlite_rows(n, repeats) + redis_row(n, repeats) + psycopg_row(n, repeats)
    print("Summary: " + ", ".join(f"{r['id']} +{r['overhead_us']:.2f} us" for r in rows))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
