"""psycopg 3 queries that stop on the server when their context ends.

::

    from tether.integrations import psycopg as tpg

    with tpg.bind(ctx, conn):                      # psycopg.Connection
        conn.execute("SELECT ...")
    async with tpg.bind(ctx, aconn):               # psycopg.AsyncConnection
        await aconn.execute("SELECT ...")

When ``ctx`` ends inside the block, a cancel request goes to the server (and goes
again for any statement started later in the block)
(``conn.cancel_safe()``, from a ``tether.after_func`` worker, since it blocks for a round
trip; for an ``AsyncConnection`` the worker runs ``aconn.cancel_safe()`` on the
connection's event loop). The server stops the statement, psycopg raises
``QueryCanceled`` in the block, and the block raises the context's error
(``tether.Canceled``/``tether.DeadlineExceeded``) ``from`` it. A transaction that began
inside the block and failed is rolled back, so the connection is idle and usable after
the block; one that was already open on entry is the caller's to roll back (psycopg's
``with conn.transaction():`` does).

The async form interrupts the *statement*, not the task: an ``await`` on something else
inside the block is not cut short (use ``async with tether.with_timeout(...)`` for that).

Needs psycopg 3.2 or later: ``pip install 'tether[psycopg]'``. Added in 0.1.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

from .._context import Context, _owner
from ._bind import Watch, chain, ended, entry_check, error, missing

if TYPE_CHECKING:
    import psycopg

__all__ = ["bind"]

_POLL = 0.002  # how often a cancelling worker looks for a statement to stop
_RECANCEL = 0.02  # how long a cancelled statement may take to stop before another cancel


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError as e:
        raise missing("psycopg", "psycopg", e) from e
    return psycopg


class bind:
    """``with bind(ctx, conn):`` / ``async with bind(ctx, aconn):`` — statements stop on
    the server when ``ctx`` ends.

    Use ``with`` for a ``psycopg.Connection`` and ``async with`` for a
    ``psycopg.AsyncConnection``; both yield the connection itself. On entry: raises
    ``ctx``'s error if ``ctx`` already ended (or its deadline already passed), before
    any round trip; otherwise registers a server-side cancel (``cancel_safe``) with
    ``tether.after_func``: from the moment ``ctx`` ends until the block exits, any
    statement running on the connection is cancelled (PostgreSQL ignores a cancel that
    finds the connection idle, so one sent between two statements is not enough).

    On exit: the watch is stopped, waiting up to ``cancel_timeout`` seconds for a cancel
    already in flight, so no cancel can reach a statement run after the block. If the
    block raised psycopg's ``QueryCanceled`` because ``ctx`` ended, a transaction that
    began in the block is rolled back and a fresh ``Canceled``/``DeadlineExceeded`` is
    raised ``from`` the driver's error; any other exception (including a
    ``QueryCanceled`` someone else caused) passes through untouched.

    Entering does not block (no round trip); exiting blocks (or, async, suspends) only
    for a rollback after a cancel or for a cancel already in flight. Each call makes a
    new binding; blocks may nest. Thread-safe as psycopg is: ``ctx`` may be cancelled
    from any thread. Raises ``ImportError`` without psycopg, ``TypeError`` for a
    ``None``/non-Context ``ctx`` or for ``with`` on an ``AsyncConnection`` (and
    ``async with`` on a ``Connection``), ``ValueError`` for a non-positive
    ``cancel_timeout``.
    """

    __slots__ = ("_c", "_cancel_timeout", "_conn", "_exited", "_tx", "_watch")

    def __init__(
        self,
        ctx: Context,
        conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any],
        *,
        cancel_timeout: float = 5.0,
    ) -> None:
        _psycopg()
        _owner(ctx)
        if not cancel_timeout > 0:
            raise ValueError(
                f"tether: cancel_timeout must be a positive number of seconds, "
                f"got {cancel_timeout!r}"
            )
        self._c = ctx
        self._conn = conn
        self._cancel_timeout = float(cancel_timeout)
        self._watch: Watch | None = None
        self._tx = False

    # -- sync ------------------------------------------------------------------------

    def __enter__(self) -> psycopg.Connection[Any]:
        pg = _psycopg()
        conn = self._conn
        if not isinstance(conn, pg.Connection):
            raise TypeError(
                f"tether: `with bind(ctx, conn)` needs a psycopg.Connection, got "
                f"{type(conn).__name__}; use `async with bind(ctx, aconn)` for an "
                "AsyncConnection"
            )
        c = self._c = entry_check(self._c)
        self._tx = conn.info.transaction_status != pg.pq.TransactionStatus.IDLE
        timeout = self._cancel_timeout

        def cancel() -> None:
            conn.cancel_safe(timeout=timeout)

        self._exited = False
        self._watch = Watch(c, lambda: self._keep_cancelling(cancel))
        return cast("psycopg.Connection[Any]", conn)

    def __exit__(
        self,
        et: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._watch is not None
        self._exited = True
        self._watch.stop(self._cancel_timeout)
        if exc is None or not self._ours(exc):
            return None
        conn = self._conn
        if not self._tx and self._failed_tx():
            conn.rollback()
        raise chain(error(self._c), exc)

    # -- async -----------------------------------------------------------------------

    async def __aenter__(self) -> psycopg.AsyncConnection[Any]:
        pg = _psycopg()
        aconn = self._conn
        if not isinstance(aconn, pg.AsyncConnection):
            raise TypeError(
                f"tether: `async with bind(ctx, aconn)` needs a psycopg.AsyncConnection, got "
                f"{type(aconn).__name__}; use `with bind(ctx, conn)` for a Connection"
            )
        c = self._c = entry_check(self._c)
        self._tx = aconn.info.transaction_status != pg.pq.TransactionStatus.IDLE
        loop = asyncio.get_running_loop()
        timeout = self._cancel_timeout

        def cancel() -> None:  # on tether's after_func worker
            try:
                fut = asyncio.run_coroutine_threadsafe(aconn.cancel_safe(timeout=timeout), loop)
            except RuntimeError:  # the loop closed: no statement left to stop
                return
            fut.result(timeout + 1.0)

        self._exited = False
        self._watch = Watch(c, lambda: self._keep_cancelling(cancel))
        return cast("psycopg.AsyncConnection[Any]", aconn)

    async def __aexit__(
        self,
        et: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._watch is not None
        self._exited = True
        await self._watch.astop(self._cancel_timeout)
        if exc is None or not self._ours(exc):
            return None
        aconn = self._conn
        if not self._tx and self._failed_tx():
            await aconn.rollback()  # type: ignore[misc]
        raise chain(error(self._c), exc)

    # -- shared ----------------------------------------------------------------------

    def _keep_cancelling(self, send: Callable[[], None]) -> None:
        """On the after_func worker, from the moment ``ctx`` ended until the block exits:
        cancel whatever statement runs.

        PostgreSQL ignores a cancel that finds the backend idle, so one cancel sent
        between two statements of the block would let the second run to its end. While
        the block has not exited, a statement in progress (libpq's ``ACTIVE`` status)
        is cancelled, and cancelled again every ``_RECANCEL`` seconds while it runs.
        """
        pgconn = self._conn.pgconn
        active = _psycopg().pq.TransactionStatus.ACTIVE
        last = -_RECANCEL
        while not self._exited:
            if pgconn.transaction_status == active:
                now = time.monotonic()
                if now - last >= _RECANCEL:
                    last = now
                    try:
                        send()
                    except Exception as e:  # the server is gone, the cancel timed out...
                        import logging

                        logging.getLogger("tether").warning(
                            "tether: could not cancel a PostgreSQL statement: %r", e
                        )
                        return
                    continue
            time.sleep(_POLL)

    def _ours(self, exc: BaseException) -> bool:
        pg = _psycopg()
        return isinstance(exc, pg.errors.QueryCanceled) and ended(self._c)

    def _failed_tx(self) -> bool:
        pg = _psycopg()
        return bool(self._conn.info.transaction_status == pg.pq.TransactionStatus.INERROR)
