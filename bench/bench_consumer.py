"""Consumer throughput on Redis Streams: tether's Consumer vs a hand-written loop.

Run: ``python bench/bench_consumer.py [--quick] [--json PATH] [--url redis://...]
[--only Q1,Q2,Q3]``, or ``--instr [--base-src OTHER/src]`` for row Q1 in instructions
per message (callgrind; steady where msg/s is not).

Both sides consume the same number of entries from a fresh stream through a consumer
group on the same Redis, with a no-op coroutine handler, interleaved, several repeats;
the best (highest) throughput of each is reported with the median beside it, and the
ratio is tether's best over the peer's best. Rows:

- Q1  ``Consumer`` (concurrency 1, prefetch 100) vs a loop of ``XREADGROUP COUNT 100``
      + handler per entry + one ``XACK`` per batch                      target >= 0.80
- Q2  ``Consumer`` with concurrency 8 vs the same loop                   (no target)
- Q3  ``Consumer`` with a plain-function handler (run by ``tether.to_thread``), vs the
      loop calling ``asyncio.to_thread`` per entry                     (no target)
- Q4  both with a coroutine handler that suspends once (``await asyncio.sleep(0)``), as
      one doing I/O does: messages then finish one loop iteration apart (no target)

What the Consumer does per message that the loop does not: a context with its own
deadline and ``REQUEST_ID``, an ``async with`` scope that can interrupt the handler,
retry bookkeeping, and acks flushed by a separate task (batched while a flush is in
flight). The loop does none of that; the ratio is the price of it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import tether
from tether import lifecycle

HERE = Path(__file__).resolve().parent


async def fill(r: Any, stream: str, n: int) -> None:
    await r.xgroup_create(stream, "g", id="0", mkstream=True)
    for start in range(0, n, 1000):
        p = r.pipeline(transaction=False)
        for i in range(start, min(n, start + 1000)):
            p.xadd(stream, {"n": str(i)})
        await p.execute()


async def anoop(ctx: Any, msg: Any) -> None:
    pass


async def aio(ctx: Any, msg: Any) -> None:
    await asyncio.sleep(0)  # suspends once, as a handler doing I/O does


def noop(ctx: Any, msg: Any) -> None:
    pass


async def hand_loop(
    url: str, stream: str, n: int, threaded: bool, *, filled: bool = False, suspend: bool = False
) -> tuple[float, float]:
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(url)
    try:
        if not filled:
            await fill(r, stream, n)
        done = 0
        t0, c0 = time.perf_counter(), time.process_time()
        while done < n:
            resp = await r.xreadgroup("g", "c", {stream: ">"}, count=100, block=100)
            if not resp:
                continue
            entries = resp[0][1]
            for e in entries:
                if threaded:
                    await asyncio.to_thread(noop, None, e)
                elif suspend:
                    await aio(None, e)
                else:
                    await anoop(None, e)
            await r.xack(stream, "g", *[e[0] for e in entries])
            done += len(entries)
        return n / (time.perf_counter() - t0), (time.process_time() - c0) / n * 1e6
    finally:
        await r.delete(stream)
        await r.aclose()


async def tether_consumer(
    url: str,
    stream: str,
    n: int,
    concurrency: int,
    threaded: bool,
    *,
    filled: bool = False,
    suspend: bool = False,
) -> tuple[float, float]:
    import redis.asyncio as aioredis

    from tether.integrations.redis_streams import RedisStreamSource

    r = aioredis.Redis.from_url(url)
    try:
        if not filled:
            await fill(r, stream, n)
        all_acked = asyncio.Event()
        acked = 0

        class Counting(RedisStreamSource):
            async def ack(self, ctx: Any, messages: Any) -> None:
                nonlocal acked
                await super().ack(ctx, messages)
                acked += len(messages)
                if acked >= n:
                    all_acked.set()

        src = Counting(r, stream, "g", "c", block=0.1)
        c = lifecycle.Consumer(
            src,
            noop if threaded else aio if suspend else anoop,
            concurrency=concurrency,
            prefetch=100,
        )
        ctx, cancel = tether.with_cancel(tether.background())
        t0, c0 = time.perf_counter(), time.process_time()
        task = asyncio.ensure_future(c.run(ctx))
        await all_acked.wait()
        elapsed = time.perf_counter() - t0
        cpu = (time.process_time() - c0) / n * 1e6
        cancel()
        await task
        return n / elapsed, cpu
    finally:
        await r.delete(stream)
        await r.aclose()


async def measure(
    url: str, n: int, repeats: int, only: set[str] | None = None
) -> list[dict[str, Any]]:
    rows = [
        ("Q1", "Consumer concurrency=1 vs XREADGROUP/XACK loop", 1, False, False, 0.80),
        ("Q2", "Consumer concurrency=8 vs XREADGROUP/XACK loop", 8, False, False, None),
        ("Q3", "Consumer sync handler (to_thread) vs loop + to_thread", 1, True, False, None),
        ("Q4", "Consumer, a handler that suspends once, vs the loop", 1, False, True, None),
    ]
    out = []
    for rid, what, conc, threaded, suspend, target in rows:
        if only is not None and rid not in only:
            continue
        ours: list[float] = []
        peer: list[float] = []
        ours_cpu: list[float] = []
        peer_cpu: list[float] = []
        m = n // 4 if threaded else n
        for _ in range(repeats):
            tag = uuid.uuid4().hex[:8]
            rate, cpu = await hand_loop(url, f"bench.{tag}.p", m, threaded, suspend=suspend)
            peer.append(rate)
            peer_cpu.append(cpu)
            rate, cpu = await tether_consumer(
                url, f"bench.{tag}.t", m, conc, threaded, suspend=suspend
            )
            ours.append(rate)
            ours_cpu.append(cpu)
        row = {
            "id": rid,
            "what": what,
            "unit": "msg/s",
            "tether": max(ours),
            "tether_median": statistics.median(ours),
            "peer": max(peer),
            "peer_median": statistics.median(peer),
            "ratio": max(ours) / max(peer),
            "paired_median_ratio": statistics.median(o / p for o, p in zip(ours, peer)),
            "target": target,
            "tether_cpu_us_per_msg": min(ours_cpu),
            "peer_cpu_us_per_msg": min(peer_cpu),
            "cpu_ratio": min(peer_cpu) / min(ours_cpu),
            "messages": m,
        }
        out.append(row)
        ok = "" if target is None else ("  OK" if row["ratio"] >= target else "  MISSED")
        print(
            f"{rid}  {what}\n"
            f"    tether {row['tether']:>9.0f} msg/s (median {row['tether_median']:.0f})   "
            f"peer {row['peer']:>9.0f} msg/s (median {row['peer_median']:.0f})   "
            f"ratio {row['ratio']:.2f} (paired median {row['paired_median_ratio']:.2f})"
            + ("" if target is None else f" (target >= {target:.2f}){ok}")
            + f"\n    client CPU per message: tether {row['tether_cpu_us_per_msg']:.1f} us, "
            f"peer {row['peer_cpu_us_per_msg']:.1f} us (peer/tether {row['cpu_ratio']:.2f})"
        )
    return out


def _instructions(kind: str, n: int, src: str, url: str) -> float:
    """Client instructions per message (callgrind: runs of n and 2n, difference / n)."""
    import redis

    counts = []
    for k in (n, 2 * n):
        # the stream is filled here, outside callgrind: only the consuming is counted
        stream = f"bench.instr.{uuid.uuid4().hex[:8]}"
        r = redis.Redis.from_url(url)
        r.xgroup_create(stream, "g", id="0", mkstream=True)
        for start in range(0, k, 1000):
            p = r.pipeline(transaction=False)
            for i in range(start, min(k, start + 1000)):
                p.xadd(stream, {"n": str(i)})
            p.execute()
        r.close()
        out = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--callgrind-out-file=/dev/null",
                sys.executable,
                str(HERE / "_consumer_instr.py"),
                kind,
                str(k),
                stream,
                src,
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=1800,
        )
        line = next(x for x in out.stderr.splitlines() if "Collected" in x)
        counts.append(int(line.split()[-1]))
    return (counts[1] - counts[0]) / n


def instr_main(base_src: str | None, n: int, url: str) -> None:
    """Row Q1 in instructions per message: tether (this tree, and ``base_src``), the loop."""
    here = str(HERE.parent / "src")
    t = _instructions("tether", n, here, url)
    b = _instructions("tether", n, base_src, url) if base_src else float("nan")
    p = _instructions("loop", n, here, url)
    print(f"{'row':4} {'tether':>10} {'tether base':>12} {'loop':>10} {'loop/tether':>12}")
    print(f"Q1   {t:10,.0f} {b:12,.0f} {p:10,.0f} {p / t:12.2f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="a smoke run: few messages")
    ap.add_argument("--json", type=Path, help="write the rows here")
    ap.add_argument("--url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--messages", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--only", default="Q1,Q2,Q3,Q4", help="rows to run, comma-separated")
    ap.add_argument(
        "--instr",
        action="store_true",
        help="row Q1 in client instructions per message (callgrind), then exit",
    )
    ap.add_argument("--base-src", help="with --instr: another tree's src/ to count too")
    a = ap.parse_args()
    if a.instr:
        instr_main(a.base_src, a.messages or (1_000 if a.quick else 4_000), a.url)
        return
    n = a.messages or (500 if a.quick else 20_000)
    repeats = a.repeats or (1 if a.quick else 7)
    print(
        f"bench_consumer: {n} messages x {repeats} repeats, Python "
        f"{platform.python_version()}, {platform.machine()}, Redis at {a.url}"
    )
    rows = asyncio.run(measure(a.url, n, repeats, set(a.only.split(","))))
    print("Summary")
    for r in rows:
        print(f"  {r['id']}: ratio {r['ratio']:.2f}")
    if a.json:
        a.json.write_text(json.dumps({"rows": rows}, indent=2))


if __name__ == "__main__":
    main()
