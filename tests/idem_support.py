"""Shared helpers for the idempotency tests: stores on each backend, a clean slate each."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests.conftest import require_service

from tether import idempotency

PG = os.environ.get("TETHER_TEST_PG", "host=127.0.0.1 port=5432 user=postgres dbname=test")
REDIS = os.environ.get("TETHER_TEST_REDIS", "redis://127.0.0.1:6379/0")
BACKENDS = ["sqlite", "postgres", "redis"]


def dead_port() -> int:
    """A loopback port where nothing listens (bound, then closed)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Backend:
    """Makes stores of one kind that share one table / prefix, and cleans it up."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        tag = os.urandom(4).hex()
        self.table = f"tether_idem_test_{tag}"
        self.prefix = f"tether:idem:test:{tag}:"
        self.path = tmp_path / "idem.db"
        if kind == "postgres":
            require_service("127.0.0.1", 5432, "PostgreSQL")
        elif kind == "redis":
            require_service("127.0.0.1", 6379, "Redis")

    def spec(self) -> str:
        """How a server subprocess names this store (see tests/idem_app.py)."""
        if self.kind == "sqlite":
            return f"sqlite|{self.path}"
        if self.kind == "postgres":
            return f"postgres|{self.table}|{PG}"
        return f"redis|{self.prefix}|{REDIS}"

    def store(self, **kw: Any) -> idempotency.Store:
        return make_store(self.spec(), **kw)

    def down(self, **kw: Any) -> idempotency.Store:
        """A store of this kind that cannot be reached."""
        if self.kind == "sqlite":
            return idempotency.SQLiteStore(self.path / "no" / "such" / "dir.db", **kw)
        if self.kind == "postgres":
            return idempotency.PostgresStore(
                f"host=127.0.0.1 port={dead_port()} user=postgres dbname=test",
                table=self.table,
                timeout=2,
                **kw,
            )
        return idempotency.RedisStore(
            f"redis://127.0.0.1:{dead_port()}/0", prefix=self.prefix, timeout=2, **kw
        )

    def cleanup(self) -> None:
        if self.kind == "postgres":
            import psycopg

            with psycopg.connect(PG, autocommit=True) as c:
                c.execute(f"DROP TABLE IF EXISTS {self.table}")
        elif self.kind == "redis":
            import redis

            r = redis.Redis.from_url(REDIS)
            try:
                keys = list(r.scan_iter(self.prefix + "*"))
                if keys:
                    r.delete(*keys)
            finally:
                r.close()


def make_store(spec: str, **kw: Any) -> idempotency.Store:
    """A store from a spec: ``sqlite|PATH``, ``postgres|TABLE|CONNINFO``, ``redis|PREFIX|URL``."""
    kind, *rest = spec.split("|")
    if kind == "sqlite":
        return idempotency.SQLiteStore(rest[0], **kw)
    if kind == "postgres":
        return idempotency.PostgresStore(rest[1], table=rest[0], **kw)
    if kind == "redis":
        return idempotency.RedisStore(rest[1], prefix=rest[0], **kw)
    raise ValueError(spec)


def open_backend(kind: str, tmp_path: Path) -> Iterator[Backend]:
    """The body of a test module's ``backend`` fixture."""
    b = Backend(kind, tmp_path)
    try:
        yield b
    finally:
        b.cleanup()


def ledger_count(path: Path, key: str) -> int:
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if line == f"charge {key}")


Factory = Callable[..., idempotency.Store]
