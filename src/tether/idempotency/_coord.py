"""The protocol shared by the middleware and ``run``: acquire or wait, then own and finish.

Across processes the store arbitrates (``Store.begin`` is atomic). Within one process a
*flight* per running key lets duplicates wait without asking the store again: the owner
registers it right after acquiring, and when it finishes it hands the result (or the
news that it released the key) straight to every local waiter, on that waiter's loop.
A duplicate in another process polls the store, with backoff, until the key is done or
its lease lapses (then it takes the key over and executes).

Locking: ``_Flights.lock`` guards ``_Flights.by_key`` and every flight's ``waiters``.
It is a leaf lock: nothing is awaited or called under it but list and dict operations.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .._context import CancelFunc, Context, Scope, with_cancel, with_value
from .._keys import IDEMPOTENCY_KEY
from ._store import FingerprintMismatch, Store, StoreError

__all__ = ["Busy", "Owner", "acquire"]

LOG = logging.getLogger("tether.idempotency")

# A waiter stops a little before its own deadline, so that it can still answer (409)
# before the server's deadline handling (504) or the client's timeout does: a tenth of
# its budget, between MARGIN_MIN and MARGIN_MAX.
MARGIN_MIN = 0.01
MARGIN_MAX = 0.05
POLL_MIN = 0.002  # first poll of a key running in another process
POLL_MAX = 0.1  # polls back off to this
IDLE_CHECK = 0.5  # a waiter with no deadline re-checks its context this often

_RELEASED = object()


class Busy(Exception):
    """The key is still running and the waiter's budget ended first (HTTP 409)."""

    def __init__(self, retry_after: float) -> None:
        super().__init__("the request with this idempotency key is still running")
        self.retry_after = retry_after


class _Flight:
    __slots__ = ("fingerprint", "waiters")

    def __init__(self, fingerprint: str) -> None:
        self.fingerprint = fingerprint
        self.waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[object]]] = []


class _Flights:
    __slots__ = ("by_key", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_key: dict[str, _Flight] = {}


_registry: weakref.WeakKeyDictionary[Store, _Flights] = weakref.WeakKeyDictionary()
_registry_lock = threading.Lock()


def _flights(store: Store) -> _Flights:
    f = _registry.get(store)
    if f is None:
        with _registry_lock:
            f = _registry.get(store)
            if f is None:
                f = _registry[store] = _Flights()
    return f


def _resolve(fut: asyncio.Future[object], value: object) -> None:
    if not fut.done():
        fut.set_result(value)


@dataclass(frozen=True, slots=True)
class Replay:
    """The key is done: its stored result."""

    result: bytes


async def acquire(
    ctx: Context, store: Store, key: str, fingerprint: str, *, margin: float | None = None
) -> Owner | Replay:
    """Own ``key`` (and run) or get its stored result, waiting within ``ctx``'s budget.

    Raises ``ctx``'s error if it has ended (before anything else, and when a cancel
    ends it while waiting), ``FingerprintMismatch``, ``StoreError``, or ``Busy`` when
    the budget (minus a margin) ends while the key is still running.
    """
    flights = _flights(store)
    loop = asyncio.get_running_loop()
    if margin is None:
        left = ctx.remaining()
        margin = 0.0 if left is None else min(MARGIN_MAX, max(MARGIN_MIN, left / 10))
    poll = POLL_MIN
    while True:
        ctx.check()
        left = ctx.remaining()
        budget = None if left is None else left - margin
        fl = flights.by_key.get(key)
        if fl is not None:  # running in this process: wait for its owner to hand over
            if fl.fingerprint != fingerprint:
                raise FingerprintMismatch(key)
            if budget is not None and budget <= 0:
                raise Busy(1.0)
            fut: asyncio.Future[object] = loop.create_future()
            with flights.lock:
                if flights.by_key.get(key) is not fl:
                    continue
                fl.waiters.append((loop, fut))
            timeout = IDLE_CHECK if budget is None else min(budget, IDLE_CHECK)
            try:
                got = await asyncio.wait_for(fut, timeout)
            except TimeoutError:
                continue
            finally:
                with flights.lock:
                    try:
                        fl.waiters.remove((loop, fut))
                    except ValueError:
                        pass
            if isinstance(got, bytes):
                return Replay(got)
            continue  # released: try to take it
        token = uuid.uuid4().hex
        claim = await store.begin(key, fingerprint, token)
        if claim.state == "acquired":
            return Owner(store, key, fingerprint, token, flights)
        if claim.fingerprint != fingerprint:
            raise FingerprintMismatch(key)
        if claim.state == "done":
            return Replay(claim.result)
        # running elsewhere (or our own owner has not registered its flight yet)
        if budget is not None and budget <= 0:
            raise Busy(1.0)
        sleep = min(poll, max(claim.wait, POLL_MIN))
        if budget is not None and budget < sleep:
            sleep = budget
        await asyncio.sleep(sleep)
        poll = min(poll * 2, POLL_MAX)


class LeaseLost(Exception):
    """The owner could not keep its lease: another owner may run the same key."""

    def __init__(self, key: str) -> None:
        super().__init__(
            f"tether: the lease on idempotency key {key!r} was lost (the store no longer "
            "lists this owner); the work is stopped so that it does not run twice"
        )


class Owner:
    """The caller owns ``key``: run the work under ``context()``, then finish once."""

    __slots__ = (
        "_finished",
        "_flight",
        "_flights",
        "_renewer",
        "fingerprint",
        "key",
        "store",
        "token",
    )

    def __init__(
        self, store: Store, key: str, fingerprint: str, token: str, flights: _Flights
    ) -> None:
        self.store = store
        self.key = key
        self.fingerprint = fingerprint
        self.token = token
        self._flights = flights
        self._finished = False
        self._renewer: asyncio.Task[None] | None = None
        fl = _Flight(fingerprint)
        with flights.lock:
            flights.by_key[key] = fl
        self._flight = fl

    def context(self, parent: Context) -> Scope:
        """The work's context: ``parent`` plus the key, cancelled if the lease is lost.

        Starts the lease renewal, which runs until ``complete``/``release``.
        """
        scope = with_cancel(with_value(parent, IDEMPOTENCY_KEY, self.key))
        cancel = scope.cancel
        self._renewer = asyncio.get_running_loop().create_task(
            self._renew(cancel), name=f"tether-idempotency-renew-{self.key[:32]}"
        )
        return scope

    async def _renew(self, cancel: CancelFunc) -> None:
        period = self.store.lease / 3
        while True:
            await asyncio.sleep(period)
            try:
                ok = await self.store.renew(self.key, self.token)
            except StoreError as e:  # keep working: the lease may still hold
                LOG.warning("idempotency key %r: renewing the lease failed: %s", self.key, e)
                continue
            if not ok:
                LOG.error("idempotency key %r: lease lost; cancelling its work", self.key)
                cancel(LeaseLost(self.key))
                return

    async def _stop_renewing(self) -> None:
        t = self._renewer
        self._renewer = None
        if t is not None and not t.done():
            t.cancel()
            await asyncio.wait((t,))  # never raises the renewer's CancelledError

    def _hand_over(self, value: object) -> None:
        flights = self._flights
        with flights.lock:
            if flights.by_key.get(self.key) is self._flight:
                del flights.by_key[self.key]
            waiters = self._flight.waiters[:]
        for loop, fut in waiters:
            try:
                loop.call_soon_threadsafe(_resolve, fut, value)
            except RuntimeError:  # that loop closed: its waiter is gone
                pass

    async def complete(self, result: bytes, ttl: float) -> bool:
        """Store the result, hand it to local waiters; ``False`` if the lease was lost.

        A store error is retried a few times and then logged: the result still reaches
        this process's waiters, and the key stays running (its lease ends, and a retry
        after that executes again — the window documented in docs/idempotency.md).
        """
        if self._finished:
            return False
        self._finished = True
        await self._stop_renewing()
        ok = False
        try:
            for attempt in range(3):
                try:
                    ok = await asyncio.shield(
                        self.store.complete(self.key, self.token, result, ttl)
                    )
                    break
                except StoreError as e:
                    if attempt == 2:
                        LOG.error("idempotency key %r: storing the result failed: %s", self.key, e)
                    else:
                        await asyncio.sleep(0.05 * (attempt + 1))
            if not ok:
                LOG.error(
                    "idempotency key %r: the result was not stored (lease lost or store "
                    "down); a retry after the lease may execute again",
                    self.key,
                )
        finally:
            self._hand_over(result)
        return ok

    async def release(self) -> None:
        """Forget the key (the work failed): a retry, or a local waiter, executes."""
        if self._finished:
            return
        self._finished = True
        try:
            await self._stop_renewing()
            await asyncio.shield(self.store.release(self.key, self.token))
        except StoreError as e:
            LOG.warning(
                "idempotency key %r: releasing failed (%s); it is retried after its lease",
                self.key,
                e,
            )
        finally:
            self._hand_over(_RELEASED)


Work = Callable[[Context], Awaitable[bytes]]
