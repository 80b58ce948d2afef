"""asyncpg queries that stop on the server when their context ends.

::

    from tether.integrations import asyncpg as tapg

    async with tapg.bind(ctx, conn):
        await conn.fetch("SELECT ...")

When ``ctx`` ends inside the block, the task running the block is interrupted (as
``asyncio.timeout`` does, from any thread, through ``tether.after_func``). asyncpg
answers a cancelled query by sending the server a cancel request, and holds the
connection's next query until the server has stopped the statement, so the connection
is usable after the block. The block raises the context's error
(``tether.Canceled``/``tether.DeadlineExceeded``) ``from`` the ``CancelledError``; a
transaction begun inside the block with a bare ``BEGIN`` and left open is rolled back
(``async with conn.transaction():`` rolls back by itself).

Needs asyncpg: ``pip install 'tether[asyncpg]'``. Added in 0.1.
"""

from __future__ import annotations

import asyncio
import importlib
from types import TracebackType
from typing import Any

from .._context import Context, _owner
from ._bind import Interrupter, chain, entry_check, error, missing

__all__ = ["bind"]


def _asyncpg() -> Any:
    try:
        return importlib.import_module("asyncpg")  # asyncpg ships no type information
    except ImportError as e:
        raise missing("asyncpg", "asyncpg", e) from e


class bind:
    """``async with bind(ctx, conn):`` — the block, and its query, stop when ``ctx`` ends.

    Yields ``conn`` itself. On entry: raises ``ctx``'s error if ``ctx`` already ended
    (or its deadline already passed), before any round trip; otherwise arranges for
    the current task to be interrupted when ``ctx`` ends. asyncpg turns the interruption
    of a running query into a server-side cancel.

    On exit: if the block was interrupted by ``ctx`` (and by nothing else), the task's
    cancellation is withdrawn (``task.uncancel()``), the block waits (up to 5 s) until
    asyncpg has sent the server its cancel request, a transaction that the block began
    and left open is rolled back, and a fresh ``Canceled``/``DeadlineExceeded`` is
    raised ``from`` the ``CancelledError``. A cancellation from elsewhere, and every
    other exception, passes through untouched.

    Entering does not block (no round trip); exiting suspends only after an
    interruption, for the cancel request and a rollback. Each
    call makes a new binding; blocks may nest. ``ctx`` may be cancelled from any thread
    or event loop. Raises ``ImportError`` without asyncpg, ``TypeError`` for a
    ``None``/non-Context ``ctx``, for a ``conn`` that is not an asyncpg connection (or a
    pool's), or for ``with`` instead of ``async with``,
    ``RuntimeError`` outside an asyncio task.
    """

    __slots__ = ("_c", "_conn", "_int", "_tx")

    def __init__(self, ctx: Context, conn: Any) -> None:
        apg = _asyncpg()
        _owner(ctx)
        if not isinstance(conn, (apg.Connection, apg.pool.PoolConnectionProxy)):
            raise TypeError(
                f"tether: bind(ctx, conn) needs an asyncpg connection, got "
                f"{type(conn).__name__}; pass `await asyncpg.connect(...)` or a connection "
                "acquired from a pool"
            )
        self._c = ctx
        self._conn = conn
        self._int: Interrupter | None = None
        self._tx = False

    def __enter__(self) -> None:
        raise TypeError("tether: asyncpg connections are async: use `async with bind(ctx, conn):`")

    def __exit__(self, *exc_info: object) -> None:  # pragma: no cover - __enter__ raised
        pass

    async def __aenter__(self) -> Any:
        c = self._c = entry_check(self._c)
        conn = self._conn
        self._tx = conn.is_in_transaction()
        self._int = Interrupter(c)
        return conn

    async def __aexit__(
        self,
        et: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._int is not None
        if not self._int.close(exc):
            return None
        assert exc is not None
        conn = self._conn
        # asyncpg sends the cancel request from a task of its own; wait for it, so that
        # when the block has raised the server has been told (private attribute, read
        # defensively: without it the request still goes out, a moment later).
        pending = [t for t in getattr(conn, "_cancellations", ()) if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=5.0)
        if not self._tx and not conn.is_closed() and conn.is_in_transaction():
            await conn.execute("ROLLBACK")
        raise chain(error(self._c), exc)
