"""PostgresStore: one table shared by every instance of a service (psycopg 3, async)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ._loopbound import LoopPool
from ._sqlite import check_table
from ._store import Claim, Store, StoreError

if TYPE_CHECKING:
    import psycopg

__all__ = ["PostgresStore"]

T = TypeVar("T")


def _import_psycopg() -> Any:
    try:
        import psycopg
    except ImportError as e:  # pragma: no cover - tested in a subprocess without it
        raise ImportError(
            "tether: tether.idempotency.PostgresStore needs the 'psycopg' extra: "
            "pip install 'tether[psycopg]'"
        ) from e
    return psycopg


class PostgresStore(Store):
    """Idempotency records in a PostgreSQL table, shared by every instance of a service.

    ``conninfo`` is a libpq string (``"host=db dbname=app"``) or a ``postgresql://``
    URI. ``lease`` is how long a running key stays owned after its owner's last renewal
    (see ``Store``); ``table`` names the table (created on first use); ``timeout``
    bounds every operation, connecting included (then ``StoreError``). Each process
    keeps up to ``max_connections`` connections per event loop, opened lazily, each used
    by one operation at a time. A replay is one plain ``SELECT``; a new key one more
    statement, ``INSERT ... ON CONFLICT DO NOTHING``; a key whose lease lapsed is taken
    over in a transaction: the row locked with ``SELECT ... FOR UPDATE`` and re-checked
    inside it.
    Times are the server's (``clock_timestamp()``), so hosts need no synchronised
    clocks.

    Constructing one does not block (no I/O, no event loop); it raises ``ImportError``
    naming the extra when psycopg is missing, ``TypeError``/``ValueError`` for a bad
    argument. Thread-safe to construct; use it from coroutines. No context, none ended.
    Close it with ``aclose()`` (or ``close()`` once its loop stopped).

    Added in 0.1.
    """

    __module__ = "tether.idempotency"

    def __init__(
        self,
        conninfo: str,
        *,
        lease: float = 60,
        table: str = "tether_idempotency",
        timeout: float = 5.0,
        max_connections: int = 4,
    ) -> None:
        super().__init__(lease=lease)
        self._psycopg = _import_psycopg()
        if not isinstance(conninfo, str):
            raise TypeError(
                "tether: PostgresStore needs a libpq connection string or a postgresql:// "
                f"URI, got {type(conninfo).__name__}"
            )
        self._conninfo = conninfo
        self._table = check_table(table)
        self._timeout = float(timeout)
        if not self._timeout > 0:
            raise ValueError(f"tether: timeout must be positive seconds, got {timeout!r}")
        if isinstance(max_connections, bool) or not isinstance(max_connections, int):
            raise TypeError(f"tether: max_connections is an int, got {max_connections!r:.40}")
        if max_connections < 1:
            raise ValueError(f"tether: max_connections must be >= 1, got {max_connections}")
        self._pool: LoopPool[psycopg.AsyncConnection[Any]] = LoopPool(
            self._connect, _discard, max_connections
        )

    def __repr__(self) -> str:
        return f"PostgresStore(table={self._table!r}, lease={self.lease:g})"

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        pg = self._psycopg
        conn: psycopg.AsyncConnection[Any] = await pg.AsyncConnection.connect(
            self._conninfo, autocommit=True, connect_timeout=max(1, round(self._timeout))
        )
        try:
            t = self._table
            async with conn.transaction():
                # concurrent CREATE TABLE IF NOT EXISTS can fail: serialise it
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (t,))
                await conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {t} ("
                    " key text PRIMARY KEY,"
                    " fingerprint text NOT NULL,"
                    " token text,"  # the owner while running; NULL once done
                    " done boolean NOT NULL,"
                    " until timestamptz NOT NULL,"  # running: lease end; done: expiry
                    " result bytea)"
                )
                await conn.execute(f"CREATE INDEX IF NOT EXISTS {t}_until ON {t} (until)")
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _run(self, op: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]) -> T:
        pg = self._psycopg
        try:
            async with asyncio.timeout(self._timeout), self._pool.conn() as conn:
                return await op(conn)
        except (pg.Error, OSError, TimeoutError) as e:
            # the pool discarded the connection (unknown state): the next use opens one
            raise StoreError(f"tether: PostgreSQL store: {e or type(e).__name__}") from e

    async def begin(self, key: str, fingerprint: str, token: str) -> Claim:
        """Take ``key`` for ``token`` unless it is running or done; report what it found.

        A replay is one ``SELECT``; a new key one ``INSERT`` more; a lapsed key a short
        transaction with a row lock. Blocks (suspends) until then (at most ``timeout``);
        not idempotent (a second call finds the key running); thread-safe. No context,
        none ended. Raises ``StoreError``.
        """
        t = self._table
        sel = (
            "SELECT fingerprint, done, result,"
            " extract(epoch FROM until - clock_timestamp())::float8"
            f" FROM {t} WHERE key = %s"
        )
        lease = self.lease

        async def op(conn: psycopg.AsyncConnection[Any]) -> Claim:
            row = await (await conn.execute(sel, (key,))).fetchone()
            if row is not None and row[3] > 0:
                return _claim(row)
            if row is None:  # a new key: one atomic statement takes it
                cur = await conn.execute(
                    f"INSERT INTO {t} (key, fingerprint, token, done, until) VALUES"
                    " (%s, %s, %s, false, clock_timestamp() + make_interval(secs => %s))"
                    " ON CONFLICT (key) DO NOTHING",
                    (key, fingerprint, token, lease),
                )
                if cur.rowcount == 1:
                    return Claim("acquired", fingerprint)
            # lapsed (or just taken by another): lock the row, re-check, take it over
            async with conn.transaction():
                row = await (await conn.execute(sel + " FOR UPDATE", (key,))).fetchone()
                if row is not None and row[3] > 0:
                    return _claim(row)
                await conn.execute(
                    f"INSERT INTO {t} (key, fingerprint, token, done, until) VALUES"
                    " (%s, %s, %s, false, clock_timestamp() + make_interval(secs => %s))"
                    " ON CONFLICT (key) DO UPDATE SET fingerprint = excluded.fingerprint,"
                    " token = excluded.token, done = false, until = excluded.until,"
                    " result = NULL",
                    (key, fingerprint, token, lease),
                )
                return Claim("acquired", fingerprint)

        return await self._run(op)

    async def _rowcount(self, sql: str, args: tuple[object, ...]) -> int:
        async def op(conn: psycopg.AsyncConnection[Any]) -> int:
            return (await conn.execute(sql, args)).rowcount

        return await self._run(op)

    async def renew(self, key: str, token: str) -> bool:
        """Extend ``token``'s lease; ``False`` if it no longer owns ``key``.

        Blocks (suspends) for one statement; idempotent; thread-safe. No context,
        none ended. Raises ``StoreError``.
        """
        sql = (
            f"UPDATE {self._table} SET until = clock_timestamp() + make_interval(secs => %s)"
            " WHERE key = %s AND token = %s AND NOT done"
        )
        return await self._rowcount(sql, (self.lease, key, token)) == 1

    async def complete(self, key: str, token: str, result: bytes, ttl: float) -> bool:
        """Store ``result`` for ``ttl`` seconds if ``token`` owns ``key``, else ``False``.

        Blocks (suspends) for one statement; a repeat returns ``False`` (idempotent);
        thread-safe. No context, none ended. Raises ``StoreError``.
        """
        sql = (
            f"UPDATE {self._table} SET done = true, token = NULL, result = %s,"
            " until = clock_timestamp() + make_interval(secs => %s)"
            " WHERE key = %s AND token = %s AND NOT done"
        )
        return await self._rowcount(sql, (result, float(ttl), key, token)) == 1

    async def release(self, key: str, token: str) -> bool:
        """Delete running ``key`` if ``token`` owns it; ``False`` otherwise.

        Blocks (suspends) for one statement; idempotent; thread-safe. No context,
        none ended. Raises ``StoreError``.
        """
        sql = f"DELETE FROM {self._table} WHERE key = %s AND token = %s AND NOT done"
        return await self._rowcount(sql, (key, token)) == 1

    async def sweep(self) -> int:
        """Delete expired results and lapsed leases; return how many went.

        Blocks (suspends) for one statement; idempotent; thread-safe, during
        traffic. No context, none ended. Raises ``StoreError``.
        """
        sql = f"DELETE FROM {self._table} WHERE until <= clock_timestamp()"
        return await self._rowcount(sql, ())

    async def aclose(self) -> None:
        """Close the idle connections of the running loop (reopened if used again).

        Blocks (suspends) while closing; idempotent; thread-safe, from the loop that
        used the store. No context, none ended. Raises nothing.
        """
        for conn in self._pool.take_free():
            try:
                await conn.close()
            except Exception:  # pragma: no cover - closing a broken connection
                pass

    def close(self) -> None:
        """Close the idle connections without their event loop (e.g. after it stopped).

        Non-blocking beyond closing the sockets; idempotent; thread-safe. No context,
        none ended. Raises nothing.
        """
        self._pool.drop()


def _discard(conn: psycopg.AsyncConnection[Any]) -> None:
    conn.pgconn.finish()


def _claim(row: tuple[Any, ...]) -> Claim:
    fp, done, result, left = row
    if done:
        return Claim("done", fp, result=bytes(result or b""))
    return Claim("running", fp, wait=float(left))
