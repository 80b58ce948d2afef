"""The consumer API as users write it, checked by ``mypy --strict`` (and run: it needs no
broker, its source is an in-process list)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import tether
from tether import lifecycle


class ListSource:
    name = "list"
    ordered_acks = False
    heartbeat: float | None = None

    def __init__(self, items: list[bytes]) -> None:
        self.items = items
        self.acked: list[str] = []

    async def open(self, ctx: tether.Context) -> None:
        pass

    async def fetch(self, ctx: tether.Context, max_messages: int) -> Sequence[lifecycle.Message]:
        batch, self.items = self.items[:max_messages], self.items[max_messages:]
        if not batch:
            await tether.asleep(ctx, 0.01)
        return [lifecycle.Message(str(i), b) for i, b in enumerate(batch)]

    async def ack(self, ctx: tether.Context, messages: Sequence[lifecycle.Message]) -> None:
        self.acked.extend(m.id for m in messages)

    async def release(
        self, ctx: tether.Context, message: lifecycle.Message, delay: float | None
    ) -> None:
        pass

    async def dead_letter(
        self, ctx: tether.Context, message: lifecycle.Message, error: BaseException
    ) -> bool:
        return False

    async def in_progress(self, ctx: tether.Context, message: lifecycle.Message) -> None:
        pass

    async def close(self, ctx: tether.Context) -> None:
        pass


async def handle(ctx: tether.Context, msg: lifecycle.Message) -> None:
    rid: str | None = ctx.value(tether.REQUEST_ID)
    assert rid == msg.id


async def main() -> int:
    source = ListSource([b"a", b"b", b"c"])
    policy = lifecycle.RetryPolicy(attempts=2, backoff=0.01)
    consumer = lifecycle.Consumer(source, handle, message_timeout=5, concurrency=2, retry=policy)
    with tether.with_timeout(tether.background(), 0.3) as ctx:
        stats: lifecycle.ConsumerStats = await consumer.run(ctx)
    return stats.acked


if __name__ == "__main__":
    print("acked", asyncio.run(main()))
