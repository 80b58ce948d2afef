"""SQLiteStore: the embedded default, one file shared by every process on the host."""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections.abc import Callable
from os import PathLike
from typing import TypeVar

from .._context import Context, background
from .._thread import to_thread
from ._store import Claim, Store, StoreError

__all__ = ["SQLiteStore"]

T = TypeVar("T")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}\Z")


def check_table(table: object) -> str:
    if not isinstance(table, str) or not _NAME.match(table):
        raise ValueError(
            f"tether: table must be an SQL identifier (letters, digits, _; at most 63), "
            f"got {table!r:.60}"
        )
    return table


class SQLiteStore(Store):
    """Idempotency records in an SQLite file (WAL), safe for many processes at once.

    ``path`` is the database file (created with its table on first use; ``":memory:"``
    works for one process). ``lease`` is how long a running key stays owned after its
    owner's last renewal (see ``Store``); ``table`` names the table; ``timeout`` is how
    long an operation waits for another process's write lock before it raises
    ``StoreError``. Each process opens one connection, lazily, on first use; operations
    run in tether's worker threads (``tether.to_thread``), one at a time per store.
    Taking a key is ``BEGIN IMMEDIATE``, a re-read and a write: the file's write lock
    makes it atomic across processes. A replay only reads (WAL readers never wait for
    a writer). Commits are ``synchronous=FULL``: a result, once stored, survives a power
    loss.

    Constructing one does not block (no I/O, no event loop) and is thread-safe; it raises
    ``TypeError``/``ValueError`` for a bad ``lease``, ``table`` or ``timeout``. No
    context, none ended. Close it with ``close()`` or ``aclose()``.

    Added in 0.1.
    """

    __module__ = "tether.idempotency"

    def __init__(
        self,
        path: str | PathLike[str],
        *,
        lease: float = 60,
        table: str = "tether_idempotency",
        timeout: float = 5.0,
    ) -> None:
        super().__init__(lease=lease)
        if not isinstance(path, str | PathLike):
            raise TypeError(
                f"tether: SQLiteStore needs a file path (str or os.PathLike), got "
                f"{type(path).__name__}"
            )
        self._path = path
        self._table = check_table(table)
        self._timeout = float(timeout)
        if not self._timeout > 0:
            raise ValueError(f"tether: timeout must be positive seconds, got {timeout!r}")
        self._lock = threading.Lock()  # guards _conn and every use of it
        self._conn: sqlite3.Connection | None = None

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self._path)!r}, lease={self.lease:g})"

    # -- plumbing ---------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self._path, timeout=self._timeout, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self._table} ("
                " key TEXT PRIMARY KEY,"
                " fingerprint TEXT NOT NULL,"
                " token TEXT,"  # the owner while running; NULL once done
                " done INTEGER NOT NULL,"
                " until REAL NOT NULL,"  # running: lease end; done: expiry (unix time)
                " result BLOB"
                ") WITHOUT ROWID"
            )
        except BaseException:
            conn.close()
            raise
        return conn

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        # SQLite's busy handler waits for a lock, except where waiting could deadlock
        # (a read snapshot upgraded to a write, WAL recovery, a schema change by another
        # process): those fail at once with "database is locked", and the cure is to
        # start over, so the whole step is retried until `timeout`.
        end = time.monotonic() + self._timeout
        pause = 0.001
        with self._lock:
            while True:
                try:
                    if self._conn is None:
                        self._conn = self._connect()
                    conn = self._conn
                    try:
                        return fn(conn)
                    except BaseException:
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                        raise
                except sqlite3.OperationalError as e:
                    if "locked" in str(e) and time.monotonic() + pause < end:
                        time.sleep(pause)
                        pause = min(pause * 2, 0.05)
                        continue
                    raise StoreError(f"tether: SQLite store {str(self._path)!r}: {e}") from e
                except (sqlite3.Error, OSError) as e:
                    raise StoreError(f"tether: SQLite store {str(self._path)!r}: {e}") from e

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def work(_ctx: Context) -> T:
            return self._call(fn)

        return await to_thread(background(), work)

    # -- the protocol -----------------------------------------------------------------

    async def begin(self, key: str, fingerprint: str, token: str) -> Claim:
        """Take ``key`` for ``token`` unless it is running or done; report what it found.

        A replay is one read; taking a key is ``BEGIN IMMEDIATE`` + re-read + write.
        Blocks (suspends) until then (at most ``timeout`` waiting for another process's
        write lock); not idempotent (a second call finds the key running); thread-safe.
        No context, none ended. Raises ``StoreError``.
        """
        t = self._table
        lease = self.lease

        def op(conn: sqlite3.Connection) -> Claim:
            sel = f"SELECT fingerprint, done, until, result FROM {t} WHERE key = ?"
            now = time.time()
            rows = conn.execute(sel, (key,)).fetchall()  # fetchall: ends the read
            if rows and rows[0][2] > now:
                return _claim(rows[0], now)
            conn.execute("BEGIN IMMEDIATE")
            now = time.time()
            rows = conn.execute(sel, (key,)).fetchall()
            if rows and rows[0][2] > now:  # another process took it meanwhile
                conn.execute("COMMIT")
                return _claim(rows[0], now)
            conn.execute(
                f"INSERT OR REPLACE INTO {t} (key, fingerprint, token, done, until, result)"
                " VALUES (?, ?, ?, 0, ?, NULL)",
                (key, fingerprint, token, now + lease),
            )
            conn.execute("COMMIT")
            return Claim("acquired", fingerprint)

        return await self._run(op)

    async def renew(self, key: str, token: str) -> bool:
        """Extend ``token``'s lease; ``False`` if it no longer owns ``key``.

        Blocks (suspends) for one write; idempotent; thread-safe. No context, none
        ended. Raises ``StoreError``.
        """
        sql = f"UPDATE {self._table} SET until = ? WHERE key = ? AND token = ? AND done = 0"
        lease = self.lease
        return await self._run(
            lambda c: c.execute(sql, (time.time() + lease, key, token)).rowcount == 1
        )

    async def complete(self, key: str, token: str, result: bytes, ttl: float) -> bool:
        """Store ``result`` for ``ttl`` seconds if ``token`` owns ``key``, else ``False``.

        Blocks (suspends) for one write; a repeat returns ``False`` (idempotent);
        thread-safe. No context, none ended. Raises ``StoreError``.
        """
        sql = (
            f"UPDATE {self._table} SET done = 1, token = NULL, until = ?, result = ?"
            " WHERE key = ? AND token = ? AND done = 0"
        )
        return await self._run(
            lambda c: c.execute(sql, (time.time() + ttl, result, key, token)).rowcount == 1
        )

    async def release(self, key: str, token: str) -> bool:
        """Delete running ``key`` if ``token`` owns it; ``False`` otherwise.

        Blocks (suspends) for one write; idempotent; thread-safe. No context, none
        ended. Raises ``StoreError``.
        """
        sql = f"DELETE FROM {self._table} WHERE key = ? AND token = ? AND done = 0"
        return await self._run(lambda c: c.execute(sql, (key, token)).rowcount == 1)

    async def sweep(self) -> int:
        """Delete expired results and lapsed leases; return how many went.

        Blocks (suspends) for one write; idempotent; thread-safe, during
        traffic. No context, none ended. Raises ``StoreError``.
        """
        sql = f"DELETE FROM {self._table} WHERE until <= ?"
        return await self._run(lambda c: c.execute(sql, (time.time(),)).rowcount)

    async def aclose(self) -> None:
        """Close this process's connection (reopened if the store is used again).

        Blocks (suspends) while closing; idempotent; thread-safe. No context, none
        ended. Raises nothing.
        """
        await to_thread(background(), lambda _c: self.close())

    def close(self) -> None:
        """Close this process's connection (reopened if the store is used again).

        Blocks while an operation in progress finishes; idempotent; thread-safe. No
        context, none ended. Raises nothing.
        """
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error:  # pragma: no cover - closing a broken handle
                pass


def _claim(row: tuple[str, int, float, bytes | None], now: float) -> Claim:
    fp, done, until, result = row
    if done:
        return Claim("done", fp, result=bytes(result or b""))
    return Claim("running", fp, wait=until - now)
