"""What one open asyncio scope keeps alive: tether's ``async with`` against ``asyncio.timeout``.

    python bench/aio_census.py [--tasks N] [--json out.json] [--src OTHER/src]

``N`` tasks (default 2,000) each enter a scope and wait on a future that never
completes; with all of them suspended inside their scope, the census counts, against
the same ``N`` tasks waiting without a scope (so the task, its coroutine and the future
are not charged to the scope):

- ``tracked``: objects the cyclic collector tracks (``gc.get_objects()``), per task,
  with the types that make them up: what rows f and g of ``bench_aio.py`` pay for in
  collector passes;
- ``blocks``: memory blocks allocated (``sys.getallocatedblocks()``), per task;
- ``bytes``: bytes allocated (``tracemalloc``), per task.

Each kind is counted in a fresh process, so nothing is shared or reused between them.
Scopes: ``chain`` (``with_cancel`` of a live parent, row a0), ``deadline``
(``with_timeout(bg, 3600)``, rows b and f) and ``asyncio`` (``asyncio.timeout(3600)``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

_CHILD = r"""
import asyncio, collections, gc, json, sys, tracemalloc
sys.path.insert(0, sys.argv[3])
import tether
kind, n = sys.argv[1], int(sys.argv[2])
BG = tether.background()
parent, pcancel = tether.with_cancel(BG)

async def main():
    loop = asyncio.get_running_loop()

    # the scope is made in the task's own coroutine, as users write it (the creation
    # site tether records is that coroutine's frame)
    async def bare(box, never):
        try:
            box[0] += 1
            await never
        except asyncio.CancelledError:
            pass

    async def chain(box, never):
        try:
            async with tether.with_cancel(parent):
                box[0] += 1
                await never
        except asyncio.CancelledError:
            pass

    async def deadline(box, never):
        try:
            async with tether.with_timeout(BG, 3600.0):
                box[0] += 1
                await never
        except asyncio.CancelledError:
            pass

    async def timeout(box, never):
        try:
            async with asyncio.timeout(3600.0):
                box[0] += 1
                await never
        except asyncio.CancelledError:
            pass

    scoped_w = {"chain": chain, "deadline": deadline, "asyncio": timeout}[kind]

    async def census(with_scope):
        box = [0]
        gc.collect()
        types0 = collections.Counter(type(o).__name__ for o in gc.get_objects())
        blocks0 = sys.getallocatedblocks()
        tracemalloc.start()
        b0 = tracemalloc.get_traced_memory()[0]
        # a fresh future each round: cancelling a task cancels the future it awaits
        never = loop.create_future()
        w = scoped_w if with_scope else bare
        tasks = [asyncio.create_task(w(box, never)) for _ in range(n)]
        while box[0] < n:
            await asyncio.sleep(0)
        gc.collect()
        b1 = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        blocks1 = sys.getallocatedblocks()
        types1 = collections.Counter(type(o).__name__ for o in gc.get_objects())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks)
        del tasks
        gc.collect()
        diff = {k: (types1[k] - types0[k]) / n for k in types1 if types1[k] - types0[k] >= n / 2}
        return sum(types1.values()) - sum(types0.values()), blocks1 - blocks0, b1 - b0, diff

    await census(True)  # warm-up: one-time allocations (caches, the timer thread)
    await census(False)
    bare = await census(False)
    scoped = await census(True)
    print(json.dumps({
        "tracked": (scoped[0] - bare[0]) / n,
        "blocks": (scoped[1] - bare[1]) / n,
        "bytes": (scoped[2] - bare[2]) / n,
        "types": {k: round(v - bare[3].get(k, 0), 2) for k, v in scoped[3].items()
                  if round(v - bare[3].get(k, 0), 2)},
    }))

asyncio.run(main())
"""

KINDS = ("chain", "deadline", "asyncio")


def census(kind: str, n: int, src: str) -> dict[str, Any]:
    """The census of ``kind`` (see the module docstring) with ``n`` tasks, per task."""
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, kind, str(n), src],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=2_000)
    ap.add_argument("--json")
    ap.add_argument("--src", default=str(HERE.parent / "src"), help="tether's src/ to count")
    args = ap.parse_args(argv)
    results = {k: census(k, args.tasks, args.src) for k in KINDS}
    print(f"per open scope, {args.tasks:,} tasks, against the same tasks without a scope")
    print(f"{'scope':10} {'tracked':>8} {'blocks':>8} {'bytes':>8}  tracked objects by type")
    for k, r in results.items():
        types = ", ".join(f"{t} {v:g}" for t, v in sorted(r["types"].items()))
        print(f"{k:10} {r['tracked']:8.2f} {r['blocks']:8.2f} {r['bytes']:8.0f}  {types}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
