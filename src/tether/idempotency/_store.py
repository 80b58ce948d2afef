"""The store protocol: the few atomic steps every backend implements.

A record is one idempotency key: its request fingerprint, and either a *running* state
(an owner token and a lease end) or a *done* state (the stored result and an expiry).
Every state change is a compare-and-set on the owner token, so an owner whose lease was
taken over can no longer write. Times are the store's own (wall clock of the database
or Redis server; of the host for SQLite), never ``time.monotonic`` of one process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

__all__ = ["Claim", "FingerprintMismatch", "Store", "StoreError"]


class StoreError(Exception):
    """The idempotency store could not be reached or did not answer.

    Raised (chained to the driver's error) by every ``Store`` operation; the middleware
    answers ``503`` and runs nothing: an idempotency check that cannot be made fails
    closed.

    Added in 0.1.
    """

    __module__ = "tether.idempotency"


class FingerprintMismatch(ValueError):
    """The key was first used with a different request (its fingerprint differs).

    The middleware answers ``422``; ``idempotency.run`` raises it. A client must use a
    new key for a different request.

    Added in 0.1.
    """

    __module__ = "tether.idempotency"

    def __init__(self, key: str) -> None:
        super().__init__(
            f"tether: idempotency key {key!r} was first used with a different request; "
            "send the same request again, or use a new key for a new request"
        )
        self.key = key


@dataclass(frozen=True, slots=True)
class Claim:
    """What ``Store.begin`` found: the caller now owns the key, or it is running, or done.

    ``state`` is ``"acquired"`` (the caller's token now owns the key for one lease),
    ``"running"`` (another owner holds it; ``wait`` is the seconds left on its lease) or
    ``"done"`` (``result`` holds the stored bytes). ``fingerprint`` is the stored one
    (the caller's own when acquired).

    Added in 0.1.
    """

    __module__ = "tether.idempotency"

    state: Literal["acquired", "running", "done"]
    fingerprint: str
    result: bytes = b""
    wait: float = 0.0


def check_lease(lease: object) -> float:
    """A lease in seconds: a positive finite int or float."""
    if isinstance(lease, bool) or not isinstance(lease, int | float):
        raise TypeError(
            f"tether: lease is seconds as an int or float, got {type(lease).__name__} {lease!r:.40}"
        )
    f = float(lease)
    if not math.isfinite(f) or f <= 0:
        raise ValueError(
            f"tether: lease must be a positive finite number of seconds, got {lease!r}"
        )
    return f


class Store:
    """Where idempotency keys and their results live; subclass it for a new backend.

    tether ships ``SQLiteStore``, ``PostgresStore`` and ``RedisStore``. A store connects
    lazily (constructing one needs no event loop and no server) and is used from
    coroutines; each method is one atomic step on one record, a compare-and-set on the
    owner ``token``. ``lease`` is how long a running key stays owned without a
    ``renew``: the owner renews it every ``lease / 3`` seconds while it works, so only an
    owner that died loses it, ``lease`` seconds after its last renewal.

    Every method is a coroutine that blocks (suspends) its task for a round trip, may
    raise ``StoreError`` (chained to the driver's error), and is thread-safe: any task
    of any loop may call it. None takes a context (so none sees an ended one): each is
    bounded by the store's own I/O timeouts.

    Added in 0.1.
    """

    __module__ = "tether.idempotency"

    lease: float

    def __init__(self, *, lease: float = 60) -> None:
        self.lease = check_lease(lease)

    async def begin(self, key: str, fingerprint: str, token: str) -> Claim:
        """Take ``key`` for ``token`` unless it is running or done; report what it found.

        Atomic: of many concurrent callers (any process, any host sharing the store)
        exactly one gets ``"acquired"``. A record whose lease ended (its owner died) or
        whose result expired is taken over as if absent. Blocks (suspends) for one store
        round trip; not idempotent (a second call with another token finds the key
        running); thread-safe. No context, none ended: bounded by the store's I/O timeouts.
        Raises ``StoreError``.
        """
        raise NotImplementedError

    async def renew(self, key: str, token: str) -> bool:
        """Extend ``token``'s lease on ``key`` by ``lease`` seconds from now.

        Returns ``False`` if ``token`` no longer owns the key (its lease already ended and
        another owner took it, or it completed). Blocks (suspends) for one round trip;
        idempotent; thread-safe. No context, none ended. Raises ``StoreError``.
        """
        raise NotImplementedError

    async def complete(self, key: str, token: str, result: bytes, ttl: float) -> bool:
        """Store ``result`` for ``key`` and keep it ``ttl`` seconds, if ``token`` owns it.

        Returns ``False`` (and stores nothing) if ``token`` lost the key. Blocks
        (suspends) for one round trip; idempotent for the same arguments until the key
        expires (a repeat finds it done and returns ``False``); thread-safe. No
        context, none ended. Raises ``StoreError``.
        """
        raise NotImplementedError

    async def release(self, key: str, token: str) -> bool:
        """Forget a running ``key`` owned by ``token`` so that a retry executes.

        Returns ``False`` if ``token`` does not own it. Blocks (suspends) for one round
        trip; idempotent; thread-safe. No context, none ended. Raises
        ``StoreError``.
        """
        raise NotImplementedError

    async def sweep(self) -> int:
        """Delete expired results and lapsed leases; return how many records went.

        Blocks (suspends) for one statement; idempotent (a second call finds fewer);
        thread-safe, concurrently with requests: it deletes only records that
        ``begin`` would take over anyway. No context, none ended. Raises ``StoreError``.
        """
        raise NotImplementedError

    async def aclose(self) -> None:
        """Close the store's connections (the store reconnects if used again).

        Blocks (suspends) until closed; idempotent; thread-safe, from the event loop that
        used the store. No context, none ended. Raises nothing (errors while closing a
        broken connection are ignored).
        """

    def close(self) -> None:
        """Close the store from synchronous code (after its event loop stopped).

        Non-blocking beyond closing sockets or files; idempotent; thread-safe. No context,
        none ended. Raises nothing.
        """
