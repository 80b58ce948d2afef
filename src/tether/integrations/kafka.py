"""Kafka (aiokafka) as a ``tether.lifecycle.Consumer`` source: a consumer group with
manual, in-order offset commits and a dead-letter topic.

::

    from tether import lifecycle
    from tether.integrations.kafka import KafkaSource

    source = KafkaSource("localhost:9092", "orders", "billing", dead_letter="orders.dead")
    consumer = lifecycle.Consumer(source, handle_order, concurrency=8)
    sup.add("orders", consumer.run)

How each consumer duty maps onto Kafka:

- fetch: ``AIOKafkaConsumer.getmany`` (auto-commit off). Each record's ``partition`` is
  ``(topic, partition)``: Kafka acknowledges by offset, so ``ordered_acks`` is on and
  the consumer issues an ack only for a contiguous run of settled records of a
  partition, however many handlers run at once.
- ack: one ``commit({tp: last offset + 1})`` for the batch.
- release: nothing to send. A released record (retries used up with no dead-letter
  topic, or cancelled at shutdown) stops its partition's commits for the rest of the
  run: it is delivered again after a restart or a rebalance, with the records after it
  (at-least-once). Configure ``dead_letter`` so a poison record does not hold its
  partition back.
- dead_letter: ``send_and_wait`` to the dead-letter topic (same key and value; headers
  plus ``tether-error``, ``tether-id``); the consumer then commits past the record in
  order.
- heartbeat: none needed (aiokafka heartbeats on its own thread of control); keep
  ``message_timeout`` below the group's ``max_poll_interval_ms``.

Needs aiokafka (``pip install 'tether[kafka]'``).

Added in 0.1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .._context import Context, with_cancel
from ..lifecycle._common import positive_seconds
from ..lifecycle._consumer import Message

try:
    import aiokafka  # type: ignore[import-untyped]
    from aiokafka.structs import (  # type: ignore[import-untyped]
        OffsetAndMetadata,
        TopicPartition,
    )
except ImportError as e:  # pragma: no cover - exercised by test_consumer_extras
    raise ImportError(
        "tether: tether.integrations.kafka needs the 'kafka' extra: pip install 'tether[kafka]'"
    ) from e

__all__ = ["KafkaSource"]


class KafkaSource:
    """Records of ``topic`` read by consumer group ``group_id``, committed in order.

    ``bootstrap_servers`` is what aiokafka takes (``"host:port"`` or a list).
    ``dead_letter`` names the topic failed records go to (``None``: none).
    ``poll`` is the longest a fetch waits, in seconds (also the longest a stop waits for
    it). ``consumer_options`` and ``producer_options`` go to ``AIOKafkaConsumer`` and
    ``AIOKafkaProducer`` (``enable_auto_commit`` is always off; ``auto_offset_reset``
    defaults to ``"earliest"``).

    Constructing one does no I/O and needs no event loop or server. The methods are
    the ``tether.lifecycle.Source`` protocol; each is a coroutine bounded by the
    context it is given (a context that already ended raises its error before any
    round trip; one that ends meanwhile interrupts the call and raises its error), not
    thread-safe (one consumer's event loop uses it). ``ack`` (a commit never moves
    backwards past what it says), ``release``, ``in_progress`` and ``close`` are
    idempotent. They raise aiokafka's errors (``KafkaConnectionError`` when no broker
    answers; ``CommitFailedError`` after a rebalance). The constructor raises
    ``TypeError`` (starting ``tether:``) for bad arguments.

    Every method suspends only the calling task; none blocks the event loop.

    Added in 0.1.
    """

    ordered_acks = True
    heartbeat: float | None = None

    def __init__(
        self,
        bootstrap_servers: str | list[str],
        topic: str,
        group_id: str,
        *,
        dead_letter: str | None = None,
        poll: float = 1.0,
        consumer_options: dict[str, Any] | None = None,
        producer_options: dict[str, Any] | None = None,
    ) -> None:
        for what, v in (("topic", topic), ("group_id", group_id)):
            if not isinstance(v, str) or not v:
                raise TypeError(f"tether: {what} must be a non-empty str, got {v!r:.40}")
        if dead_letter is not None and (not isinstance(dead_letter, str) or not dead_letter):
            raise TypeError(f"tether: dead_letter must be a topic or None, got {dead_letter!r:.40}")
        if dead_letter == topic:
            raise ValueError("tether: dead_letter must differ from the consumed topic")
        p = positive_seconds(poll, "poll")
        assert p is not None
        self._servers = bootstrap_servers
        self.topic = topic
        self.group_id = group_id
        self.dead_letter_topic = dead_letter
        self._poll = p
        self._copts = {"auto_offset_reset": "earliest", **(consumer_options or {})}
        self._copts["enable_auto_commit"] = False
        self._popts = dict(producer_options or {})
        self.name = f"kafka:{topic}/{group_id}"
        self._consumer: Any = None
        self._producer: Any = None
        self._closed = False

    async def open(self, ctx: Context) -> None:
        """Start the group consumer (and the dead-letter producer, if any).

        Suspends for the bootstrap, bounded by ``ctx`` (an already ended one raises its
        error first). Not idempotent (call once); not thread-safe. Raises aiokafka's
        errors (``KafkaConnectionError``: no broker).

        It suspends only the calling task; it never blocks the event loop.

        Added in 0.1.
        """
        async with with_cancel(ctx):
            self._consumer = aiokafka.AIOKafkaConsumer(
                self.topic, bootstrap_servers=self._servers, group_id=self.group_id, **self._copts
            )
            await self._consumer.start()
            if self.dead_letter_topic is not None:
                self._producer = aiokafka.AIOKafkaProducer(
                    bootstrap_servers=self._servers, **self._popts
                )
                await self._producer.start()

    async def fetch(self, ctx: Context, max_messages: int) -> Sequence[Message]:
        """Up to ``max_messages`` records, waiting at most ``poll`` seconds (clamped to
        ``ctx``'s budget); ``[]`` if none came.

        Not idempotent (the consumer's position moves); not thread-safe. If ``ctx``
        already ended, returns ``[]``. Raises aiokafka's errors, ``RuntimeError``
        before ``open()``.

        It suspends only the calling task; it never blocks the event loop.

        Added in 0.1.
        """
        if ctx.err() is not None:
            return []
        if self._consumer is None:
            raise RuntimeError("tether: KafkaSource.fetch before open(); run it in a Consumer")
        left = ctx.remaining()
        wait = self._poll if left is None else max(0.001, min(self._poll, left))
        batches = await self._consumer.getmany(
            timeout_ms=int(wait * 1000), max_records=max_messages
        )
        out: list[Message] = []
        for tp, records in batches.items():
            for r in records:
                headers = {k: v.decode(errors="replace") for k, v in (r.headers or ())}
                out.append(
                    Message(
                        f"{tp.topic}:{tp.partition}:{r.offset}",
                        r.value,
                        headers=headers or None,
                        partition=(tp.topic, tp.partition),
                        raw=r,
                    )
                )
        return out

    async def ack(self, ctx: Context, messages: Sequence[Message]) -> None:
        """Commit, per partition, the offset after the last of ``messages``.

        The consumer passes, per partition, the next records in order. One round trip,
        bounded by ``ctx`` (an already ended one raises its error first); idempotent;
        not thread-safe. Raises aiokafka's errors (``CommitFailedError`` after a
        rebalance: the records are delivered again).

        It suspends only the calling task; it never blocks the event loop.

        Added in 0.1.
        """
        if not messages:
            return
        offsets: dict[Any, Any] = {}
        for m in messages:
            key: Any = m.partition
            tp = TopicPartition(key[0], key[1])
            off = m.raw.offset + 1
            if tp not in offsets or offsets[tp].offset < off:
                offsets[tp] = OffsetAndMetadata(off, "")
        async with with_cancel(ctx):
            await self._consumer.commit(offsets)

    async def release(self, ctx: Context, message: Message, delay: float | None) -> None:
        """Nothing to send: the consumer commits no further on this record's partition,
        so Kafka delivers it again after a restart or rebalance. No I/O, never blocks,
        idempotent, raises nothing (also if ``ctx`` already ended). Not thread-safe.

        Added in 0.1.
        """

    async def dead_letter(self, ctx: Context, message: Message, error: BaseException) -> bool:
        """Produce the record to the dead-letter topic and wait for the broker's ack.

        Returns ``False`` (no I/O) without a dead-letter topic. The consumer commits past
        the record afterwards, in order. Bounded by ``ctx`` (an already ended one raises
        its error first); not idempotent (a repeat produces a second copy); not
        thread-safe. Raises aiokafka's errors (then nothing is committed).

        It suspends only the calling task; it never blocks the event loop.

        Added in 0.1.
        """
        if self._producer is None:
            return False
        r = message.raw
        headers = [
            *(r.headers or ()),
            ("tether-error", repr(error)[:2000].encode()),
            ("tether-id", message.id.encode()),
        ]
        async with with_cancel(ctx):
            await self._producer.send_and_wait(
                self.dead_letter_topic, r.value, key=r.key, headers=headers
            )
        return True

    async def in_progress(self, ctx: Context, message: Message) -> None:
        """Nothing: aiokafka heartbeats the group itself. No I/O, never blocks,
        idempotent, raises nothing (also if ``ctx`` already ended). Not thread-safe.

        Added in 0.1.
        """

    async def close(self, ctx: Context) -> None:
        """Stop the consumer (leaving the group) and the producer. Idempotent; bounded by
        ``ctx`` (an already ended one skips the waits); not thread-safe. Raises nothing.

        It suspends only the calling task; it never blocks the event loop.

        Added in 0.1.
        """
        if self._closed:
            return
        self._closed = True
        for client in (self._consumer, self._producer):
            if client is None:
                continue
            try:
                async with with_cancel(ctx):
                    await client.stop()
            except Exception:  # closing anyway
                pass

    def __repr__(self) -> str:
        return (
            f"<tether.integrations.kafka.KafkaSource topic={self.topic!r} "
            f"group_id={self.group_id!r}>"
        )
