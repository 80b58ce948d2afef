"""Service lifecycle: signals, a supervisor, an interval scheduler, a worker pool, and a
runner for detached work — so no work outlives its reason to run, and no accepted work
is lost when the process is asked to stop.

The rules of use of ``tether`` hold here too (pass ``ctx`` first, cancel what you
derive, never store a context on a long-lived object). In addition:

1. Serve until your ``ctx`` ends, then stop taking new work and return once the work
   in hand is done. Run that work under ``drain_scope(ctx)``, not ``ctx``: it survives
   the start of shutdown and ends at the drain deadline.
2. Every piece of accepted work ends in one of two ways: done, or reported as not done
   (logged, counted, and handed to a callback). Rejection (``Rejected``) happens at the
   door, while the caller still holds the work.
3. Blocking waits happen on contexts, so ``tether.testing.FakeClock`` drives schedules,
   drains and close deadlines in tests.

Example::

    import tether
    from tether import lifecycle

    sup = lifecycle.Supervisor(drain_timeout=20, close_timeout=5)
    pool = lifecycle.WorkerPool(handle, workers=8, queue_size=1000, item_timeout=10)
    sup.add("pool", pool.run)
    sup.add("cleanup", lifecycle.every(60, cleanup).arun)
    sup.main()          # SIGTERM: drain for up to 20 s, then exit 0 (or 1 on failure)

Context values set by the components: ``REQUEST_ID`` (a fresh id per scheduled run,
pool item or — kept from the request — detached job) and ``WORKER`` (the component,
job or worker that runs the work); ``log_extra(ctx)`` turns them into logging tags.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._common import (
        REQUEST_ID,
        WORKER,
        ComponentExited,
        ComponentFailed,
        DrainTimeout,
        QueueFull,
        Rejected,
        ShutdownRequested,
        ShuttingDown,
        drain_scope,
        log_extra,
        new_request_id,
        with_drain,
    )
    from ._consumer import Consumer, ConsumerStats, Message, RetryPolicy, Source
    from ._detached import DetachedJob, DetachedRunner, DetachedStats
    from ._pool import PoolStats, WorkerPool
    from ._scheduler import JobStats, Scheduler, every
    from ._signals import SignalReceived, SignalScope, StopFunc, signal_context
    from ._supervisor import ShutdownReport, Supervisor

# `import tether` imports ._signals (for tether.signal_context), which runs this file:
# the rest loads on first use, so that `import tether` does not import asyncio.
_WHERE = {
    "REQUEST_ID": "_common",
    "WORKER": "_common",
    "ComponentExited": "_common",
    "ComponentFailed": "_common",
    "Consumer": "_consumer",
    "ConsumerStats": "_consumer",
    "DetachedJob": "_detached",
    "DetachedRunner": "_detached",
    "DetachedStats": "_detached",
    "DrainTimeout": "_common",
    "JobStats": "_scheduler",
    "Message": "_consumer",
    "PoolStats": "_pool",
    "QueueFull": "_common",
    "Rejected": "_common",
    "RetryPolicy": "_consumer",
    "Scheduler": "_scheduler",
    "ShutdownReport": "_supervisor",
    "ShutdownRequested": "_common",
    "ShuttingDown": "_common",
    "SignalReceived": "_signals",
    "SignalScope": "_signals",
    "Source": "_consumer",
    "StopFunc": "_signals",
    "Supervisor": "_supervisor",
    "WorkerPool": "_pool",
    "drain_scope": "_common",
    "every": "_scheduler",
    "log_extra": "_common",
    "new_request_id": "_common",
    "signal_context": "_signals",
    "with_drain": "_common",
}


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'tether.lifecycle' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{where}"), name)
    if getattr(value, "__module__", "").startswith(f"{__name__}._"):
        value.__module__ = __name__  # tracebacks and docs show the public path
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*__all__, *(n for n in globals() if n.startswith("__"))})


__all__ = [
    "ComponentExited",
    "ComponentFailed",
    "Consumer",
    "ConsumerStats",
    "DetachedJob",
    "DetachedRunner",
    "DetachedStats",
    "DrainTimeout",
    "JobStats",
    "Message",
    "PoolStats",
    "QueueFull",
    "REQUEST_ID",
    "Rejected",
    "RetryPolicy",
    "Scheduler",
    "ShutdownReport",
    "ShutdownRequested",
    "ShuttingDown",
    "SignalReceived",
    "SignalScope",
    "Source",
    "StopFunc",
    "Supervisor",
    "WORKER",
    "WorkerPool",
    "drain_scope",
    "every",
    "log_extra",
    "new_request_id",
    "signal_context",
    "with_drain",
]
