"""Instructions per message of the consumer without a broker (issue 10), for callgrind.

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        python bench/_consumer_mem_instr.py KIND N [SRC]

Hands ``N`` ready ``Message``s to a no-op coroutine handler, ``KIND`` ``tether``
(``Consumer`` over an in-process source, concurrency 1, prefetch 100) or ``loop`` (a
plain loop awaiting the same handler, yielding once per batch of 100 as a fetch and an
ack would), with tether imported from ``SRC`` (default: this tree's ``src``). Run it for
N and 2N and divide the difference by N: the consumer's own instructions per message,
with no client library in the count (``bench_consumer.py --instr`` counts the Redis
client too).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

kind, n = sys.argv[1], int(sys.argv[2])
src = sys.argv[3] if len(sys.argv) > 3 else str(Path(__file__).resolve().parent.parent / "src")
sys.path.insert(0, src)

import tether  # noqa: E402
from tether.lifecycle import Consumer, Message  # noqa: E402

assert tether.__file__.startswith(src), tether.__file__

MSGS = [Message(f"{i}-0", {b"n": b"1"}, None, 1, None, f"{i}-0".encode()) for i in range(n)]


class Memory:
    name = "memory"
    ordered_acks = False
    heartbeat = None

    def __init__(self) -> None:
        self.pos = 0
        self.acked = 0
        self.all_acked = asyncio.Event()

    async def open(self, ctx: tether.Context) -> None:
        pass

    async def fetch(self, ctx: tether.Context, max_messages: int) -> Sequence[Message]:
        await asyncio.sleep(0)
        batch = MSGS[self.pos : self.pos + max_messages]
        self.pos += len(batch)
        if not batch:
            await asyncio.sleep(0.01)
        return batch

    async def ack(self, ctx: tether.Context, messages: Sequence[Message]) -> None:
        await asyncio.sleep(0)
        self.acked += len(messages)
        if self.acked >= n:
            self.all_acked.set()

    async def release(self, ctx: tether.Context, message: Message, delay: float | None) -> None:
        pass

    async def dead_letter(
        self, ctx: tether.Context, message: Message, error: BaseException
    ) -> bool:
        return False

    async def in_progress(self, ctx: tether.Context, message: Message) -> None:
        pass

    async def close(self, ctx: tether.Context) -> None:
        pass


async def anoop(ctx: Any, msg: Any) -> None:
    pass


async def main() -> None:
    if kind == "loop":
        pos = 0
        while pos < n:
            await asyncio.sleep(0)  # the fetch
            batch = MSGS[pos : pos + 100]
            pos += len(batch)
            for m in batch:
                await anoop(None, m)
            await asyncio.sleep(0)  # the ack
        return
    if kind != "tether":
        raise SystemExit(f"tether: KIND is tether or loop, got {kind!r}")
    source = Memory()
    c = Consumer(source, anoop, prefetch=100)
    ctx, cancel = tether.with_cancel(tether.background())
    task = asyncio.ensure_future(c.run(ctx))
    await source.all_acked.wait()
    cancel()
    await task


asyncio.run(main())
