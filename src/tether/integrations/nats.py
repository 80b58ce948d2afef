"""NATS JetStream as a ``tether.lifecycle.Consumer`` source: a durable pull consumer,
``ack``/``nak``/``in_progress``, and a dead-letter subject.

::

    from tether import lifecycle
    from tether.integrations.nats import JetStreamSource

    source = JetStreamSource("nats://localhost:4222", "ORDERS", "billing",
                             subject="orders.>", dead_letter="orders.dead")
    consumer = lifecycle.Consumer(source, handle_order, concurrency=8)
    sup.add("orders", consumer.run)

How each consumer duty maps onto JetStream:

- fetch: ``PullSubscription.fetch(batch, timeout)`` on the durable consumer (created
  at ``open()`` with explicit acks and ``ack_wait`` unless it exists; an existing one is
  bound as it is). ``deliveries`` is ``metadata.num_delivered``.
- ack: ``Msg.ack()`` for each message of the batch, then one ``flush`` (a PING/PONG
  round trip), so a returned ``ack`` means the server has every ack.
- release: ``Msg.nak(delay)``: redelivered at once, or after the retry delay.
- heartbeat: ``Msg.in_progress()`` once a handler has run ``ack_wait / 3`` seconds (by
  ``ack_wait / 2`` at the latest), then every ``ack_wait / 6`` while it runs, so a long
  handler is not redelivered to another consumer meanwhile.
- dead_letter: ``JetStream.publish`` to the dead-letter subject (headers
  ``Tether-Error``, ``Tether-Id``, ``Tether-Subject``, plus the message's own), awaiting
  the stream's ack, then ``Msg.ack()``. The subject must belong to a stream (else
  publishing fails with ``NoRespondersError``, the message is released and redelivered).

Needs nats-py >= 2.6 (``pip install 'tether[nats]'``) and a server with JetStream.

Added in 0.1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .._context import Context, with_cancel
from ..lifecycle._common import positive_seconds
from ..lifecycle._consumer import Message

try:
    import nats
    import nats.errors
    import nats.js.api
    import nats.js.errors
except ImportError as e:  # pragma: no cover - exercised by test_consumer_extras
    raise ImportError(
        "tether: tether.integrations.nats needs the 'nats' extra: pip install 'tether[nats]'"
    ) from e

__all__ = ["JetStreamSource"]


class JetStreamSource:
    """A JetStream durable pull consumer.

    ``client`` is a connected ``nats.aio.client.Client`` (yours: not closed by
    ``close()``), or a server URL or list of URLs (the source connects at ``open()``
    and closes at ``close()``). ``stream`` is the JetStream stream, ``durable`` the
    durable consumer's name (several processes with the same name share the work);
    ``subject`` the filter subject (``None``: the stream's subjects). ``ack_wait`` is
    the redelivery timeout given to a consumer the source creates; ``max_deliver`` its
    delivery limit (``None``: unlimited). ``dead_letter`` is a subject captured by a
    stream (``None``: no dead-lettering; a failed message is ``nak``-ed). ``fetch_timeout``
    is the longest a fetch waits (also the longest a stop waits for it).
    ``connect_options`` go to ``nats.connect`` when the source connects; by default it
    retries forever (``max_reconnect_attempts=-1``), so ``open()`` waits for a server
    that is down until its context ends: pass ``{"max_reconnect_attempts": 1}`` to fail
    after two tries instead (nats-py reads 0 as "forever").

    Constructing one does no I/O and needs no event loop or server. The methods are
    the ``tether.lifecycle.Source`` protocol; each is a coroutine bounded by the
    context it is given (a context that already ended raises its error before any
    round trip; one that ends meanwhile interrupts the call and raises its error),
    not thread-safe (one consumer's event loop uses it). ``ack``, ``release``,
    ``in_progress`` and ``close`` are idempotent on the server's side (a second ack is
    ignored). They raise nats-py's errors (``NoServersError`` when the server is gone).
    The constructor raises ``TypeError``/``ValueError`` (starting ``tether:``) for bad
    arguments.

    Every method suspends only the calling task; none blocks the event loop.

    Added in 0.1.
    """

    ordered_acks = False

    def __init__(
        self,
        client: Any,
        stream: str,
        durable: str,
        *,
        subject: str | None = None,
        dead_letter: str | None = None,
        ack_wait: float = 30.0,
        max_deliver: int | None = None,
        fetch_timeout: float = 1.0,
        connect_options: dict[str, Any] | None = None,
    ) -> None:
        if isinstance(client, str):
            self._servers: list[str] | None = [client]
        elif (
            isinstance(client, list | tuple) and client and all(isinstance(s, str) for s in client)
        ):
            self._servers = list(client)
        elif hasattr(client, "jetstream"):
            self._servers = None
        else:
            raise TypeError(
                "tether: client must be a connected nats client or a nats:// URL (or a list of "
                f"them), got {type(client).__name__}"
            )
        self._nc: Any = None if self._servers is not None else client
        for what, v in (("stream", stream), ("durable", durable)):
            if not isinstance(v, str) or not v:
                raise TypeError(f"tether: {what} must be a non-empty str, got {v!r:.40}")
        if dead_letter is not None and (not isinstance(dead_letter, str) or not dead_letter):
            raise TypeError(
                f"tether: dead_letter must be a subject or None, got {dead_letter!r:.40}"
            )
        if dead_letter is not None and dead_letter == subject:
            raise ValueError("tether: dead_letter must differ from the consumed subject")
        if max_deliver is not None and (type(max_deliver) is not int or max_deliver < 1):
            raise ValueError(
                f"tether: max_deliver must be an int >= 1 or None, got {max_deliver!r}"
            )
        aw = positive_seconds(ack_wait, "ack_wait")
        ft = positive_seconds(fetch_timeout, "fetch_timeout")
        assert aw is not None
        assert ft is not None
        self.stream = stream
        self.durable = durable
        self.subject = subject
        self.dead_letter_subject = dead_letter
        self._ack_wait = aw
        self._max_deliver = max_deliver
        self._fetch_timeout = ft
        self._connect_options = {"max_reconnect_attempts": -1, **(connect_options or {})}
        self.name = f"nats:{stream}/{durable}"
        self.heartbeat: float | None = aw / 3
        self._js: Any = None
        self._sub: Any = None
        self._closed = False

    @property
    def client(self) -> Any:
        """The nats client (``None`` before ``open()`` when the source connects itself).

        Non-blocking, thread-safe, idempotent (the same object each call); valid after a
        context already ended. Raises nothing.

        Added in 0.1.
        """
        return self._nc

    async def open(self, ctx: Context) -> None:
        """Connect (for a URL), then bind the durable pull consumer, creating it if absent.

        Suspends for the connection and a few round trips, bounded by ``ctx`` (an
        already ended one raises its error first). Idempotent on the server (an
        existing durable is bound as it is, its own ``ack_wait`` then rules the
        heartbeat); not thread-safe. Raises nats-py's errors (``NoServersError``: no
        server, once ``connect_options``' attempts are used up; ``NotFoundError``: no
        such stream).

        It suspends only the calling task; it never blocks the event loop.

        Added in 0.1.
        """
        async with with_cancel(ctx):
            if self._nc is None:
                assert self._servers is not None
                self._nc = await nats.connect(
                    servers=self._servers,
                    connect_timeout=_clamp(ctx, 2.0),
                    **self._connect_options,
                )
            self._js = self._nc.jetstream()
            config = nats.js.api.ConsumerConfig(
                durable_name=self.durable,
                ack_policy=nats.js.api.AckPolicy.EXPLICIT,
                ack_wait=self._ack_wait,
                max_deliver=self._max_deliver if self._max_deliver is not None else -1,
                filter_subject=self.subject,
            )
            self._sub = await self._js.pull_subscribe(
                self.subject or "",
                durable=self.durable,
                stream=self.stream,
                config=config,
            )
            try:
                info = await self._sub.consumer_info()
                if info.config.ack_wait:
                    self.heartbeat = float(info.config.ack_wait) / 3
            except nats.errors.Error:  # informational only: keep our own ack_wait
                pass

    async def fetch(self, ctx: Context, max_messages: int) -> Sequence[Message]:
        """Up to ``max_messages`` messages, waiting at most ``fetch_timeout`` seconds
        (clamped to ``ctx``'s budget); ``[]`` if none came.

        Not idempotent (it takes messages); not thread-safe. If ``ctx`` already ended,
        returns ``[]`` without a round trip. Raises nats-py's errors, and
        ``RuntimeError`` before ``open()``.

        It suspends only the calling task; it never blocks the event loop.

        Added in 0.1.
        """
        if ctx.err() is not None:
            return []
        if self._sub is None:
            raise RuntimeError("tether: JetStreamSource.fetch before open(); run it in a Consumer")
        try:
            msgs = await self._sub.fetch(
                batch=max_messages, timeout=_clamp(ctx, self._fetch_timeout)
            )
        except nats.errors.TimeoutError:
            return []
        out: list[Message] = []
        for m in msgs:
            md = m.metadata
            out.append(
                Message(
                    f"{md.stream}:{md.sequence.stream}",
                    m.data,
                    headers=dict(m.headers) if m.headers else None,
                    deliveries=md.num_delivered,
                    raw=m,
                )
            )
        return out

    async def ack(self, ctx: Context, messages: Sequence[Message]) -> None:
        """``ack`` each message, then ``flush``: returns once the server has them all.

        One round trip for the batch, bounded by ``ctx`` (an already ended one raises
        its error before sending); idempotent (JetStream ignores a second ack); not
        thread-safe. Raises nats-py's errors.

        It suspends only the calling task; it never blocks the event loop.

        Added in 0.1.
        """
        if not messages:
            return
        async with with_cancel(ctx):
            for m in messages:
                await m.raw.ack()
            await self._nc.flush(timeout=_clamp(ctx, 10.0))

    async def release(self, ctx: Context, message: Message, delay: float | None) -> None:
        """``nak`` the message: redelivered at once, or after ``delay`` seconds.

        Bounded by ``ctx`` (an already ended one raises its error before sending);
        idempotent; not thread-safe. Raises nats-py's errors (then JetStream redelivers
        it after ``ack_wait``).

        It suspends only the calling task; it never blocks the event loop.

        Added in 0.1.
        """
        async with with_cancel(ctx):
            await message.raw.nak(delay=delay if delay else None)

    async def dead_letter(self, ctx: Context, message: Message, error: BaseException) -> bool:
        """Publish the message to the dead-letter subject (awaiting the stream's ack),
        then ack it. ``False`` (no I/O) without a dead-letter subject.

        Two round trips, bounded by ``ctx`` (an already ended one raises its error
        first); not idempotent (a repeat publishes a second copy); not thread-safe.
        Raises nats-py's errors (``NoRespondersError``: no stream captures the subject;
        then nothing was acked).

        It suspends only the calling task; it never blocks the event loop.

        Added in 0.1.
        """
        if self.dead_letter_subject is None:
            return False
        headers = dict(message.headers or {})
        headers.update(
            {
                "Tether-Error": repr(error)[:2000].replace("\r", " ").replace("\n", " "),
                "Tether-Id": message.id,
                "Tether-Subject": str(getattr(message.raw, "subject", "")),
            }
        )
        async with with_cancel(ctx):
            await self._js.publish(
                self.dead_letter_subject,
                message.data,
                timeout=_clamp(ctx, 5.0),
                headers=headers,
            )
            await message.raw.ack()
            await self._nc.flush(timeout=_clamp(ctx, 5.0))
        return True

    async def in_progress(self, ctx: Context, message: Message) -> None:
        """Tell JetStream the handler still works on it (resets its ``ack_wait``).

        Bounded by ``ctx`` (an already ended one raises its error first); idempotent;
        not thread-safe. Raises nats-py's errors.

        It suspends only the calling task; it never blocks the event loop.

        Added in 0.1.
        """
        async with with_cancel(ctx):
            await message.raw.in_progress()

    async def close(self, ctx: Context) -> None:
        """Unsubscribe (the durable consumer stays on the server), and close the
        connection if the source opened it. Idempotent; bounded by ``ctx`` (an already
        ended one skips the waits); not thread-safe. Raises nothing.

        It suspends only the calling task; it never blocks the event loop.

        Added in 0.1.
        """
        if self._closed:
            return
        self._closed = True
        try:
            async with with_cancel(ctx):
                if self._sub is not None:
                    await self._sub.unsubscribe()
                if self._servers is not None and self._nc is not None:
                    await self._nc.close()
        except Exception:  # closing anyway: the server forgets a dead connection
            pass

    def __repr__(self) -> str:
        return (
            f"<tether.integrations.nats.JetStreamSource stream={self.stream!r} "
            f"durable={self.durable!r}>"
        )


def _clamp(ctx: Context, seconds: float) -> float:
    left = ctx.remaining()
    return seconds if left is None else max(0.001, min(seconds, left))
