"""tether.lifecycle.Consumer on a real NATS JetStream (127.0.0.1:4222): durable pull
consumer, ack, nak on release, in_progress heartbeats for long handlers, dead-letter."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from tests.conftest import require_service

import tether
from lifehelp import run_consumer_until
from tether.lifecycle import Consumer, Message, RetryPolicy

nats = pytest.importorskip("nats")

from tether.integrations.nats import JetStreamSource  # noqa: E402

URL = "nats://127.0.0.1:4222"


@pytest.fixture(autouse=True)
def _nats_up() -> None:
    require_service("127.0.0.1", 4222, "NATS (JetStream)")


@pytest.fixture
def names():
    """A fresh stream (subject ``<tag>.in``) and a dead-letter stream (``<tag>.dead``)."""
    tag = "t" + uuid.uuid4().hex[:10]
    n = {"stream": tag.upper(), "dead_stream": tag.upper() + "_DEAD", "subject": f"{tag}.in"}
    n["dead"] = f"{tag}.dead"

    async def make() -> None:
        nc = await nats.connect(URL)
        try:
            js = nc.jetstream()
            await js.add_stream(name=n["stream"], subjects=[n["subject"]])
            await js.add_stream(name=n["dead_stream"], subjects=[n["dead"]])
        finally:
            await nc.close()

    asyncio.run(make())
    yield n

    async def drop() -> None:
        nc = await nats.connect(URL)
        try:
            js = nc.jetstream()
            for s in (n["stream"], n["dead_stream"]):
                try:
                    await js.delete_stream(s)
                except Exception:
                    pass
        finally:
            await nc.close()

    asyncio.run(drop())


async def produce(subject: str, n: int) -> None:
    nc = await nats.connect(URL)
    try:
        js = nc.jetstream()
        for i in range(n):
            await js.publish(subject, str(i).encode())
    finally:
        await nc.close()


async def consumer_state(stream: str, durable: str) -> Any:
    nc = await nats.connect(URL)
    try:
        return await nc.jetstream().consumer_info(stream, durable)
    finally:
        await nc.close()


def source(n: dict[str, str], **kw: Any) -> JetStreamSource:
    kw.setdefault("fetch_timeout", 0.2)
    return JetStreamSource(URL, n["stream"], "workers", subject=n["subject"], **kw)


def test_every_message_is_handled_with_its_id_and_acked(names):
    seen: dict[str, str | None] = {}

    async def handler(ctx: tether.Context, msg: Message) -> None:
        seen[msg.id] = ctx.value(tether.REQUEST_ID)
        assert msg.deliveries == 1

    async def main() -> None:
        await produce(names["subject"], 30)
        c = Consumer(source(names), handler, concurrency=3)
        stats = await run_consumer_until(c, lambda: c.stats().acked == 30)
        assert stats.acked == 30
        assert sorted(seen) == sorted(f"{names['stream']}:{i}" for i in range(1, 31))
        assert all(k == v for k, v in seen.items())
        info = await consumer_state(names["stream"], "workers")
        assert info.num_ack_pending == 0
        assert info.num_pending == 0

    asyncio.run(main())


def test_retries_used_up_go_to_the_dead_letter_subject_and_are_acked(names):
    async def handler(ctx: tether.Context, msg: Message) -> None:
        if msg.data == b"1":
            raise ValueError("poison")

    async def main() -> None:
        await produce(names["subject"], 3)
        c = Consumer(
            source(names, dead_letter=names["dead"]),
            handler,
            retry=RetryPolicy(attempts=2, backoff=0.01),
        )
        stats = await run_consumer_until(c, lambda: c.stats().acked + c.stats().dead_lettered == 3)
        assert (stats.acked, stats.dead_lettered) == (2, 1)
        nc = await nats.connect(URL)
        try:
            js = nc.jetstream()
            m = await js.get_msg(names["dead_stream"], 1)
            assert m.data == b"1"
            assert m.headers["Tether-Id"] == f"{names['stream']}:2"
            assert "poison" in m.headers["Tether-Error"]
        finally:
            await nc.close()
        info = await consumer_state(names["stream"], "workers")
        assert info.num_ack_pending == 0

    asyncio.run(main())


def test_a_released_message_is_nakked_and_redelivered(names):
    deliveries: list[int | None] = []

    async def handler(ctx: tether.Context, msg: Message) -> None:
        deliveries.append(msg.deliveries)
        if len(deliveries) == 1:
            raise ValueError("first time fails")

    async def main() -> None:
        await produce(names["subject"], 1)
        # one attempt per delivery and no dead-letter: the failure naks it, NATS redelivers
        c = Consumer(source(names), handler, retry=RetryPolicy(attempts=1, backoff=0.05))
        stats = await run_consumer_until(c, lambda: c.stats().acked == 1)
        assert deliveries == [1, 2]
        assert (stats.released, stats.acked) == (1, 1)

    asyncio.run(main())


def test_a_long_handler_is_kept_alive_with_in_progress(names):
    deliveries: list[int | None] = []

    async def handler(ctx: tether.Context, msg: Message) -> None:
        deliveries.append(msg.deliveries)
        await asyncio.sleep(2.5)  # 2.5 x ack_wait: redelivered without heartbeats

    async def main() -> None:
        await produce(names["subject"], 1)
        c = Consumer(source(names, ack_wait=1.0), handler, concurrency=2)
        stats = await run_consumer_until(c, lambda: c.stats().acked == 1)
        await asyncio.sleep(1.2)  # a redelivery would show up now
        assert deliveries == [1]
        assert stats.acked == 1
        info = await consumer_state(names["stream"], "workers")
        assert info.num_redelivered == 0

    asyncio.run(main())


def test_the_nats_server_gone_fails_open_with_its_error():
    async def main() -> None:
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()

        async def handler(ctx: tether.Context, msg: Message) -> None:
            raise AssertionError("never called")

        gone = f"nats://127.0.0.1:{port}"
        fail_fast = JetStreamSource(
            gone,
            "S",
            "d",
            connect_options={"max_reconnect_attempts": 1, "reconnect_time_wait": 0.05},
        )
        with pytest.raises(nats.errors.NoServersError):
            await Consumer(fail_fast, handler).run(tether.background())
        # by default open() waits for the server: until the consumer's context ends
        c = Consumer(JetStreamSource(gone, "S", "d"), handler)
        with tether.with_timeout(tether.background(), 0.5) as ctx:
            t0 = time.monotonic()
            stats = await c.run(ctx)
        assert 0.4 < time.monotonic() - t0 < 5
        assert (stats.state, stats.fetched) == ("stopped", 0)

    asyncio.run(main())


def test_misuse():
    with pytest.raises(TypeError, match=r"^tether: client must be a connected nats client"):
        JetStreamSource(3, "S", "d")
    with pytest.raises(TypeError, match=r"^tether: stream must be a non-empty str"):
        JetStreamSource(URL, "", "d")
    with pytest.raises(ValueError, match=r"^tether: dead_letter must differ"):
        JetStreamSource(URL, "S", "d", subject="a", dead_letter="a")
    with pytest.raises(ValueError, match=r"^tether: max_deliver must be"):
        JetStreamSource(URL, "S", "d", max_deliver=0)

    async def fetch_first() -> None:
        src = JetStreamSource(URL, "S", "d")
        with pytest.raises(RuntimeError, match=r"^tether: JetStreamSource.fetch before open"):
            await src.fetch(tether.background(), 1)

    asyncio.run(fetch_first())


def test_a_dead_letter_subject_no_stream_captures_releases_the_message(names):
    deliveries: list[int | None] = []

    async def handler(ctx: tether.Context, msg: Message) -> None:
        deliveries.append(msg.deliveries)
        if len(deliveries) == 1:
            raise ValueError("fails once")

    async def main() -> None:
        await produce(names["subject"], 1)
        src = source(names, dead_letter=f"{names['subject']}.nowhere")
        c = Consumer(src, handler, retry=RetryPolicy(attempts=1, backoff=0.01))
        stats = await run_consumer_until(c, lambda: c.stats().acked == 1)
        # publishing to the dead-letter subject failed (no stream): released, not acked,
        # so JetStream delivered it again
        assert (stats.dead_lettered, stats.released, stats.acked) == (0, 1, 1)
        assert deliveries == [1, 2]

    asyncio.run(main())
