"""What issue 8's checks cost, against peers in the same run.

N1  the event-loop check that guards blocking calls (``_on_loop_thread``), off a loop
    with asyncio imported, vs calling ``asyncio._get_running_loop()`` directly (its floor).
N2  the same check on a loop's thread (where it decides to warn).
N3  ``ctx.value(key)`` on a context without values (now a lookup in one shared empty
    dict, so an unhashable key raises), a ``tether.Key`` and a str key, vs on a context
    with values.
N4  ``ctx.done().wait(0.0001)`` on a live context, off a loop (the check sits on this
    path, before blocking) vs ``threading.Event().wait(0.0001)``.
N5  ``Group.go`` + ``wait`` of 1 no-op task (``__enter__``/``wait`` now check the loop) vs
    ``ThreadPoolExecutor.submit`` + ``result``.

Run: ``python bench/bench_newcomer.py`` (``--quick`` for a smoke run). Prints one line
per row with the ratio to its peer; no figure is asserted anywhere.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import threading
import timeit

import tether
from tether import _context


def per_call(stmt, number: int, repeat: int) -> float:
    return min(timeit.repeat(stmt, number=number, repeat=repeat)) / number


def row(name: str, what: str, ours: float, peer: float, peer_name: str) -> None:
    print(
        f"{name:4} {what:58} {ours * 1e9:10.0f} ns  {peer_name:28} {peer * 1e9:10.0f} ns"
        f"  {ours / peer:6.2f}x"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    n, r = (2_000, 3) if a.quick else (200_000, 7)
    grl = asyncio._get_running_loop
    check = _context._on_loop_thread

    row(
        "N1",
        "loop check, off a loop",
        per_call(check, n, r),
        per_call(grl, n, r),
        "asyncio._get_running_loop()",
    )

    async def on_loop() -> tuple[float, float]:
        return per_call(check, n, r), per_call(grl, n, r)

    ours, peer = asyncio.run(on_loop())
    row("N2", "loop check, on a loop's thread", ours, peer, "asyncio._get_running_loop()")

    key = tether.Key[str]("k")
    plain, cancel = tether.with_cancel(tether.background())
    valued = tether.with_value(plain, key, "v")
    row(
        "N3",
        "value(Key), context without values",
        per_call(lambda: plain.value(key), n, r),
        per_call(lambda: valued.value(key), n, r),
        "value(Key), with values",
    )
    row(
        "N3s",
        "value('str'), context without values",
        per_call(lambda: plain.value("k"), n, r),
        per_call(lambda: valued.value("k"), n, r),
        "value('str'), with values",
    )
    m = max(n // 100, 50)
    ev = threading.Event()
    done = plain.done()
    row(
        "N4",
        "done().wait(0.0001), live",
        per_call(lambda: done.wait(0.0001), m, r),
        per_call(lambda: ev.wait(0.0001), m, r),
        "threading.Event().wait(0.0001)",
    )
    cancel()

    def group() -> None:
        with tether.Group(tether.background()) as g:
            g.go(lambda ctx: None)

    with concurrent.futures.ThreadPoolExecutor() as pool:
        row(
            "N5",
            "with Group: go + wait, 1 no-op task",
            per_call(group, m, r),
            per_call(lambda: pool.submit(lambda: None).result(), m, r),
            "ThreadPoolExecutor submit+result",
        )


if __name__ == "__main__":
    main()
