"""How users type the I/O bindings: checked by mypy --strict, and run (sqlite3 part)."""

from __future__ import annotations

import sqlite3
from typing import Any

import psycopg
import redis
import redis.asyncio as aredis

import tether
from tether.integrations import asyncpg as tapg
from tether.integrations import psycopg as tpg
from tether.integrations import redis as tredis
from tether.integrations import sqlite3 as tsqlite


def count(ctx: tether.Context, db: sqlite3.Connection) -> int:
    with tsqlite.bind(ctx, db) as conn:
        row: tuple[int] = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return row[0]


def fetch(ctx: tether.Context, conn: psycopg.Connection[Any]) -> object:
    with tpg.bind(ctx, conn) as c:
        return c.execute("SELECT 1").fetchone()


async def afetch(ctx: tether.Context, aconn: psycopg.AsyncConnection[Any]) -> object:
    async with tpg.bind(ctx, aconn) as c:
        cur = await c.execute("SELECT 1")
        return await cur.fetchone()


async def pgfetch(ctx: tether.Context, conn: Any) -> object:
    async with tapg.bind(ctx, conn) as c:
        return await c.fetchval("SELECT 1")


def pop(ctx: tether.Context, client: redis.Redis) -> object:
    with tredis.bind(ctx, client) as r:
        return r.blpop(["jobs"], timeout=0)


async def apop(ctx: tether.Context, client: aredis.Redis) -> object:
    async with tredis.bind(ctx, client) as r:
        return await r.blpop(["jobs"], timeout=0)


if __name__ == "__main__":
    db = sqlite3.connect(":memory:")
    with tether.with_timeout(tether.background(), 5) as ctx:
        print("ok", count(ctx, db))
    db.close()
