"""A driver connection that belongs to one event loop, remade when the loop changes.

Async drivers (psycopg, redis.asyncio) tie a connection to the loop that made it. A
store object outlives loops (tests, ``asyncio.run`` called twice, a server restarted
in-process), so it keeps one connection for the loop running now and drops the old
one when a different loop shows up. ``lock`` serialises use of one connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Generic, TypeVar

C = TypeVar("C")

__all__ = ["LoopBound", "LoopPool"]


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


class LoopPool(Generic[C]):
    """Up to ``size`` connections for the running loop, each used by one task at a time.

    ``async with pool.conn() as c:`` takes a free connection (or opens one, while fewer
    than ``size`` exist); on a normal exit it goes back to the free list, on an error or
    a cancellation it is discarded (its state is unknown) and the next user opens a new
    one. When another loop shows up, the old loop's free connections are discarded.
    """

    __slots__ = ("_connect", "_discard", "_free", "_loop", "_sem", "_size")

    def __init__(
        self, connect: Callable[[], Awaitable[C]], discard: Callable[[C], None], size: int
    ) -> None:
        self._connect = connect
        self._discard = discard
        self._size = size
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sem: asyncio.Semaphore | None = None
        self._free: list[C] = []

    def _bind(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._sem is None:
            self.drop()
            self._loop = loop
            self._sem = asyncio.Semaphore(self._size)
        return self._sem

    @contextlib.asynccontextmanager
    async def conn(self) -> AsyncIterator[C]:
        async with self._bind():
            c = self._free.pop() if self._free else None
            if c is None:
                c = await self._connect()
            try:
                yield c
            except BaseException:
                self._discard_quietly(c)
                raise
            self._free.append(c)

    def take_free(self) -> list[C]:
        free, self._free = self._free, []
        return free

    def _discard_quietly(self, c: C) -> None:
        try:
            self._discard(c)
        except Exception:  # pragma: no cover - closing a broken connection
            pass

    def drop(self) -> None:
        for c in self.take_free():
            self._discard_quietly(c)
