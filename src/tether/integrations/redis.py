"""redis-py commands bounded by a context.

::

    from tether.integrations import redis as tredis

    with tredis.bind(ctx, client) as r:            # redis.Redis
        item = r.blpop(["jobs"], timeout=0)        # waits at most ctx's remaining budget
    async with tredis.bind(ctx, aclient) as r:     # redis.asyncio.Redis
        item = await r.blpop(["jobs"], timeout=0)  # interrupted when ctx ends

**Sync** (``with``): a redis-py client is shared by threads, so ``bind`` does not touch
it: it yields a *bound view*, a shallow copy sharing the client's connection pool, whose
every command

- raises the context's error before any round trip once ``ctx`` ended;
- has its blocking timeout clamped to the remaining budget (``BLPOP``/``BRPOP``/
  ``BLMOVE``/``BRPOPLPUSH``/``BLMPOP``/``BZPOPMIN``/``BZPOPMAX``/``BZMPOP`` seconds,
  ``XREAD``/``XREADGROUP`` ``BLOCK`` milliseconds; ``0``, "forever", becomes the
  budget), so the *server* ends the wait at the deadline and the connection stays
  pooled; a wait that the clamp cut short raises ``DeadlineExceeded`` instead of
  returning the empty result;
- reads with a socket timeout clamped to the budget (plus a small slack for a clamped
  blocking command), so a stalled server costs at most the budget;
- is cut off when ``ctx`` is cancelled: the socket is shut down from
  ``tether.after_func``, which ends the blocked read, and Redis drops the connection's
  blocked command (the connection is then discarded, not returned to the pool);
- is sent once: a bound command is not retried by the client's ``Retry`` policy (a
  retry belongs under the caller's context: see ``tether.integrations.tenacity``).

A failure the context caused raises ``tether.Canceled``/``tether.DeadlineExceeded``
``from`` redis-py's ``ConnectionError``/``TimeoutError``; every other error passes
through. Pipelines and pub/sub made from the view are not clamped.

**Async** (``async with``): yields the client itself; the task running the block is
interrupted when ``ctx`` ends (as ``asyncio.timeout`` does), redis-py disconnects the
interrupted connection, Redis drops its blocked command, and the block raises the
context's error ``from`` the ``CancelledError``.

Needs redis-py 5.3 or later: ``pip install 'tether[redis]'``. Added in 0.1.
"""

from __future__ import annotations

import copy
import math
import socket
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

from .. import _clock
from .._context import Context, _owner
from .._errors import DeadlineExceeded
from ._bind import Interrupter, Watch, chain, ended, entry_check, error, missing

if TYPE_CHECKING:
    import redis
    import redis.asyncio

__all__ = ["BLOCKING_SLACK", "bind"]

BLOCKING_SLACK = 0.25
"""Seconds the socket waits past the budget for the server's answer to a clamped
blocking command (the server answers at the deadline; this covers a stalled server)."""


def _redis() -> Any:
    try:
        import redis
    except ImportError as e:
        raise missing("redis", "redis", e) from e
    return redis


# Blocking commands: where their timeout is, and its unit.
_LAST_SECONDS = frozenset({b"BLPOP", b"BRPOP", b"BRPOPLPUSH", b"BLMOVE", b"BZPOPMIN", b"BZPOPMAX"})
_FIRST_SECONDS = frozenset({b"BLMPOP", b"BZMPOP"})
_BLOCK_MS = frozenset({b"XREAD", b"XREADGROUP"})


def _name(arg: object) -> bytes:
    if isinstance(arg, str):
        return arg.upper().encode()
    if isinstance(arg, bytes):
        return arg.upper()
    return b""


def _number(arg: object) -> float | None:
    try:
        v = float(arg)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v >= 0 else None


def _clamp(args: tuple[Any, ...], rem: float) -> tuple[tuple[Any, ...], bool]:
    """``args`` with a blocking timeout no longer than ``rem``; whether it was cut."""
    name = _name(args[0])
    if name in _LAST_SECONDS or name in _FIRST_SECONDS:
        i = len(args) - 1 if name in _LAST_SECONDS else 1
        if i < 1 or i >= len(args):
            return args, False
        user = _number(args[i])
        secs = math.ceil(rem * 1000) / 1000  # ms precision, rounded up: never early
        if user is None or (user != 0 and user <= secs):
            return args, False
        return (*args[:i], f"{secs:.3f}", *args[i + 1 :]), True
    if name in _BLOCK_MS:
        for i in range(1, len(args) - 1):
            tok = _name(args[i])
            if tok == b"STREAMS":
                break
            if tok == b"BLOCK":
                user = _number(args[i + 1])
                ms = math.ceil(rem * 1000)
                if user is None or (user != 0 and user <= ms):
                    return args, False
                return (*args[: i + 1], ms, *args[i + 2 :]), True
    return args, False


_NO_RETRY: Any = None


def _no_retry() -> Any:
    global _NO_RETRY
    if _NO_RETRY is None:
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        _NO_RETRY = Retry(NoBackoff(), 0)
    return _NO_RETRY


def _shutdown(conn: Any) -> None:
    sock = getattr(conn, "_sock", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _restore(conn: Any, sock: Any) -> None:
    current: Any = getattr(conn, "_sock", None)
    if current is not None and current is sock:  # still connected on the same socket
        current.settimeout(conn.socket_timeout)


class _Command:
    """The bound view's ``execute_command``: one command, bounded by the context."""

    __slots__ = ("_c", "_client")

    def __init__(self, c: Context, client: Any) -> None:
        self._c = c
        self._client = client

    def __call__(self, *args: Any, **options: Any) -> Any:
        c = self._c
        if ended(c):
            raise error(c)  # before any round trip
        r = _redis()
        deadline = c._deadline
        rem = None if deadline is None else deadline - _clock.now()
        clamped = False
        if rem is not None:
            args, clamped = _clamp(args, rem)
        client = self._client
        pool = client.connection_pool
        single = client.connection
        conn = single if single is not None else pool.get_connection()
        lock = client.single_connection_lock if single is not None else None
        if lock is not None:
            lock.acquire()

        cut = []

        def stop() -> None:  # on tether's after_func worker
            # A clamped blocking command ends at the deadline by itself, on the server:
            # only a cancellation (or a command that is not clamped) cuts the socket.
            if not (clamped and isinstance(c._err, DeadlineExceeded)):
                cut.append(True)
                _shutdown(conn)

        watch = Watch(c, stop)
        sock: Any = None
        retry, connect_timeout = conn.retry, conn.socket_connect_timeout
        try:
            conn.retry = _no_retry()
            if rem is not None:
                conn.socket_connect_timeout = max(
                    0.001, rem if connect_timeout is None else min(connect_timeout, rem)
                )
                conn.connect()
                sock = getattr(conn, "_sock", None)
                if sock is not None:
                    t = rem + BLOCKING_SLACK if clamped else rem
                    cur = sock.gettimeout()
                    sock.settimeout(max(0.001, t if cur is None else min(cur, t)))
            try:
                conn.send_command(*args, **options)
                result = client.parse_response(conn, args[0], **options)
            except (r.ConnectionError, r.TimeoutError) as e:
                if ended(c):
                    conn.disconnect()
                    raise chain(error(c), e) from e
                raise
            if clamped and not result:
                raise error(c)  # the server ended the wait at the (clamped) deadline
            return result
        finally:
            conn.retry, conn.socket_connect_timeout = retry, connect_timeout
            if watch.stop(5.0) and cut:
                conn.disconnect()  # its socket was shut down
            elif sock is not None:
                _restore(conn, sock)
            if lock is not None:
                lock.release()
            if single is None:
                pool.release(conn)


class bind:
    """``with bind(ctx, client) as r:`` / ``async with bind(ctx, aclient) as r:`` —
    Redis commands bounded by ``ctx``.

    Sync: ``client`` is a ``redis.Redis``; yields a bound view of it (a shallow copy that
    shares its pool; the client itself is untouched, so other threads using it are not
    affected). Each command on the view raises ``ctx``'s error before any round trip if
    ``ctx`` ended, has its blocking timeout and socket timeout clamped to the remaining
    budget, and is cut off (socket shut down, connection discarded) when ``ctx`` is
    cancelled. Async: ``aclient`` is a ``redis.asyncio.Redis``; yields ``aclient`` and
    interrupts the task running the block when ``ctx`` ends.

    Either way the block raises a fresh ``Canceled``/``DeadlineExceeded``, ``from`` the
    driver's ``ConnectionError``/``TimeoutError`` (sync) or the ``CancelledError``
    (async), for a failure the context caused; every other exception, and a cancellation
    from elsewhere, passes through untouched. The client is usable after the block.

    Entering does not block (no round trip) and raises ``ctx``'s error at once if it
    already ended (or its deadline passed). Commands block (sync) or suspend (async) at
    most for the budget, plus ``BLOCKING_SLACK`` for a stalled server. Each call makes a
    new binding; blocks may nest; the view may be used from any thread, and ``ctx``
    cancelled from any thread. Raises ``ImportError`` without redis-py, ``TypeError``
    for a ``None``/non-Context ``ctx`` or for ``with`` on an asyncio client (and
    ``async with`` on a sync one), ``RuntimeError`` for ``async with`` outside a task.
    """

    __slots__ = ("_c", "_client", "_int")

    def __init__(self, ctx: Context, client: redis.Redis | redis.asyncio.Redis) -> None:
        _redis()
        _owner(ctx)
        self._c = ctx
        self._client = client
        self._int: Interrupter | None = None

    def __enter__(self) -> redis.Redis:
        r = _redis()
        client = self._client
        if not isinstance(client, r.Redis):
            raise TypeError(
                f"tether: `with bind(ctx, client)` needs a redis.Redis, got "
                f"{type(client).__name__}; use `async with bind(ctx, aclient)` for "
                "redis.asyncio.Redis"
            )
        c = self._c = entry_check(self._c)
        view = copy.copy(client)
        view.execute_command = _Command(c, client)
        # redis.Redis.__del__ calls close(), which releases the client's single
        # connection and, for a client that made its own pool, closes the pool: the
        # view owns neither (its commands use the client's), so it must release nothing.
        view.connection = None
        view.auto_close_connection_pool = False
        return cast("redis.Redis", view)

    def __exit__(
        self,
        et: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def __aenter__(self) -> redis.asyncio.Redis:
        _redis()
        import redis.asyncio as ra

        client = self._client
        if not isinstance(client, ra.Redis):
            raise TypeError(
                f"tether: `async with bind(ctx, aclient)` needs a redis.asyncio.Redis, got "
                f"{type(client).__name__}; use `with bind(ctx, client)` for redis.Redis"
            )
        c = self._c = entry_check(self._c)
        self._int = Interrupter(c)
        return client

    async def __aexit__(
        self,
        et: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._int is not None
        if self._int.close(exc):
            assert exc is not None
            raise chain(error(self._c), exc)
