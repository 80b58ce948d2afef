"""RedisStore: a lease (SET NX semantics) and the stored result in one Redis hash."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ._loopbound import LoopBound
from ._store import Claim, Store, StoreError

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["RedisStore"]

T = TypeVar("T")

# Each script is one atomic step on the hash KEYS[1]: f = fingerprint, t = owner token
# (while running), d = "1" once done, r = the result. The key's own expiry is the lease
# while running and the ttl once done, so Redis itself forgets lapsed leases and old
# results.
_BEGIN = """
local v = redis.call('HMGET', KEYS[1], 'f', 'd', 'r')
if not v[1] then
  redis.call('HSET', KEYS[1], 'f', ARGV[1], 't', ARGV[2], 'd', '0')
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {'a'}
end
if v[2] == '1' then return {'d', v[1], v[3]} end
return {'r', v[1], tostring(redis.call('PTTL', KEYS[1]))}
"""
_RENEW = """
local v = redis.call('HMGET', KEYS[1], 't', 'd')
if v[1] == ARGV[1] and v[2] == '0' then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
_COMPLETE = """
local v = redis.call('HMGET', KEYS[1], 't', 'd')
if v[1] == ARGV[1] and v[2] == '0' then
  redis.call('HSET', KEYS[1], 'd', '1', 'r', ARGV[2])
  redis.call('HDEL', KEYS[1], 't')
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
return 0
"""
_RELEASE = """
local v = redis.call('HMGET', KEYS[1], 't', 'd')
if v[1] == ARGV[1] and v[2] == '0' then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""


def _import_redis() -> Any:
    try:
        import redis.asyncio
    except ImportError as e:  # pragma: no cover - tested in a subprocess without it
        raise ImportError(
            "tether: tether.idempotency.RedisStore needs the 'redis' extra: "
            "pip install 'tether[redis]'"
        ) from e
    return redis


class _Client:
    __slots__ = ("begin", "complete", "redis", "release", "renew")

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.redis = client
        self.begin = client.register_script(_BEGIN)
        self.renew = client.register_script(_RENEW)
        self.complete = client.register_script(_COMPLETE)
        self.release = client.register_script(_RELEASE)


class RedisStore(Store):
    """Idempotency records in Redis, shared by every instance on every host.

    ``url`` is a ``redis://`` (or ``rediss://``, ``unix://``) URL. ``lease`` is how
    long a running key stays owned after its owner's last renewal (see ``Store``);
    ``prefix`` starts every Redis key; ``timeout`` bounds connecting and every command
    (then ``StoreError``). Each record is one hash whose expiry is the lease while it
    runs and the ``ttl`` once done, so Redis forgets lapsed leases and old results by
    itself (``sweep()`` has nothing to do). Every step is one Lua script — taking a key
    is "create if absent, with an expiry" (``SET NX PX``) and every later step a
    compare-and-set on the owner token — so it is atomic on one server. Times are the
    server's. Each process keeps one client (with its connection pool) per event loop,
    made lazily.

    Constructing one does not block (no I/O, no event loop); it raises ``ImportError``
    naming the extra when redis-py is missing, ``TypeError``/``ValueError`` for a bad
    argument. Thread-safe to construct; use it from coroutines. No context, none ended.
    Close it with ``aclose()`` (or ``close()`` once its loop stopped).

    Added in 0.1.
    """

    __module__ = "tether.idempotency"

    def __init__(
        self,
        url: str,
        *,
        lease: float = 60,
        prefix: str = "tether:idempotency:",
        timeout: float = 5.0,
    ) -> None:
        super().__init__(lease=lease)
        self._redis = _import_redis()
        if not isinstance(url, str):
            raise TypeError(f"tether: RedisStore needs a redis:// URL, got {type(url).__name__}")
        if not isinstance(prefix, str):
            raise TypeError(f"tether: prefix is a str, got {type(prefix).__name__}")
        self._url = url
        self._prefix = prefix
        self._timeout = float(timeout)
        if not self._timeout > 0:
            raise ValueError(f"tether: timeout must be positive seconds, got {timeout!r}")
        self._client: LoopBound[_Client] = LoopBound(self._connect, _discard)

    def __repr__(self) -> str:
        return f"RedisStore(prefix={self._prefix!r}, lease={self.lease:g})"

    async def _connect(self) -> _Client:
        client = self._redis.asyncio.Redis.from_url(
            self._url,
            socket_timeout=self._timeout,
            socket_connect_timeout=self._timeout,
            decode_responses=False,
        )
        return _Client(client)

    async def _run(self, op: Callable[[_Client], Awaitable[T]]) -> T:
        r = self._redis
        async with self._client.lock():
            client = await self._client.get()
        # the client has its own pool: commands run concurrently, outside the lock
        try:
            async with asyncio.timeout(self._timeout):
                return await op(client)
        except (r.RedisError, OSError, TimeoutError) as e:
            raise StoreError(f"tether: Redis store: {e or type(e).__name__}") from e

    def _k(self, key: str) -> str:
        return self._prefix + key

    async def begin(self, key: str, fingerprint: str, token: str) -> Claim:
        """Take ``key`` for ``token`` unless it is running or done; report what it found.

        One script call. Blocks (suspends) for one round trip (at most ``timeout``);
        not idempotent (a second call finds the key running); thread-safe. No
        context, none ended. Raises ``StoreError``.
        """
        ms = max(1, round(self.lease * 1000))

        async def op(c: _Client) -> Claim:
            got = await c.begin(keys=[self._k(key)], args=[fingerprint, token, ms])
            kind = bytes(got[0])
            if kind == b"a":
                return Claim("acquired", fingerprint)
            fp = bytes(got[1]).decode()
            if kind == b"d":
                return Claim("done", fp, result=bytes(got[2] or b""))
            return Claim("running", fp, wait=max(int(got[2]), 0) / 1000)

        return await self._run(op)

    async def renew(self, key: str, token: str) -> bool:
        """Extend ``token``'s lease; ``False`` if it no longer owns ``key``.

        Blocks (suspends) for one round trip; idempotent; thread-safe. No
        context, none ended. Raises ``StoreError``.
        """
        ms = max(1, round(self.lease * 1000))

        async def op(c: _Client) -> bool:
            return bool(await c.renew(keys=[self._k(key)], args=[token, ms]))

        return await self._run(op)

    async def complete(self, key: str, token: str, result: bytes, ttl: float) -> bool:
        """Store ``result`` for ``ttl`` seconds if ``token`` owns ``key``, else ``False``.

        Blocks (suspends) for one round trip; a repeat returns ``False`` (idempotent);
        thread-safe. No context, none ended. Raises ``StoreError``.
        """
        ms = max(1, round(ttl * 1000))

        async def op(c: _Client) -> bool:
            return bool(await c.complete(keys=[self._k(key)], args=[token, result, ms]))

        return await self._run(op)

    async def release(self, key: str, token: str) -> bool:
        """Delete running ``key`` if ``token`` owns it; ``False`` otherwise.

        Blocks (suspends) for one round trip; idempotent; thread-safe. No
        context, none ended. Raises ``StoreError``.
        """

        async def op(c: _Client) -> bool:
            return bool(await c.release(keys=[self._k(key)], args=[token]))

        return await self._run(op)

    async def sweep(self) -> int:
        """Nothing to do: Redis expires lapsed leases and old results itself; returns 0.

        Non-blocking; idempotent; thread-safe. No context, none ended. Raises
        nothing.
        """
        return 0

    async def aclose(self) -> None:
        """Close the client of the running loop and its connections (remade if used again).

        Blocks (suspends) while closing; idempotent; thread-safe, from the loop that used
        the store. No context, none ended. Raises nothing.
        """
        async with self._client.lock():
            c = self._client.forget()
        if c is not None:
            try:
                await c.redis.aclose()
            except Exception:  # pragma: no cover - closing a broken connection
                pass

    def close(self) -> None:
        """Forget the client without its event loop (e.g. after it stopped).

        Non-blocking; idempotent; thread-safe. No context, none ended. Raises nothing.
        """
        self._client.drop()


def _discard(c: _Client) -> None:
    # The pool's sockets belong to a loop that is gone or elsewhere: close them directly.
    pool = c.redis.connection_pool
    for conn in [*pool._available_connections, *pool._in_use_connections]:
        writer = getattr(conn, "_writer", None)
        if writer is not None:
            try:
                writer.transport.abort()
            except Exception:  # pragma: no cover
                pass
