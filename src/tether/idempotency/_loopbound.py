"""A driver connection that belongs to one event loop, remade when the loop changes.

Async drivers (psycopg, redis.asyncio) tie a connection to the loop that made it. A
store object outlives loops (tests, ``asyncio.run`` called twice, a server restarted
in-process), so it keeps one connection for the loop running now and drops the old
one when a different loop shows up. ``lock`` serialises use of one connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

C = TypeVar("C")

__all__ = ["LoopBound"]


class LoopBound(Generic[C]):
    __slots__ = ("_conn", "_connect", "_discard", "_lock", "_loop")

    def __init__(self, connect: Callable[[], Awaitable[C]], discard: Callable[[C], None]) -> None:
        self._connect = connect
        self._discard = discard  # closes a connection without its loop (sync)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: C | None = None
        self._lock: asyncio.Lock | None = None

    def lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self.drop()
            self._loop = loop
            self._lock = asyncio.Lock()
        assert self._lock is not None
        return self._lock

    async def get(self) -> C:
        """The connection for the running loop; call it holding ``lock()``."""
        if self._conn is None:
            self._conn = await self._connect()
        return self._conn

    def forget(self) -> C | None:
        """Detach the current connection (after an error) and return it."""
        conn, self._conn = self._conn, None
        return conn

    def drop(self) -> None:
        conn = self.forget()
        if conn is not None:
            try:
                self._discard(conn)
            except Exception:  # pragma: no cover - closing a broken connection
                pass
