"""The consumer's per-message hot path (a coroutine handler's first attempt, issue 10):
one context node per message carrying the deadline and the values, the handler's first
step driven without a task, the in-hand count without a heartbeat, and acks that reach
the broker while the consumer runs (not only at the stop)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

import tether
from lifehelp import run_consumer_until
from tether import _observe
from tether.lifecycle import WORKER, Consumer, Message, RetryPolicy
from tether.propagation import extract


class Queue:
    """An in-process, unordered source: ``n`` messages, acks recorded per call."""

    name = "queue"
    ordered_acks = False

    def __init__(self, n: int, *, heartbeat: float | None = None, ack_delay: float = 0) -> None:
        self.heartbeat = heartbeat
        self.todo = [Message(f"m{i}", i, raw=i) for i in range(n)]
        self.ack_calls: list[list[str]] = []
        self.released: list[str] = []
        self.ack_delay = ack_delay

    @property
    def acked(self) -> list[str]:
        return [i for call in self.ack_calls for i in call]

    async def open(self, ctx: tether.Context) -> None:
        pass

    async def fetch(self, ctx: tether.Context, max_messages: int) -> Sequence[Message]:
        await asyncio.sleep(0)
        batch, self.todo = self.todo[:max_messages], self.todo[max_messages:]
        if not batch:
            await asyncio.sleep(0.005)
        return batch

    async def ack(self, ctx: tether.Context, messages: Sequence[Message]) -> None:
        if self.ack_delay:
            await asyncio.sleep(self.ack_delay)
        self.ack_calls.append([m.id for m in messages])

    async def release(self, ctx: tether.Context, message: Message, delay: float | None) -> None:
        self.released.append(message.id)

    async def dead_letter(
        self, ctx: tether.Context, message: Message, error: BaseException
    ) -> bool:
        return False

    async def in_progress(self, ctx: tether.Context, message: Message) -> None:
        pass

    async def close(self, ctx: tether.Context) -> None:
        pass


class Created:
    def __init__(self) -> None:
        self.seen: list[tuple[tether.Context, object, object, tuple[str, int] | None]] = []

    def on_create(self, ctx, parent, kind):
        # what the context carries at the moment it is reported, not later
        self.seen.append(
            (ctx, ctx.value(tether.REQUEST_ID), ctx.value(WORKER), _observe.creation_site(ctx))
        )

    def on_end(self, ctx, reason):
        pass


@pytest.fixture
def created():
    r = Created()
    _observe.add_observer(r)
    yield r
    _observe.remove_observer(r)


CONSUMER_PY = str(Path(tether.__file__).parent / "lifecycle" / "_consumer.py")


@pytest.mark.parametrize("timeout", [30.0, None])
def test_a_message_runs_under_one_node_with_its_values_and_deadline(created, timeout):
    got: list[tuple[object, ...]] = []

    async def handler(ctx: tether.Context, msg: Message) -> None:
        d = ctx.deadline()
        got.append(
            (
                msg.id,
                ctx.value(tether.REQUEST_ID),
                ctx.value(WORKER),
                tether.current() is ctx,
                None if d is None else round(d - time.monotonic()),
                ctx in [s[0] for s in created.seen],
            )
        )

    q = Queue(3)

    async def main() -> None:
        c = Consumer(q, handler, message_timeout=timeout, name="hot")
        await run_consumer_until(c, lambda: len(q.acked) == 3)

    asyncio.run(main())
    left = None if timeout is None else 30
    assert got == [(f"m{i}", f"m{i}", "hot", True, left, True) for i in range(3)]
    # the observer saw each message context with its values already bound, created
    # on the consumer's own line (the frame that asked for it, not tether's core)
    mine = [s for s in created.seen if s[1] is not None]
    assert [s[1:3] for s in mine] == [(f"m{i}", "hot") for i in range(3)]
    assert all(s[3] is not None and s[3][0] == CONSUMER_PY for s in mine), mine
    for ctx, *_ in mine:  # the handler's context is the owning node itself, and it
        assert ctx._c is None, ctx  # binds the request id (no with_value above it)
        assert ctx._parent is not None
        assert ctx._parent.value(tether.REQUEST_ID) is None
        assert ctx.err() is not None  # ended when its handler returned


def test_a_retried_message_gets_the_same_values_on_every_attempt(created):
    calls: list[tuple[str, object, object]] = []

    async def handler(ctx: tether.Context, msg: Message) -> None:
        calls.append((msg.id, ctx.value(tether.REQUEST_ID), ctx.value(WORKER)))
        if len(calls) < 3:
            raise ValueError("tether: test failure")

    q = Queue(1)

    async def main() -> None:
        c = Consumer(q, handler, retry=RetryPolicy(attempts=3, backoff=0), name="w")
        await run_consumer_until(c, lambda: q.acked == ["m0"])
        assert c.stats().retries == 2

    asyncio.run(main())
    assert calls == [("m0", "m0", "w")] * 3
    sites = [s[3] for s in created.seen if s[1] == "m0"]
    assert len(sites) == 3
    assert all(s is not None and s[0] == CONSUMER_PY for s in sites), sites


def test_a_handler_that_returns_a_value_without_suspending_is_acked():
    async def handler(ctx: tether.Context, msg: Message) -> str:
        return "ignored"  # not None: the first step ends with a value

    q = Queue(5)

    async def main() -> None:
        c = Consumer(q, handler)
        await run_consumer_until(c, lambda: len(q.acked) == 5)
        s = c.stats()
        assert (s.acked, s.failures, s.in_flight) == (5, 0, 0)

    asyncio.run(main())
    assert sorted(q.acked) == [f"m{i}" for i in range(5)]


def test_a_handler_that_raises_at_its_first_step_is_retried():
    seen: list[str] = []

    async def handler(ctx: tether.Context, msg: Message) -> None:
        seen.append(msg.id)
        if seen.count(msg.id) == 1:
            raise KeyError(msg.id)

    q = Queue(2)

    async def main() -> None:
        c = Consumer(q, handler, retry=RetryPolicy(attempts=2, backoff=0))
        await run_consumer_until(c, lambda: len(q.acked) == 2)
        s = c.stats()
        assert (s.acked, s.failures, s.retries, s.in_flight) == (2, 2, 2, 0)

    asyncio.run(main())
    assert seen == ["m0", "m0", "m1", "m1"]


@pytest.mark.parametrize("heartbeat", [None, 60.0])
def test_stats_count_the_message_in_hand_with_or_without_heartbeat(heartbeat):
    async def main() -> None:
        go = asyncio.Event()
        inside = asyncio.Event()

        async def handler(ctx: tether.Context, msg: Message) -> None:
            if msg.id == "m1":
                inside.set()
                await go.wait()
                raise ValueError("tether: fail once after being in hand")

        q = Queue(3, heartbeat=heartbeat)
        c = Consumer(q, handler, retry=RetryPolicy(attempts=2, backoff=0))
        ctx, cancel = tether.with_cancel(tether.background())
        task = asyncio.ensure_future(c.run(ctx))
        try:
            await asyncio.wait_for(inside.wait(), 10)
            assert c.stats().in_flight == 1
            assert "in_flight=1" in repr(c)
            go.set()
            loop = asyncio.get_running_loop()
            end = loop.time() + 10
            while len(q.acked) < 2 or c.stats().failures < 2:
                assert loop.time() < end, c.stats()
                await asyncio.sleep(0.002)
            s = c.stats()
            assert s.in_flight == 0
        finally:
            cancel()
        s = await task
        # m1 failed both attempts (go stays set) and, with no dead-letter, is released
        assert (s.acked, s.failures, s.released, s.in_flight) == (2, 2, 1, 0)
        assert q.released == ["m1"]

    asyncio.run(main())


def test_acks_reach_the_broker_while_running_when_the_flush_is_slow():
    """Acks queued while a flush is in flight go out in the next flush, not at the stop
    (the worker sets the flusher's event only when the list was empty)."""
    q = Queue(500, ack_delay=0.003)

    async def handler(ctx: tether.Context, msg: Message) -> None:
        if msg.raw % 7 == 0:
            await asyncio.sleep(0)  # some suspend: both first-step outcomes interleave

    async def main() -> None:
        c = Consumer(q, handler, prefetch=50, ack_linger=0)  # (no linger: flush at once)
        await run_consumer_until(c, lambda: len(q.acked) == 500)

    asyncio.run(main())
    assert sorted(q.acked) == sorted(f"m{i}" for i in range(500))  # each once
    assert 1 < len(q.ack_calls) < 500  # batched while a flush was in flight


def test_acks_linger_to_share_a_round_trip_and_the_stop_does_not_wait_for_it():
    """Handlers that suspend (as any doing I/O does) finish one at a time; the flusher
    waits ``ack_linger`` for more before it acks, so a run takes a few ack calls rather
    than one per message. The stop flushes at once, however long the linger."""
    q = Queue(300)
    loop_times: list[float] = []

    async def handler(ctx: tether.Context, msg: Message) -> None:
        await asyncio.sleep(0.0005)  # a little I/O
        loop_times.append(asyncio.get_running_loop().time())

    async def main() -> None:
        c = Consumer(q, handler, prefetch=50, ack_linger=0.05)
        await run_consumer_until(c, lambda: len(q.acked) == 300)

    asyncio.run(main())
    assert sorted(q.acked) == sorted(f"m{i}" for i in range(300))
    took = loop_times[-1] - loop_times[0]
    # one call per linger (plus the first), not one per message
    assert len(q.ack_calls) <= took / 0.05 + 3, (len(q.ack_calls), took)

    q2 = Queue(5)
    handled = asyncio.Event()

    async def quick(ctx: tether.Context, msg: Message) -> None:
        if msg.id == "m4":
            handled.set()

    async def stop_soon() -> float:
        c = Consumer(q2, quick, ack_linger=30.0)
        ctx, cancel = tether.with_cancel(tether.background())
        task = asyncio.ensure_future(c.run(ctx))
        await asyncio.wait_for(handled.wait(), 10)
        await asyncio.sleep(0.01)
        assert q2.acked == []  # lingering
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        cancel()
        s = await task
        assert s.acked == 5
        return loop.time() - t0

    assert asyncio.run(stop_soon()) < 1.0
    assert sorted(q2.acked) == [f"m{i}" for i in range(5)]


@pytest.mark.parametrize("bad", [-0.1, float("nan"), "1"])
def test_ack_linger_must_be_a_non_negative_number(bad):
    with pytest.raises((TypeError, ValueError), match=r"^tether: .*ack_linger"):
        Consumer(Queue(1), lambda ctx, m: None, ack_linger=bad)


def test_extract_reports_its_values_to_observers_at_creation(created):
    headers = {"x-request-id": "abc-123", "x-request-timeout": "5S"}
    ctx, cancel = extract(tether.background(), headers)
    line = test_extract_reports_its_values_to_observers_at_creation.__code__.co_firstlineno + 2
    try:
        (seen,) = [s for s in created.seen if s[0] is ctx]
        assert seen[1] == "abc-123"
        assert 0 < ctx.remaining() <= 5
        assert seen[3] == (__file__, line)  # the caller's line, as for with_timeout
        assert ctx.value(tether.REQUEST_ID) == "abc-123"
        assert ctx._c is None  # one owning node carries the values
    finally:
        cancel()


def test_heartbeat_only_for_messages_in_flight_for_the_interval():
    """``in_progress`` reaches a handler that runs past the heartbeat interval — its first
    call between one and one and a half intervals after it started, then one per half
    interval — and never a message handled in less (looks counted, no clock per
    message)."""
    every = 0.3
    calls: list[tuple[str, float]] = []

    class Beating(Queue):
        async def in_progress(self, ctx: tether.Context, message: Message) -> None:
            calls.append((message.id, asyncio.get_running_loop().time()))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        started: dict[str, float] = {}

        async def handler(ctx: tether.Context, msg: Message) -> None:
            started[msg.id] = loop.time()
            if msg.id == "m0":
                await asyncio.sleep(4 * every)  # long: beaten
            else:
                await asyncio.sleep(every / 10)  # short: never beaten

        q = Beating(20, heartbeat=every)
        c = Consumer(q, handler, concurrency=2)
        ctx, cancel = tether.with_cancel(tether.background())
        task = asyncio.ensure_future(c.run(ctx))
        try:
            end = loop.time() + 10
            while len(q.acked) < 20:
                assert loop.time() < end, c.stats()
                await asyncio.sleep(0.01)
        finally:
            cancel()
        await task
        assert {i for i, _ in calls} == {"m0"}
        first = calls[0][1] - started["m0"]
        assert every <= first <= 1.5 * every + 0.1, first  # (+0.1: a loaded machine)
        # m0 ran 4 intervals: beaten once per half interval from then to its end (5-7)
        assert 3 <= len(calls) <= 9, calls

    asyncio.run(main())
