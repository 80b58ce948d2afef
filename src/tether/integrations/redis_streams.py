"""Redis Streams as a ``tether.lifecycle.Consumer`` source: consumer groups, acks,
recovery of what a dead consumer left pending, and a dead-letter stream.

::

    from tether import lifecycle
    from tether.integrations.redis_streams import RedisStreamSource

    source = RedisStreamSource("redis://localhost:6379/0", "orders", "billing",
                               dead_letter="orders.dead")
    consumer = lifecycle.Consumer(source, handle_order, concurrency=8)
    sup.add("orders", consumer.run)

How each consumer duty maps onto Redis:

- fetch: first this consumer's own pending entries (``XREADGROUP ... 0``: what a
  previous run under the same consumer name was given and never acked), then, every
  ``claim_every`` seconds, ``XAUTOCLAIM`` of entries other consumers left pending for
  ``claim_idle`` seconds (a consumer that died), then new entries with
  ``XREADGROUP ... > BLOCK``. ``deliveries`` is read with ``XPENDING`` for recovered
  and claimed entries (new ones are on their first delivery).
- ack: one ``XACK`` per batch. release: nothing: the entry stays pending and is
  recovered as above. heartbeat: a message whose handler has run ``claim_idle / 3``
  seconds (``claim_idle / 2`` at the latest), and then every ``claim_idle / 6``, is
  ``XCLAIM``-ed by its own consumer (``JUSTID``), which resets its idle time so nobody
  claims it from under a long handler.
- dead_letter: ``XADD`` to the dead-letter stream (the entry's fields plus
  ``tether.error``, ``tether.id``, ``tether.stream``, ``tether.group``) and ``XACK``,
  in one ``MULTI``/``EXEC`` transaction.

Needs redis-py >= 5 (``pip install 'tether[redis]'``) and Redis >= 6.2 (``XAUTOCLAIM``).

Added in 0.1.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence
from typing import Any

from .._context import Context, with_cancel
from ..lifecycle._common import non_negative_seconds, positive_seconds
from ..lifecycle._consumer import Message

try:
    import redis.asyncio as aioredis
    from redis.exceptions import ResponseError
except ImportError as e:  # pragma: no cover - exercised by test_consumer_extras
    raise ImportError(
        "tether: tether.integrations.redis_streams needs the 'redis' extra: "
        "pip install 'tether[redis]'"
    ) from e

__all__ = ["RedisStreamSource"]

_tuple_new = tuple.__new__


def _s(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


class RedisStreamSource:
    """A Redis stream read through a consumer group (``XREADGROUP``/``XACK``).

    ``client`` is a ``redis.asyncio.Redis`` (yours: not closed by ``close()``) or a URL
    (``redis://...``: the source makes a client and closes it). ``stream`` and
    ``group`` name what is consumed; the group is created at ``open()`` (with
    ``MKSTREAM``, at ``start_id``, default ``"0"``: everything in the stream) unless it
    exists. ``consumer`` names this consumer in the group; default
    ``"<hostname>-<pid>"``. Keep it stable across restarts (e.g. the pod name) to get
    this consumer's pending entries back at once on restart; a new name gets them
    after ``claim_idle`` seconds through ``XAUTOCLAIM``. ``dead_letter`` names the
    stream failed entries go to (``None``: none; they are released). ``block`` is the
    longest ``XREADGROUP BLOCK`` in seconds (also the longest a stop waits for the
    fetch); ``claim_idle`` the idle time after which an entry pending on another
    consumer is taken over (``None`` disables claiming and the heartbeat);
    ``claim_every`` how often to look for such entries.

    Constructing one does no I/O and needs no event loop or server. The methods are
    the ``tether.lifecycle.Source`` protocol; each is a coroutine bounded by the
    context it is given (a context that already ended raises its error before any
    round trip; one that ends meanwhile interrupts the command and raises its error),
    not thread-safe (one consumer's event loop uses it). ``ack``, ``release``,
    ``in_progress`` and ``close`` are idempotent. They raise redis-py's errors
    (``ConnectionError`` when the server is gone). The constructor raises
    ``TypeError``/``ValueError`` (starting ``tether:``) for bad arguments.

    Added in 0.1.
    """

    ordered_acks = False

    def __init__(
        self,
        client: aioredis.Redis | str,
        stream: str,
        group: str,
        consumer: str | None = None,
        *,
        dead_letter: str | None = None,
        block: float = 1.0,
        claim_idle: float | None = 60.0,
        claim_every: float = 10.0,
        start_id: str = "0",
        create_group: bool = True,
    ) -> None:
        if isinstance(client, str):
            self._redis: aioredis.Redis = aioredis.Redis.from_url(client)
            self._owned = True
        elif isinstance(client, aioredis.Redis):
            self._redis = client
            self._owned = False
        else:
            raise TypeError(
                "tether: client must be a redis.asyncio.Redis or a redis:// URL, got "
                f"{type(client).__name__} (a sync redis.Redis cannot serve an asyncio consumer)"
            )
        for what, v in (("stream", stream), ("group", group)):
            if not isinstance(v, str) or not v:
                raise TypeError(f"tether: {what} must be a non-empty str, got {v!r:.40}")
        if dead_letter is not None and (not isinstance(dead_letter, str) or not dead_letter):
            raise TypeError(
                f"tether: dead_letter must be a stream name or None, got {dead_letter!r}"
            )
        if dead_letter == stream:
            raise ValueError("tether: dead_letter must differ from the consumed stream")
        self.stream = stream
        self.group = group
        self.consumer = consumer if consumer else f"{socket.gethostname()}-{os.getpid()}"
        self.dead_letter_stream = dead_letter
        b = positive_seconds(block, "block")
        assert b is not None
        self._block = b
        self._claim_idle = positive_seconds(claim_idle, "claim_idle", allow_none=True)
        self._claim_every = non_negative_seconds(claim_every, "claim_every")
        self._start_id = start_id
        self._create = bool(create_group)
        self.name = f"redis:{stream}/{group}"
        self.heartbeat: float | None = None if self._claim_idle is None else self._claim_idle / 3
        self._backlog = True  # this consumer's own pending entries are read first
        self._backlog_cursor = "0"
        self._claim_cursor = "0-0"
        self._next_claim = 0.0  # time.monotonic() of the next XAUTOCLAIM sweep
        self._closed = False

    @property
    def client(self) -> aioredis.Redis:
        """The redis-py client (to produce, or for the tests). Non-blocking, thread-safe,
        idempotent (the same object every call); works before ``open()`` and after a
        context already ended. Raises nothing.

        Added in 0.1.
        """
        return self._redis

    async def open(self, ctx: Context) -> None:
        """Create the consumer group unless it exists (``XGROUP CREATE ... MKSTREAM``).

        Suspends for one round trip; idempotent (an existing group is kept, at its own
        position); bounded by ``ctx`` (an already ended one raises its error first).
        Not thread-safe. Raises redis-py's errors (``ConnectionError``: no server).

        It suspends only the calling task; it never blocks the event loop.

        Added in 0.1.
        """
        if not self._create:
            return
        async with with_cancel(ctx):
            try:
                await self._redis.xgroup_create(
                    self.stream, self.group, id=self._start_id, mkstream=True
                )
            except ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise

    async def fetch(self, ctx: Context, max_messages: int) -> Sequence[Message]:
        """Up to ``max_messages`` entries: own pending first, then claimed, then new.

        Suspends for at most ``block`` seconds (clamped to ``ctx``'s remaining budget)
        and returns ``[]`` if nothing came. Not idempotent (it moves the group's
        cursor); not thread-safe. If ``ctx`` already ended, returns ``[]`` without a
        round trip. Raises redis-py's errors.

        Added in 0.1.
        """
        if ctx.err() is not None:
            return []
        r = self._redis
        if self._backlog:
            resp: Any = await r.xreadgroup(
                self.group, self.consumer, {self.stream: self._backlog_cursor}, count=max_messages
            )
            entries = resp[0][1] if resp else []
            if entries:
                self._backlog_cursor = _s(entries[-1][0])
                return await self._with_deliveries(entries)
            self._backlog = False
        now = time.monotonic()
        if self._claim_idle is not None and now >= self._next_claim:
            res: Any = await r.xautoclaim(
                self.stream,
                self.group,
                self.consumer,
                min_idle_time=int(self._claim_idle * 1000),
                start_id=self._claim_cursor,
                count=max_messages,
            )
            self._claim_cursor = _s(res[0])
            if self._claim_cursor == "0-0":  # swept the whole pending list
                self._next_claim = now + self._claim_every
            if res[1]:
                return await self._with_deliveries(res[1])
        left = ctx.remaining()
        block = self._block if left is None else max(0.001, min(self._block, left))
        new: Any = await r.xreadgroup(
            self.group,
            self.consumer,
            {self.stream: ">"},
            count=max_messages,
            block=max(1, int(block * 1000)),
        )
        if not new:
            return []
        # The hot path: one Message per entry, made as the tuple it is (Message._make
        # would add a Python frame and a length check per entry).
        return [
            _tuple_new(Message, (i.decode() if type(i) is bytes else str(i), f, None, 1, None, i))
            for i, f in new[0][1]
        ]

    async def _with_deliveries(self, entries: list[Any]) -> list[Message]:
        """Messages for redelivered entries, with their delivery counts (XPENDING)."""
        gone = [_s(i) for i, f in entries if f is None]  # deleted from the stream (XDEL)
        if gone:
            await self._redis.xack(self.stream, self.group, *gone)
        live = [(_s(i), f) for i, f in entries if f is not None]
        if not live:
            return []
        pend = await self._redis.xpending_range(
            self.stream,
            self.group,
            min=live[0][0],
            max=live[-1][0],
            count=len(live) * 2,
            consumername=self.consumer,
        )
        times = {_s(p["message_id"]): int(p["times_delivered"]) for p in pend}
        return [Message(i, f, None, times.get(i), None, i) for i, f in live]

    async def ack(self, ctx: Context, messages: Sequence[Message]) -> None:
        """``XACK`` the messages in one round trip. Idempotent (acking twice is harmless);
        bounded by ``ctx`` (an already ended one raises its error before the round trip);
        not thread-safe. Raises redis-py's errors.

        It suspends only the calling task; it never blocks the event loop.

        Added in 0.1.
        """
        if not messages:
            return
        async with with_cancel(ctx):
            await self._redis.xack(self.stream, self.group, *[m.raw for m in messages])

    async def release(self, ctx: Context, message: Message, delay: float | None) -> None:
        """Leave the entry pending: it is redelivered by the recovery read or a claim.

        Does no I/O, never blocks, idempotent, raises nothing (even if ``ctx`` already
        ended). Not thread-safe (nor needs to be).

        Added in 0.1.
        """

    async def dead_letter(self, ctx: Context, message: Message, error: BaseException) -> bool:
        """``XADD`` the entry to the dead-letter stream and ``XACK`` it, in one transaction.

        Returns ``False`` (no I/O) when no dead-letter stream is configured. Suspends for
        one round trip, bounded by ``ctx`` (an already ended one raises its error first);
        not idempotent (a repeat adds a second copy); not thread-safe. Raises
        redis-py's errors (then nothing was written or acked).

        It suspends only the calling task; it never blocks the event loop.

        Added in 0.1.
        """
        if self.dead_letter_stream is None:
            return False
        fields = dict(message.data) if isinstance(message.data, dict) else {"data": message.data}
        fields.update(
            {
                "tether.error": repr(error)[:2000],
                "tether.id": message.id,
                "tether.stream": self.stream,
                "tether.group": self.group,
            }
        )
        async with with_cancel(ctx), self._redis.pipeline(transaction=True) as p:
            p.xadd(self.dead_letter_stream, fields)
            p.xack(self.stream, self.group, message.id)
            await p.execute()
        return True

    async def in_progress(self, ctx: Context, message: Message) -> None:
        """Reset the entry's idle time (``XCLAIM`` to this consumer, ``JUSTID``) so no
        other consumer claims it while its handler runs. Idempotent; one round trip,
        bounded by ``ctx`` (an already ended one raises its error first); not
        thread-safe. Raises redis-py's errors.

        It suspends only the calling task; it never blocks the event loop.

        Added in 0.1.
        """
        async with with_cancel(ctx):
            await self._redis.xclaim(
                self.stream, self.group, self.consumer, 0, [message.id], justid=True
            )

    async def close(self, ctx: Context) -> None:
        """Close the client if the source made it (from a URL); else nothing.

        Idempotent; suspends for the disconnect at most, bounded by ``ctx`` (an already
        ended one skips the wait); not thread-safe. Raises nothing.

        It suspends only the calling task; it never blocks the event loop.

        Added in 0.1.
        """
        if self._closed:
            return
        self._closed = True
        if self._owned:
            try:
                async with with_cancel(ctx):
                    await self._redis.aclose()
            except Exception:  # a client we made and are dropping anyway
                pass

    def __repr__(self) -> str:
        return (
            f"<tether.integrations.redis_streams.RedisStreamSource {self.stream!r} "
            f"group={self.group!r} consumer={self.consumer!r}>"
        )
