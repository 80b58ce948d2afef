"""Sweeping expired keys on a schedule."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from .._context import Context
from ._coord import LOG
from ._run import check_store
from ._store import Store

__all__ = ["sweep_job"]


def sweep_job(store: Store) -> Callable[[Context], Awaitable[int]]:
    """A ``Scheduler`` job that deletes ``store``'s expired keys: ``sched.every(600, job)``.

    The job is a coroutine function (run the scheduler with ``arun``, as a
    ``Supervisor`` does); each run calls ``store.sweep()`` once, logs and returns how
    many records went. Its name (``idempotency-sweep``) tags the scheduler's logs and
    stats. A ``RedisStore`` needs no sweeping (Redis expires keys itself): its sweep
    returns 0.

    Non-blocking (returns the job); each call returns a new job; thread-safe. A run
    whose context already ended does not touch the store (it raises the context's
    error, which the scheduler counts). Raises ``TypeError`` for a non-store; a run
    raises ``StoreError`` when the store is unreachable (logged and counted by the
    scheduler, which keeps running).

    Added in 0.1.
    """
    check_store(store)

    async def idempotency_sweep(ctx: Context) -> int:
        ctx.check()
        n = await store.sweep()
        if n:
            LOG.info("idempotency: swept %d expired keys from %r", n, store)
        return n

    idempotency_sweep.__name__ = "idempotency-sweep"
    return idempotency_sweep
