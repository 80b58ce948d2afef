"""A stream consumer: per-message contexts, retry then dead-letter, ordered acks, a
graceful stop that commits what was handled and nothing else.

Shape of a run (all on one event loop; ``run(ctx)`` is a Supervisor component)::

    fetcher ──fetch(ctx)──▶ buffer ──▶ N workers ──handler(msg_ctx, msg)──▶ settle
                                                                          │
    ack flusher ◀── ack batches (in delivery order per partition if ordered) ◀┘

Invariants, each kept in one place:

- A message is acked (or dead-lettered, which acks it) only after its handler returned
  (``_settle``), and every ack/commit/nak runs under a fresh short-deadline context
  (``_fresh``) that the stop signal does not cancel.
- Every fetched message ends in exactly one of: acked, dead-lettered, released (handed
  back to the broker for redelivery: retries exhausted with no dead-letter
  destination, cancelled by the drain deadline, or buffered when the stop came).
- With ``source.ordered_acks`` (Kafka offsets) a message's ack is issued only once every
  earlier message of its partition was settled; a released message blocks its
  partition's commits for the rest of the run (it is redelivered after a restart or a
  rebalance, with the ones after it).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from types import CoroutineType
from typing import Any, NamedTuple, Protocol, runtime_checkable

from .._aio import _FutureWaiter
from .._context import (
    CancelFunc,
    Context,
    Scope,
    _derive_values,
    after_func,
    cause,
    with_cancel,
    with_timeout,
    with_value,
    without_cancel,
)
from .._errors import ContextError, DeadlineExceeded
from .._sleep import asleep
from .._thread import to_thread
from ._common import (
    _DRAIN,
    LOG,
    REQUEST_ID,
    WORKER,
    DrainTimeout,
    check_callable,
    check_name,
    is_async,
    non_negative_seconds,
    positive_int,
    positive_seconds,
)

__all__ = ["Consumer", "ConsumerStats", "Message", "RetryPolicy", "Source"]

_NEW, _RUNNING, _STOPPING, _STOPPED = "new", "running", "stopping", "stopped"


class Message(NamedTuple):
    """One message as a source hands it to the consumer (and the consumer to a handler).

    ``id`` is the broker's id for it (Redis stream entry id, JetStream
    ``stream:sequence``, Kafka ``topic:partition:offset``): it becomes the message
    context's ``REQUEST_ID``. ``data`` is the payload (Redis: the entry's field dict;
    NATS and Kafka: the bytes). ``headers`` are the message headers, if the source has
    any. ``deliveries`` is how many times the broker delivered it, this time included,
    when the source knows (``None`` otherwise). ``partition`` is the ordering key for
    sources with ordered acks. ``raw`` is the source's own object (the entry id as
    bytes for Redis, a ``nats`` ``Msg``, an ``aiokafka`` ``ConsumerRecord``); use it
    read-only.

    A named tuple (cheap to make: a consumer makes one per message): immutable,
    thread-safe, never blocks; each construction makes a new one. No context is
    involved, so nothing depends on one having already ended. Raises nothing (a
    missing ``id`` or ``data`` is a ``TypeError``, as for any call).

    Added in 0.1.
    """

    id: str
    data: Any
    headers: dict[str, str] | None = None
    deliveries: int | None = None
    partition: Hashable | None = None
    raw: Any = None


Message.__module__ = "tether.lifecycle"


@runtime_checkable
class Source(Protocol):
    """What a ``Consumer`` needs from a broker. tether ships three:
    ``tether.integrations.redis_streams.RedisStreamSource``,
    ``tether.integrations.nats.JetStreamSource`` and
    ``tether.integrations.kafka.KafkaSource``.

    ``name`` names it in logs. ``ordered_acks`` is ``True`` when an ack of a message
    acknowledges every earlier one of its partition (Kafka offsets): the consumer then
    acks in delivery order. ``heartbeat`` is how long, in seconds, a handler may run
    before the consumer calls ``in_progress`` for its message (by ``1.5 * heartbeat`` at
    the latest), and again every ``heartbeat / 2`` while it runs (``None``: never).

    Every method is a coroutine run on the consumer's event loop, one call at a time
    per method except ``in_progress``/``release``; each receives a context whose end it
    must honour (return or raise promptly). ``fetch`` waits at most its poll interval
    and returns what it got (``[]`` for nothing); ``ack`` acknowledges a batch (for
    ordered sources: the given messages are the next ones of their partitions, in
    order); ``release`` hands a message back for redelivery, undone (after ``delay``
    seconds where the broker supports it); ``dead_letter`` stores the message and the
    error at the source's dead-letter destination and acks it, atomically where the
    broker allows (for an ordered source it only stores: the consumer then acks past it
    in order), and returns ``False`` (doing nothing) if no destination is configured.
    A method that raises is logged by the consumer, which never acks a message whose
    handler did not return.

    A protocol: implementing it neither blocks nor raises; thread-safety and
    idempotency are each implementation's (tether's are used from one event loop; an
    ``ack`` repeated after a timeout is harmless on all three brokers); a context
    that already ended is honoured by returning at once.

    Added in 0.1.
    """

    name: str
    ordered_acks: bool
    heartbeat: float | None

    async def open(self, ctx: Context) -> None:
        """Connect and bind (create the group/durable if needed). Suspends the calling
        task (never blocks the loop); called once per run, need not be idempotent; one
        event loop calls it (no thread-safety needed). If ``ctx`` already ended, raise
        its error or return. Raises the broker client's errors (``run`` re-raises them).

        Added in 0.1.
        """

    async def fetch(self, ctx: Context, max_messages: int) -> Sequence[Message]:
        """Up to ``max_messages`` messages; waits at most the source's poll interval
        (never blocks the loop); ``[]`` for none, and at once if ``ctx`` already ended.
        Not idempotent (it takes messages); one event loop calls it, one call at a time
        (no thread-safety needed). Raises the client's errors (logged and retried).

        Added in 0.1.
        """

    async def ack(self, ctx: Context, messages: Sequence[Message]) -> None:
        """Acknowledge ``messages`` (for ordered sources: the next ones of their
        partitions, in order). Suspends (never blocks the loop) within ``ctx``'s short
        deadline, raising its error if it already ended or ends; should be idempotent (a
        repeat after a timeout must be harmless); one event loop calls it (no
        thread-safety needed). Raises the client's errors (logged, counted).

        Added in 0.1.
        """

    async def release(self, ctx: Context, message: Message, delay: float | None) -> None:
        """Hand ``message`` back undone, for redelivery after ``delay`` seconds where the
        broker can. Suspends (never blocks the loop) within ``ctx`` (raise its error if
        it already ended); idempotent; one event loop calls it (no thread-safety
        needed). Raises the client's errors (logged: the broker's timeout redelivers).

        Added in 0.1.
        """

    async def dead_letter(self, ctx: Context, message: Message, error: BaseException) -> bool:
        """Store ``message`` and ``error`` at the dead-letter destination (and ack it,
        unless ordered); ``False`` without a destination. Suspends (never blocks the
        loop) within ``ctx`` (raise its error if it already ended); not idempotent (a
        repeat stores a second copy); one event loop calls it (no thread-safety
        needed). Raises the client's errors (the message is then released).

        Added in 0.1.
        """

    async def in_progress(self, ctx: Context, message: Message) -> None:
        """Tell the broker ``message`` is still being handled (extend its lease).
        Suspends (never blocks the loop) within ``ctx`` (raise its error if it already
        ended); idempotent; one event loop calls it (no thread-safety needed). Raises
        the client's errors (logged).

        Added in 0.1.
        """

    async def close(self, ctx: Context) -> None:
        """Release what ``open`` acquired. Suspends (never blocks the loop) within
        ``ctx`` (skip the waits if it already ended); idempotent; one event loop calls
        it (no thread-safety needed). Should raise nothing (errors are logged).

        Added in 0.1.
        """


@dataclass(frozen=True)
class RetryPolicy:
    """How a ``Consumer`` treats a handler error (an exception, or its message deadline).

    The handler is called up to ``attempts`` times for one delivery, waiting
    ``backoff * multiplier ** (n - 1)`` seconds (at most ``max_backoff``, plus up to
    ``jitter`` of it at random) after the ``n``-th failure. When the attempts are used up
    the message is dead-lettered to the source's destination, or, with none configured,
    released to the broker for a later redelivery (Redis: it stays pending and
    ``XAUTOCLAIM`` hands it out again after ``claim_idle``; NATS: ``nak`` with the last
    delay; Kafka: its partition commits no further this run). A delivery the broker
    already made ``max_deliveries`` times or more (a message that crashed consumers
    before) is dead-lettered without calling the handler again; ``None`` disables that.

    ``retry_on`` decides which errors are retried at all (default: every ``Exception``);
    an error it rejects dead-letters at once.

    A frozen value: thread-safe, no blocking, no context involved (nothing depends on
    one having already ended); each construction makes a new one (``replace`` too).
    Raises ``TypeError``/``ValueError`` (starting ``tether:``) for a non-int or < 1
    ``attempts``, negative or non-finite durations, ``multiplier < 1``, ``jitter``
    outside [0, 1].

    Added in 0.1.
    """

    __module__ = "tether.lifecycle"

    attempts: int = 3
    backoff: float = 0.5
    multiplier: float = 2.0
    max_backoff: float = 30.0
    jitter: float = 0.0
    max_deliveries: int | None = None
    retry_on: Callable[[BaseException], bool] | None = None

    def __post_init__(self) -> None:
        positive_int(self.attempts, "attempts")
        non_negative_seconds(self.backoff, "backoff")
        non_negative_seconds(self.max_backoff, "max_backoff")
        m = non_negative_seconds(self.multiplier, "multiplier")
        if m < 1:
            raise ValueError(f"tether: multiplier must be >= 1, got {self.multiplier!r}")
        j = non_negative_seconds(self.jitter, "jitter")
        if j > 1:
            raise ValueError(f"tether: jitter must be in [0, 1], got {self.jitter!r}")
        if self.max_deliveries is not None:
            positive_int(self.max_deliveries, "max_deliveries")
        if self.retry_on is not None:
            check_callable(self.retry_on, "retry_on")

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failed attempt (1-based).

        Non-blocking, thread-safe, no context (nothing can have already ended); the same
        value on every call when ``jitter`` is 0. Raises ``ValueError`` for
        ``failures < 1``.

        Added in 0.1.
        """
        if failures < 1:
            raise ValueError(f"tether: failures must be >= 1, got {failures}")
        d = min(self.max_backoff, self.backoff * self.multiplier ** (failures - 1))
        if self.jitter:
            d += d * self.jitter * random.random()
        return d

    def retryable(self, error: BaseException) -> bool:
        """Whether ``error`` may be retried (``retry_on``, default: any ``Exception``).

        Non-blocking, thread-safe, idempotent; no context involved (an already ended
        one changes nothing). Raises what ``retry_on`` raises.

        Added in 0.1.
        """
        if self.retry_on is None:
            return isinstance(error, Exception)
        return bool(self.retry_on(error))


@dataclass(frozen=True)
class ConsumerStats:
    """A snapshot of a ``Consumer``'s counters (``stats()``; what ``run()`` returns).

    Every fetched message is, at any moment, ``buffered``, ``in_flight``, or in exactly
    one of ``acked`` (its handler returned and the ack was issued), ``dead_lettered``
    (attempts used up, stored at the dead-letter destination and acked) or ``released``
    (handed back for redelivery, never acked). ``failures`` counts failed attempts
    (``timed_out`` of them by the message deadline); ``retries`` the attempts after a
    failure; ``ack_errors`` ack/commit calls that raised (those messages may be
    redelivered: at-least-once).

    Added in 0.1.
    """

    __module__ = "tether.lifecycle"

    state: str
    fetched: int = 0
    buffered: int = 0
    in_flight: int = 0
    acked: int = 0
    dead_lettered: int = 0
    released: int = 0
    failures: int = 0
    timed_out: int = 0
    retries: int = 0
    ack_errors: int = 0


class _Counts:
    __slots__ = (
        "ack_errors",
        "acked",
        "dead_lettered",
        "failures",
        "fetched",
        "released",
        "retries",
        "timed_out",
    )

    def __init__(self) -> None:
        self.fetched = self.acked = self.dead_lettered = self.released = 0
        self.failures = self.timed_out = self.retries = self.ack_errors = 0


class _Slot:
    """A fetched message's place in its partition's ack order (ordered sources)."""

    __slots__ = ("msg", "settled")

    def __init__(self, msg: Message) -> None:
        self.msg = msg
        self.settled: str | None = None  # "ack" | "dead" | "released"


Handler = Callable[[Context, Message], Awaitable[object]] | Callable[[Context, Message], object]


class Consumer:
    """Consume ``source`` until the context ends, calling ``handler(msg_ctx, msg)``.

    A component: ``await consumer.run(ctx)`` (a coroutine; ``Supervisor.add("orders",
    consumer.run)``) fetches from ``source``, runs the handler on up to
    ``concurrency`` messages at once and acks each message once its handler returned.
    ``handler`` is a coroutine function, or a plain function (run in a worker thread by
    ``tether.to_thread``, its context still ends on time).

    Each message runs under its own context: the consumer's drain context
    (``drain_scope``), ``REQUEST_ID`` = the message id, ``WORKER`` = ``name``, and a
    deadline ``message_timeout`` seconds away (``None``: none). A coroutine handler is
    interrupted when that context ends (``async with`` semantics). A handler that
    raises, or outlives its deadline, goes to ``retry`` (a ``RetryPolicy``): retried
    with backoff, then dead-lettered, or released when the source has no dead-letter
    destination. For long handlers the source's heartbeat (NATS ``in_progress``) keeps
    the broker from redelivering meanwhile. ``prefetch`` bounds the messages fetched
    ahead of the handlers (default ``max(16, 2 * concurrency)``). Acks go out in
    batches: once a message is handled, the consumer waits ``ack_linger`` seconds
    (default 5 ms; ``0``: none) for more to share the ack's round trip — handlers that
    suspend, as any doing I/O does, finish one at a time, and without it each would cost
    a round trip to the broker. A crash loses at most that much of acks (those messages
    are delivered again); a stop flushes at once.

    Stop (``ctx`` ends): fetching stops at once; buffered messages not yet started are
    released; messages in hand finish within ``grace`` seconds (and never after the
    drain deadline under a ``Supervisor``), after which their context is cancelled
    (cause ``DrainTimeout``) and they are released, not acked; the last acks are
    flushed and the source closed, each under a fresh context of ``ack_timeout``
    seconds that the stop does not cancel. Nothing is acked whose handler did not
    return; a message whose handler returned but whose ack failed, or that was
    released, is delivered again later: processing is at-least-once.

    Constructing one does no I/O and never blocks; each construction is a new consumer
    (``run`` is once only). A consumer belongs to the event loop that runs it: it is
    not thread-safe, except ``stats()``. A context that already ended makes ``run``
    return at once. The constructor raises ``TypeError``/``ValueError`` (starting
    ``tether:``) for a non-source, a non-callable handler or bad numbers.

    Added in 0.1.
    """

    __module__ = "tether.lifecycle"

    def __init__(
        self,
        source: Source,
        handler: Handler,
        *,
        message_timeout: float | None = 30,
        concurrency: int = 1,
        retry: RetryPolicy | None = None,
        prefetch: int | None = None,
        grace: float = 10.0,
        ack_timeout: float = 5.0,
        ack_linger: float = 0.005,
        name: str | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        if not isinstance(source, Source):
            raise TypeError(
                "tether: Consumer needs a source with open/fetch/ack/release/dead_letter/"
                "in_progress/close (e.g. tether.integrations.redis_streams."
                f"RedisStreamSource), got {type(source).__name__}"
            )
        check_callable(handler, "a consumer handler")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(
                f"tether: retry must be a tether.lifecycle.RetryPolicy, got {type(retry).__name__}"
            )
        self._source = source
        self._handler = handler
        self._async = is_async(handler)
        self._timeout = positive_seconds(message_timeout, "message_timeout", allow_none=True)
        self._concurrency = positive_int(concurrency, "concurrency")
        self._retry = retry if retry is not None else RetryPolicy()
        self._prefetch = (
            max(16, 2 * self._concurrency)
            if prefetch is None
            else positive_int(prefetch, "prefetch")
        )
        self._grace = non_negative_seconds(grace, "grace")
        at = positive_seconds(ack_timeout, "ack_timeout")
        assert at is not None
        self._ack_timeout = at
        self._linger = non_negative_seconds(ack_linger, "ack_linger")
        self._name = check_name(name if name is not None else f"consumer-{source.name}", "consumer")
        self._log = logger if logger is not None else LOG
        # Only the event loop that runs run() touches the following.
        self._state = _NEW
        self._n = _Counts()
        self._buffer: collections.deque[Message] = collections.deque()
        self._in_flight: dict[int, Message] = {}  # id(msg) -> msg, while its handler runs
        self._order: dict[Hashable, collections.deque[_Slot]] = {}
        self._slots: dict[int, _Slot] = {}
        self._blocked: set[Hashable] = set()
        self._to_ack: list[Message] = []  # acks to send, in order
        self._not_counted: set[int] = set()  # id() of dead-lettered ones among them
        self._closing = False  # the flusher returns once the queue is empty
        self._end_linger: Callable[[], None] = _nothing  # ends the flusher's linger now
        self._closed = False  # the source is closing: nothing is acked any more
        self._low = max(1, self._prefetch // 2)  # fetch again below this many buffered
        self._root: Context | None = None
        self._have_work: asyncio.Event | None = None
        self._need_more: asyncio.Event | None = None
        self._acks_queued: asyncio.Event | None = None

    # -- introspection -------------------------------------------------------------------

    def stats(self) -> ConsumerStats:
        """A snapshot of the counters. Non-blocking; a new object each call; valid in
        every state (after the context already ended too). Safe from any thread (it
        reads plain ints; a snapshot taken off the loop may be a moment stale). Raises
        nothing.

        Added in 0.1.
        """
        n = self._n
        return ConsumerStats(
            state=self._state,
            fetched=n.fetched,
            buffered=len(self._buffer),
            in_flight=len(self._in_flight),
            acked=n.acked,
            dead_lettered=n.dead_lettered,
            released=n.released,
            failures=n.failures,
            timed_out=n.timed_out,
            retries=n.retries,
            ack_errors=n.ack_errors,
        )

    # -- running -------------------------------------------------------------------------

    async def run(self, ctx: Context) -> ConsumerStats:
        """Consume until ``ctx`` ends, stop as the class docstring says, return the counters.

        Suspends the calling task (never blocks the loop) for the life of the consumer.
        Runs once (a second call raises ``RuntimeError``); call it on one event loop
        (it is not thread-safe to share a consumer between loops). If ``ctx`` already
        ended, the source is opened and closed and nothing is fetched. Raises
        ``TypeError`` for a non-Context ``ctx``, and what ``source.open`` raises (the
        source is then closed). Handler errors are never raised: they are logged,
        counted and given to the retry policy. If the awaiting task is cancelled, the
        messages in hand are cancelled and released, acks are flushed, the source is
        closed, and ``CancelledError`` propagates.

        Added in 0.1.
        """
        if type(ctx) is not Context:
            raise TypeError(f"tether: run needs a tether.Context, got {type(ctx).__name__}")
        if self._state != _NEW:
            raise RuntimeError("tether: a Consumer runs once; make a new one")
        self._state = _RUNNING
        self._root = ctx
        self._have_work = asyncio.Event()
        self._need_more = asyncio.Event()
        self._need_more.set()
        self._acks_queued = asyncio.Event()
        src = self._source
        (work, cancel_work), unhook = _work_scope(ctx)
        extra = {"worker": self._name}
        workers: list[asyncio.Task[None]] = []
        helpers: list[asyncio.Task[None]] = []
        try:
            if ctx.err() is None:
                opener = asyncio.ensure_future(src.open(ctx))
                await _until(opener, ctx, cancel=True)
                exc = None if opener.cancelled() else opener.exception()
                if exc is not None and not (isinstance(exc, ContextError) and ctx.err()):
                    raise exc  # what open() raised (a stop during open() is no error)
            if ctx.err() is None:
                self._log.info(
                    "consumer %s started on %s (concurrency %d)",
                    self._name,
                    src.name,
                    self._concurrency,
                    extra={**extra, "event": "consumer_started"},
                )
            helpers.append(asyncio.ensure_future(self._flush_loop(ctx)))
            if src.heartbeat is not None:
                helpers.append(asyncio.ensure_future(self._heartbeat(ctx, src.heartbeat)))
            workers = [asyncio.ensure_future(self._worker(work)) for _ in range(self._concurrency)]
            await self._fetch_loop(ctx)
            # -- stop: nothing new starts; buffered messages go back; in hand finish --
            self._state = _STOPPING
            self._log.info(
                "consumer %s stopping (%s): %d in hand, %d buffered released",
                self._name,
                cause(ctx),
                len(self._in_flight),
                len(self._buffer),
                extra={**extra, "event": "consumer_stopping"},
            )
            await self._release_buffer(ctx)
            self._have_work.set()  # idle workers see _STOPPING and exit
            with with_timeout(work, self._grace) as gctx:
                await _until_all(workers, gctx)
            if any(not t.done() for t in workers):
                left = cause(work)
                if not isinstance(left, DrainTimeout):
                    left = DrainTimeout(f"the consumer's grace ({self._grace:g}s) passed")
                self._log.warning(
                    "consumer %s: %d messages still in hand after the grace; cancelling them",
                    self._name,
                    len(self._in_flight),
                    extra={**extra, "event": "consumer_grace_over"},
                )
                cancel_work(left)
        finally:
            self._state = _STOPPING
            self._have_work.set()
            await self._stop_tasks(ctx, workers)
            cancel_work()
            unhook()
            await self._release_buffer(ctx)
            self._closing = True  # the flusher sends what is queued, then returns
            self._acks_queued.set()
            self._end_linger()  # no more lingering: flush now
            await self._stop_tasks(ctx, helpers[:1], force=False)
            await self._stop_tasks(ctx, helpers[1:])
            await _shielded(self._flush(ctx))  # (normally nothing is left by now)
            self._closed = True  # from here on, a late handler's message is never acked
            with self._fresh(ctx) as cctx:
                try:
                    await _shielded(src.close(cctx))
                except Exception as e:
                    self._log.error(
                        "consumer %s: closing %s failed: %r",
                        self._name,
                        src.name,
                        e,
                        extra={**extra, "event": "consumer_close_failed"},
                    )
            self._state = _STOPPED
        s = self.stats()
        self._log.info(
            "consumer %s stopped: %d fetched, %d acked, %d dead-lettered, %d released, "
            "%d failed attempts",
            self._name,
            s.fetched,
            s.acked,
            s.dead_lettered,
            s.released,
            s.failures,
            extra={**extra, "event": "consumer_stopped"},
        )
        return s

    def _fresh(self, ctx: Context) -> Any:
        """A context for an ack/commit/close: ctx's values, not its cancellation."""
        return with_timeout(without_cancel(ctx), self._ack_timeout)

    async def _fetch_loop(self, ctx: Context) -> None:
        assert self._need_more is not None
        assert self._have_work is not None
        src = self._source
        need_more = self._need_more
        loop = asyncio.get_running_loop()

        def wake() -> None:  # the stop wakes the fetcher as a worker would
            try:
                loop.call_soon_threadsafe(need_more.set)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

        unhook = after_func(ctx, wake)
        try:
            await self._fetch_until(ctx, src, need_more)
        finally:
            unhook()

    async def _fetch_until(self, ctx: Context, src: Source, need_more: asyncio.Event) -> None:
        assert self._have_work is not None
        while ctx.err() is None:
            if len(self._buffer) >= self._low:
                # Wait on the event itself (no helper task): a worker that sets it and
                # yields once lets this task send the next fetch at once.
                need_more.clear()
                await need_more.wait()
                continue
            try:
                got = await src.fetch(ctx, self._prefetch)
            except Exception as e:
                if ctx.err() is not None:
                    break
                self._log.error(
                    "consumer %s: fetch from %s failed: %r; retrying in 1s",
                    self._name,
                    src.name,
                    e,
                    extra={"worker": self._name, "event": "fetch_failed"},
                )
                try:
                    await asleep(ctx, 1.0)
                except ContextError:
                    break
                continue
            if not got:
                continue
            self._n.fetched += len(got)
            if src.ordered_acks:
                for m in got:
                    if m.partition not in self._blocked:
                        slot = _Slot(m)
                        self._slots[id(m)] = slot
                        self._order.setdefault(m.partition, collections.deque()).append(slot)
            self._buffer.extend(got)
            self._have_work.set()

    async def _release_buffer(self, ctx: Context) -> None:
        while self._buffer:
            m = self._buffer.popleft()
            await self._settle(ctx, m, "released", None, None)

    async def _worker(self, work: Context) -> None:
        assert self._have_work is not None
        assert self._need_more is not None
        root = self._root
        assert root is not None
        buf = self._buffer
        work = with_value(work, WORKER, self._name)
        wvals = work._values  # + REQUEST_ID: each message's context is one node
        rid = REQUEST_ID
        # The hot path (a coroutine handler's first attempt) is inlined here: it runs
        # once per message, and each call, frame and lookup shows in the throughput.
        inflight, to_ack, acks_queued = self._in_flight, self._to_ack, self._acks_queued
        handler, to = self._handler, self._timeout
        assert acks_queued is not None
        fast = self._async and self._retry.max_deliveries is None
        ordered = self._source.ordered_acks
        need_more, low, coroutine = self._need_more, self._low, CoroutineType
        while True:
            while not buf:
                if self._state != _RUNNING or work.err() is not None:
                    return  # stopping, or the drain ended (then nothing new may start)
                self._have_work.clear()
                await self._have_work.wait()
            if self._state != _RUNNING:
                return
            m = buf.popleft()
            if len(buf) < low and not need_more.is_set():
                need_more.set()
                # Let the fetcher send its request (and the flusher its acks) now, so
                # the broker works while this worker goes on with the buffer.
                await asyncio.sleep(0)
            try:
                if not fast:
                    await self._process(work, m)
                    continue
                key = id(m)
                inflight[key] = m
                try:  # the first attempt, under a fresh message context
                    # `with scope as mc:` spelled out (no Scope.__enter__/__exit__ frames):
                    # one node carries the deadline and the values, and is current inside
                    values = wvals.copy()  # (half the cost of {**wvals, rid: m.id})
                    values[rid] = m.id
                    cf = _derive_values(work, to, values)
                    mc = cf._enter(0)
                    try:
                        # Run the handler up to its first suspension here: most messages
                        # finish without one, and need no interrupter. One that suspends
                        # finishes inside `async with`, which interrupts it when mc ends.
                        coro: Any = handler(mc, m)
                        if type(coro) is not coroutine:  # another awaitable
                            await _resume_in_scope(cf, coro, _START)
                        else:
                            # next() with a default: a return raises no StopIteration
                            step = next(coro.__await__(), _RETURNED)
                            if step is not _RETURNED:
                                await _resume_in_scope(cf, coro, step)
                    finally:
                        cf._exit()
                except Exception as e:
                    await self._process(work, m, e)  # the retry policy takes over
                    continue
                except BaseException:
                    del inflight[key]
                    await _shielded(self._settle(root, m, "released", None, None))
                    raise
                del inflight[key]
                if self._closed:
                    await self._settle(root, m, "ack", None, None)  # logs it, acks nothing
                elif ordered:
                    self._ordered_done(m, "ack")
                else:
                    # The event is set while the list is non-empty (the flusher clears
                    # it only before taking the whole list): only the first append sets.
                    if not to_ack:
                        acks_queued.set()
                    to_ack.append(m)
            except Exception:  # a bug, or a broken logger: the worker must go on
                self._log.exception(
                    "consumer %s: internal error processing message %s",
                    self._name,
                    m.id,
                    extra={"worker": self._name, "request_id": m.id, "event": "consumer_error"},
                )

    async def _process(self, work: Context, m: Message, first: Exception | None = None) -> None:
        """Run ``m`` through the retry policy and settle it. ``first``: the error of an
        attempt the worker already made (``m`` is then registered in flight)."""
        policy = self._retry
        root = self._root
        assert root is not None
        key = id(m)
        if first is None:
            self._in_flight[key] = m
        outcome = "released"
        error: BaseException | None = first
        delay: float | None = None
        try:
            if first is None and (
                policy.max_deliveries is not None and (m.deliveries or 0) > policy.max_deliveries
            ):
                error = RuntimeError(
                    f"delivered {m.deliveries} times (max_deliveries={policy.max_deliveries})"
                )
                outcome = "dead"
                return
            values = work._values.copy()  # never mutated after this: shared by attempts
            values[REQUEST_ID] = m.id
            to = self._timeout
            attempt = 0 if first is None else 1
            while True:
                if error is None:
                    attempt += 1
                    try:  # one call of the handler, under a fresh message context
                        cf = _derive_values(work, to, values)
                        async with Scope((cf._ctx, cf)) as mc:
                            if self._async:
                                await self._handler(mc, m)  # type: ignore[misc]
                            else:
                                await to_thread(mc, self._handler, m)
                    except Exception as e:
                        error = e
                    else:
                        outcome = "ack"
                        return
                if work.err() is not None:  # cancelled by the drain: not the handler's fault
                    outcome = "released"
                    return
                self._n.failures += 1
                if isinstance(error, DeadlineExceeded):
                    self._n.timed_out += 1
                if not policy.retryable(error):
                    outcome = "dead"
                    return
                delay = policy.delay(attempt)
                if attempt >= policy.attempts:
                    outcome = "dead"
                    return
                if root.err() is not None:
                    return  # stopping: no new attempt; released for redelivery
                self._log.warning(
                    "consumer %s: message %s failed (attempt %d of %d): %r; retrying in %gs",
                    self._name,
                    m.id,
                    attempt,
                    policy.attempts,
                    error,
                    delay,
                    extra={
                        "worker": self._name,
                        "request_id": m.id,
                        "event": "message_retry",
                    },
                )
                try:
                    await asleep(root, delay)
                except ContextError:
                    return  # the stop came during the backoff: released
                self._n.retries += 1
                error = None
        finally:
            del self._in_flight[key]
            if outcome == "ack" and not self._closed:  # the hot path: no suspension
                if self._source.ordered_acks:
                    self._ordered_done(m, "ack")
                else:
                    self._to_ack.append(m)
                    self._acks_queued.set()  # type: ignore[union-attr]
            else:
                await _shielded(self._settle(root, m, outcome, error, delay))

    async def _settle(
        self,
        ctx: Context,
        m: Message,
        outcome: str,
        error: BaseException | None,
        delay: float | None,
    ) -> None:
        """Decide a message's fate once; never acks one whose handler did not return."""
        src = self._source
        extra = {"worker": self._name, "request_id": m.id}
        if self._closed:
            self._log.error(
                "consumer %s: message %s finished after the source closed (%s): not acked, "
                "the broker delivers it again",
                self._name,
                m.id,
                outcome,
                extra={**extra, "event": "message_late"},
            )
            return
        if outcome == "dead":
            assert error is not None
            done = False
            with self._fresh(ctx) as dctx:
                try:
                    done = await src.dead_letter(dctx, m, error)
                except Exception as e:
                    self._log.error(
                        "consumer %s: dead-lettering message %s failed: %r; releasing it",
                        self._name,
                        m.id,
                        e,
                        extra={**extra, "event": "dead_letter_failed"},
                    )
            if done:
                self._n.dead_lettered += 1
                self._log.error(
                    "consumer %s: message %s dead-lettered: %r",
                    self._name,
                    m.id,
                    error,
                    extra={**extra, "event": "message_dead_lettered"},
                )
                self._ordered_done(m, "dead")
                return
            outcome = "released"
            self._log.error(
                "consumer %s: message %s failed for good (%r) and %s has no dead-letter "
                "destination: released for redelivery",
                self._name,
                m.id,
                error,
                src.name,
                extra={**extra, "event": "message_released"},
            )
        if outcome == "ack":
            if self._source.ordered_acks:
                self._ordered_done(m, "ack")
            else:
                self._queue_ack([m])
            return
        self._n.released += 1
        self._ordered_done(m, "released")
        with self._fresh(ctx) as rctx:
            try:
                await src.release(rctx, m, delay)
            except Exception as e:
                self._log.warning(
                    "consumer %s: releasing message %s failed: %r (redelivered after the "
                    "broker's timeout)",
                    self._name,
                    m.id,
                    e,
                    extra={**extra, "event": "release_failed"},
                )

    def _ordered_done(self, m: Message, how: str) -> None:
        """Record ``m`` settled; queue the acks its partition's order now allows."""
        if not self._source.ordered_acks:
            return
        slot = self._slots.pop(id(m), None)
        if slot is None or m.partition in self._blocked:
            return
        slot.settled = how
        q = self._order[m.partition]
        ready: list[Message] = []
        while q and q[0].settled is not None:
            s = q.popleft()
            if s.settled == "released":  # never commit past an unhandled message
                self._blocked.add(m.partition)
                for rest in q:
                    self._slots.pop(id(rest.msg), None)
                q.clear()
                self._log.warning(
                    "consumer %s: message %s released; partition %s commits no further "
                    "this run (the broker delivers the rest again)",
                    self._name,
                    s.msg.id,
                    m.partition,
                    extra={
                        "worker": self._name,
                        "request_id": s.msg.id,
                        "event": "partition_blocked",
                    },
                )
                break
            # a dead-lettered message was stored elsewhere: it moves the commit point too
            if s.settled != "ack":
                self._not_counted.add(id(s.msg))
            ready.append(s.msg)
        if ready:
            self._queue_ack(ready)

    def _queue_ack(self, items: list[Message]) -> None:
        assert self._acks_queued is not None
        self._to_ack.extend(items)
        self._acks_queued.set()

    async def _flush_loop(self, ctx: Context) -> None:
        assert self._acks_queued is not None
        linger = self._linger
        while True:
            await self._acks_queued.wait()
            if linger and not self._closing:
                # Let the acks of the next messages join this one's round trip: a
                # handler that suspends (any real I/O) would otherwise cost an ack
                # round trip per message. The stop cuts it short.
                fut = asyncio.get_running_loop().create_future()
                self._end_linger = end = _FutureWaiter(fut)
                timer = fut.get_loop().call_later(linger, end)
                try:
                    await fut
                finally:
                    timer.cancel()
                    self._end_linger = _nothing
            self._acks_queued.clear()
            if self._closing:
                await _shielded(self._flush(ctx))
                if not self._to_ack:
                    return
            else:  # one batch: what is acked meanwhile waits for the next linger
                await _shielded(self._flush_batch(ctx))

    async def _flush(self, ctx: Context) -> None:
        """Ack everything queued, one batch after another, until the queue is empty."""
        while self._to_ack:
            await self._flush_batch(ctx)

    async def _flush_batch(self, ctx: Context) -> None:
        """Ack what is queued now, in one call of the source's ``ack``."""
        if self._to_ack:
            batch = self._to_ack[:]  # (cleared in place: workers hold the list)
            self._to_ack.clear()
            with self._fresh(ctx) as actx:
                try:
                    await self._source.ack(actx, batch)
                except Exception as e:
                    self._n.ack_errors += 1
                    self._log.error(
                        "consumer %s: acking %d messages on %s failed: %r (they will be "
                        "delivered again)",
                        self._name,
                        len(batch),
                        self._source.name,
                        e,
                        extra={"worker": self._name, "event": "ack_failed"},
                    )
                else:
                    n = len(batch)
                    if self._not_counted:  # ordered sources: dead-lettered ones ride along
                        dead = self._not_counted
                        n -= sum(1 for m in batch if id(m) in dead)
                        dead.difference_update(id(m) for m in batch)
                    self._n.acked += n

    async def _stop_tasks(
        self, ctx: Context, tasks: Sequence[asyncio.Task[None]], *, force: bool = True
    ) -> None:
        """Cancel ``tasks`` (after letting them finish, unless ``force``), waiting at
        most ``ack_timeout`` in all; what still runs then is logged and left behind."""
        pending = [t for t in tasks if not t.done()]
        if not pending:
            return
        with self._fresh(ctx) as wctx:
            if not force:
                await _shielded(_until_all(pending, wctx))
            for t in pending:
                t.cancel()
            await _shielded(_until_all(pending, wctx))
        stuck = [t for t in pending if not t.done()]
        if stuck:
            self._log.error(
                "consumer %s: %d tasks still running %gs after being cancelled (a handler "
                "ignores its context): abandoned; their messages are not acked",
                self._name,
                len(stuck),
                self._ack_timeout,
                extra={"worker": self._name, "event": "consumer_abandoned"},
            )

    async def _heartbeat(self, ctx: Context, every: float) -> None:
        """``in_progress`` for each message in flight for ``every`` seconds or more.

        It looks every ``every / 2`` seconds, and a message seen in flight three times in
        a row has been for at least ``every``: its first call comes between ``every``
        and ``1.5 * every`` after its handler started, then one per look. Counting looks
        rather than reading the clock per message keeps the worker's hot path free of
        it (a clock read and two dict operations per message, ~1.7 % of Q1).
        """
        src = self._source
        seen: dict[int, tuple[Message, int]] = {}  # id(msg) -> (msg, looks in a row)
        while True:
            await asyncio.sleep(every / 2)
            now_seen: dict[int, tuple[Message, int]] = {}
            for key, m in self._in_flight.items():
                prev = seen.get(key)
                now_seen[key] = (m, prev[1] + 1 if prev is not None and prev[0] is m else 1)
            seen = now_seen
            for key, (m, looks) in list(seen.items()):
                if looks < 3 or self._in_flight.get(key) is not m:  # (may have finished
                    continue  # while an earlier in_progress was awaited)
                with self._fresh(ctx) as hctx:
                    try:
                        await src.in_progress(hctx, m)
                    except Exception as e:
                        self._log.warning(
                            "consumer %s: heartbeat for message %s failed: %r",
                            self._name,
                            m.id,
                            e,
                            extra={
                                "worker": self._name,
                                "request_id": m.id,
                                "event": "heartbeat_failed",
                            },
                        )

    def __repr__(self) -> str:
        s = self.stats()
        return (
            f"<tether.lifecycle.Consumer {self._name!r} {s.state} "
            f"concurrency={self._concurrency} in_flight={s.in_flight} acked={s.acked}>"
        )


def _work_scope(ctx: Context) -> tuple[Scope, Callable[[], object]]:
    """The context the messages in hand run under: ``ctx``'s values, not its cancel.

    Like ``drain_scope`` it ends when the Supervisor's drain context ends; unlike it, it
    does not end with ``ctx`` when no drain context is bound (a consumer run outside a
    Supervisor still gives the message in hand its ``grace``): ``run`` cancels it when
    the grace is over.
    """
    scope = with_cancel(without_cancel(ctx))
    drain = ctx.value(_DRAIN)
    if drain is None:
        return scope, _nothing
    cancel = scope[1]

    def end() -> None:
        cancel(cause(drain))

    if drain.err() is not None:
        end()
        return scope, _nothing
    return scope, after_func(drain, end)


def _nothing() -> None:
    pass


# --------------------------------------------------------------------------------------
# Waiting helpers (the consumer waits on tether contexts, never on wall-clock sleeps)


_START = object()  # _resume_in_scope: the awaitable has not started yet
_RETURNED = object()  # Consumer._worker: the handler's coroutine returned at its first step


async def _resume_in_scope(cf: CancelFunc, coro: Any, step: Any) -> None:
    """Finish ``coro`` (suspended at ``step``) inside ``async with`` of the message's own
    scope: the worker entered it with a plain ``with`` for the first step; it is left
    (``current()`` restored, the context still live) and entered again as an ``async
    with``, which registers the interrupter — no second context for the rest. The
    worker's ``cf._exit()`` afterwards finds it ended and only restores ``current()``."""
    cf._leave()
    async with Scope((cf._ctx, cf)):
        if step is _START:
            await coro
        else:
            await _Resume(coro, step)


class _Resume:
    """Awaitable that drives a coroutine already advanced to its first suspension.

    It hands what the coroutine yields to the task and the task's resumptions (values
    and thrown exceptions, cancellation included) back to the coroutine: what the task
    would have done had it awaited the coroutine from the start.
    """

    __slots__ = ("coro", "step")

    def __init__(self, coro: Any, step: Any) -> None:
        self.coro = coro
        self.step = step

    def __await__(self) -> Any:
        coro, step = self.coro, self.step
        self.coro = self.step = None
        while True:
            try:
                sent = yield step
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as e:  # forwarded to the coroutine as is
                try:
                    step = coro.throw(e)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    step = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


async def _until(fut: asyncio.Future[Any], ctx: Context, *, cancel: bool = False) -> None:
    """Wait for ``fut`` or for ``ctx`` to end; with ``cancel``, cancel ``fut`` then."""
    if ctx.err() is None and not fut.done():

        async def ended() -> None:
            await ctx.done()

        watcher = asyncio.ensure_future(ended())
        try:
            await asyncio.wait({fut, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
    if cancel and not fut.done():
        fut.cancel()
        await asyncio.wait([fut])


async def _until_all(tasks: Sequence[asyncio.Future[Any]], ctx: Context) -> None:
    pending = [t for t in tasks if not t.done()]
    if not pending:
        return
    gather = asyncio.ensure_future(asyncio.wait(pending))
    await _until(gather, ctx, cancel=True)


async def _shielded(aw: Awaitable[Any]) -> Any:
    """Await ``aw`` to completion even if the calling task is cancelled meanwhile.

    Settling a message (ack, release, dead-letter) must not be cut in half by a task
    cancellation; its own fresh deadline bounds it. A cancellation that arrives meanwhile
    is re-raised once it is done.
    """
    fut = asyncio.ensure_future(aw)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(fut)
        except asyncio.CancelledError:
            if fut.done():
                raise
            cancelled = True
            continue
        if cancelled:
            raise asyncio.CancelledError
        return result


async def _shielded_wait(tasks: Sequence[asyncio.Future[Any]]) -> None:
    await _shielded(asyncio.wait(tasks))
