"""``idempotency.run``: once-per-key execution for callers that are not HTTP handlers."""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from typing import Any

from .._context import Context
from .._errors import DeadlineExceeded
from ._coord import Busy, Owner, acquire
from ._store import Store

__all__ = ["run"]

DEFAULT_TTL = 86400.0


def check_key(key: object) -> str:
    if not isinstance(key, str):
        raise TypeError(f"tether: an idempotency key is a str, got {type(key).__name__}")
    if not 1 <= len(key) <= 255 or not key.isprintable() or not key.isascii():
        raise ValueError(
            "tether: an idempotency key is 1-255 printable ASCII characters (a UUID is "
            f"typical), got {key!r:.80}"
        )
    return key


def check_ttl(ttl: object) -> float:
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise TypeError(f"tether: ttl is seconds as an int or float, got {type(ttl).__name__}")
    f = float(ttl)
    if not math.isfinite(f) or f <= 0:
        raise ValueError(f"tether: ttl must be a positive finite number of seconds, got {ttl!r}")
    return f


def check_store(store: object) -> Store:
    if not isinstance(store, Store):
        raise TypeError(
            "tether: pass an idempotency store (SQLiteStore, PostgresStore, RedisStore or a "
            f"Store subclass), got {type(store).__name__}"
        )
    return store


async def run(
    ctx: Context,
    store: Store,
    key: str,
    fingerprint: str,
    fn: Callable[[Context], Awaitable[Any]],
    *,
    ttl: float = DEFAULT_TTL,
) -> Any:
    """Await ``fn(ctx)`` once per ``key`` and return its result to every caller.

    The first caller for ``key`` (in any process sharing ``store``) runs ``fn`` under a
    context derived from ``ctx`` that carries ``IDEMPOTENCY_KEY``; its result must be
    JSON-serialisable and is stored for ``ttl`` seconds. Every caller, the first one
    included, gets the stored JSON decoded (so a tuple comes back as a list). A caller
    that arrives while ``fn`` runs waits for it (no budget: until it ends or its lease
    lapses) and returns the same result. If ``fn`` raises, the key is released and the
    error propagates: the next caller (or a waiting one) runs ``fn`` again — raise only
    when the work did not happen.

    Blocks (suspends) the calling task until a result exists. Idempotent by
    construction: one execution per key until ``ttl`` passes. Thread-safe: any task on
    any event loop, in any number of processes. If ``ctx`` already ended, raises its
    error before touching the store; if it ends while waiting for another caller, raises
    ``DeadlineExceeded``/``Canceled`` (the work goes on in its owner). Raises
    ``FingerprintMismatch`` if ``key`` was used with another ``fingerprint``,
    ``StoreError`` if the store is unreachable (``fn`` is then not called),
    ``TypeError`` if the result is not JSON-serialisable (the key is then released) or
    for bad arguments, and whatever ``fn`` raised.

    Added in 0.1.
    """
    check_store(store)
    check_key(key)
    if not isinstance(fingerprint, str):
        raise TypeError(
            f"tether: a fingerprint is a str (e.g. a hash of the request), got "
            f"{type(fingerprint).__name__}"
        )
    if not callable(fn):
        raise TypeError(f"tether: run needs an async function fn(ctx), got {type(fn).__name__}")
    ttl = check_ttl(ttl)
    ctx.check()
    try:
        got = await acquire(ctx, store, key, fingerprint, margin=0.0)
    except Busy as e:
        ctx.check()
        raise DeadlineExceeded() from e
    if not isinstance(got, Owner):
        return json.loads(got.result)
    owner = got
    ok = False
    try:
        async with owner.context(ctx) as work_ctx:
            value = await fn(work_ctx)
        try:
            data = json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError) as e:
            raise TypeError(
                f"tether: idempotency.run stores fn's result as JSON; {type(value).__name__} "
                f"is not JSON-serialisable ({e}); return plain data (dict, list, str, "
                "int, float, bool, None)"
            ) from e
        ok = True
    finally:
        if not ok:
            await owner.release()
    await owner.complete(data, ttl)
    return json.loads(data)
