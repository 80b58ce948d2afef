"""Ordered acks (Kafka's offsets), checked on a small in-process log with commit offsets:
whatever order concurrent handlers finish in, a partition's committed offset only ever
covers records whose handlers returned (or that were dead-lettered), and a released
record stops its partition's commits. The same property runs on a real Kafka-protocol
broker in test_consumer_kafka.py; this file makes the interleavings many and random."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

import pytest

import tether
from lifehelp import run_consumer_until
from tether.lifecycle import Consumer, Message, RetryPolicy


class Log:
    """An in-process partitioned log with per-partition committed offsets."""

    name = "log"
    ordered_acks = True
    heartbeat = None

    def __init__(self, partitions: int, per_partition: int, dead: bool = False) -> None:
        self.records = [(p, o) for o in range(per_partition) for p in range(partitions)]
        self.pos = 0
        self.committed: dict[int, int] = {}
        self.commit_history: list[tuple[int, int]] = []
        self.dead_letters: list[str] = []
        self.dead = dead
        self.released: list[str] = []

    async def open(self, ctx: tether.Context) -> None:
        pass

    async def fetch(self, ctx: tether.Context, max_messages: int) -> Sequence[Message]:
        await asyncio.sleep(0)
        batch = self.records[self.pos : self.pos + max_messages]
        self.pos += len(batch)
        if not batch:
            await asyncio.sleep(0.005)
        return [Message(f"{p}:{o}", o, partition=p, raw=o) for p, o in batch]

    async def ack(self, ctx: tether.Context, messages: Sequence[Message]) -> None:
        await asyncio.sleep(random.random() * 0.002)
        for m in messages:
            p = m.partition
            assert isinstance(p, int)
            # the consumer hands the next records of each partition, in order
            assert m.raw == self.committed.get(p, 0), (m.id, self.committed)
            self.committed[p] = m.raw + 1
            self.commit_history.append((p, m.raw + 1))

    async def release(self, ctx: tether.Context, message: Message, delay: float | None) -> None:
        self.released.append(message.id)

    async def dead_letter(
        self, ctx: tether.Context, message: Message, error: BaseException
    ) -> bool:
        if not self.dead:
            return False
        self.dead_letters.append(message.id)
        return True

    async def in_progress(self, ctx: tether.Context, message: Message) -> None:
        pass

    async def close(self, ctx: tether.Context) -> None:
        pass


@pytest.mark.parametrize("seed", range(5))
def test_commits_cover_only_handled_records_whatever_the_finishing_order(seed):
    rnd = random.Random(seed)
    handled: set[str] = set()

    async def handler(ctx: tether.Context, msg: Message) -> None:
        await asyncio.sleep(rnd.random() * 0.004)
        handled.add(msg.id)
        # at every moment, each committed offset covers only handled records
        for p, upto in log.committed.items():
            assert all(f"{p}:{o}" in handled for o in range(upto))

    log = Log(partitions=3, per_partition=40)

    async def main() -> None:
        c = Consumer(log, handler, concurrency=8, prefetch=16)
        await run_consumer_until(c, lambda: log.committed == {0: 40, 1: 40, 2: 40})
        assert c.stats().acked == 120

    asyncio.run(main())
    assert len(handled) == 120
    # commits never go backwards
    last: dict[int, int] = {}
    for p, off in log.commit_history:
        assert off > last.get(p, 0)
        last[p] = off


def test_a_released_record_stops_its_partition_and_no_other():
    async def handler(ctx: tether.Context, msg: Message) -> None:
        await asyncio.sleep(0.001)
        if msg.id == "1:5":
            raise ValueError("poison, and no dead-letter destination")

    log = Log(partitions=2, per_partition=20)

    async def main() -> None:
        c = Consumer(log, handler, concurrency=4, retry=RetryPolicy(attempts=1))
        await run_consumer_until(c, lambda: log.committed.get(0) == 20 and c.stats().released == 1)
        await asyncio.sleep(0.05)  # later records of partition 1 finished meanwhile
        s = c.stats()
        assert s.released == 1
        assert s.acked == 20 + 5  # partition 0 whole, partition 1 up to the poison

    asyncio.run(main())
    assert log.committed == {0: 20, 1: 5}
    assert log.released == ["1:5"]


def test_a_dead_lettered_record_moves_the_commit_point_in_order():
    async def handler(ctx: tether.Context, msg: Message) -> None:
        if msg.id == "0:3":
            raise ValueError("poison")

    log = Log(partitions=1, per_partition=10, dead=True)

    async def main() -> None:
        c = Consumer(log, handler, concurrency=3, retry=RetryPolicy(attempts=2, backoff=0.001))
        await run_consumer_until(c, lambda: log.committed.get(0) == 10)
        s = c.stats()
        assert (s.acked, s.dead_lettered) == (9, 1)

    asyncio.run(main())
    assert log.dead_letters == ["0:3"]


def test_a_stop_commits_what_was_handled_and_nothing_after_an_unfinished_record():
    async def main() -> None:
        started = asyncio.Event()

        async def handler(ctx: tether.Context, msg: Message) -> None:
            if msg.id == "0:2":
                started.set()
                await ctx.done()  # in hand at the stop; still running after the grace
                ctx.check()

        log = Log(partitions=1, per_partition=10)
        c = Consumer(log, handler, concurrency=4, grace=0.1)
        await run_consumer_until(c, started.is_set)
        assert log.committed.get(0, 0) == 2  # 0:0 and 0:1; never past 0:2
        assert "0:2" in log.released

    asyncio.run(main())


def test_cancelling_the_awaiting_task_releases_the_message_in_hand_and_flushes_acks():
    async def main() -> None:
        started = asyncio.Event()

        async def handler(ctx: tether.Context, msg: Message) -> None:
            if msg.id == "0:3":
                started.set()
                await asyncio.sleep(60)

        log = Log(partitions=1, per_partition=10)
        c = Consumer(log, handler, concurrency=2)
        task = asyncio.ensure_future(c.run(tether.background()))
        await started.wait()
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert c.stats().state == "stopped"
        assert "0:3" in log.released
        assert log.committed.get(0, 0) == 3  # 0:0..0:2 acked, nothing past 0:3

    asyncio.run(main())


def test_a_handler_that_suspends_gets_values_errors_and_its_context_back():
    """The first step of a handler runs before its interrupter is armed; what follows
    a suspension must behave exactly as a plain ``await handler(...)``."""
    seen: list[tuple[str, object]] = []

    async def handler(ctx: tether.Context, msg: Message) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        loop.call_later(0.001, fut.set_result, 41)
        got = await fut
        bad: asyncio.Future[int] = loop.create_future()
        loop.call_soon(bad.set_exception, ValueError("thrown in"))
        try:
            await bad
        except ValueError as e:
            seen.append(("caught", str(e)))
        a, b = await asyncio.gather(asyncio.sleep(0, got), asyncio.sleep(0.001, 1))
        seen.append(("sum", a + b))
        seen.append(("rid", tether.current().value(tether.REQUEST_ID) == msg.id))
        seen.append(("ctx", tether.current().err() is None and ctx.err() is None))

    log = Log(partitions=1, per_partition=1)

    async def main() -> None:
        c = Consumer(log, handler)
        await run_consumer_until(c, lambda: log.committed.get(0) == 1)

    asyncio.run(main())
    assert seen == [("caught", "thrown in"), ("sum", 42), ("rid", True), ("ctx", True)]
