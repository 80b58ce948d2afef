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
    SignalReceived,
    drain_scope,
    log_extra,
    new_request_id,
    with_drain,
)
from ._detached import DetachedRunner, DetachedStats
from ._pool import PoolStats, WorkerPool
from ._scheduler import JobStats, Scheduler, every
from ._signals import SignalScope, StopFunc, signal_context
from ._supervisor import ShutdownReport, Supervisor

__all__ = [
    "REQUEST_ID",
    "WORKER",
    "ComponentExited",
    "ComponentFailed",
    "DetachedRunner",
    "DetachedStats",
    "DrainTimeout",
    "JobStats",
    "PoolStats",
    "QueueFull",
    "Rejected",
    "Scheduler",
    "ShutdownReport",
    "ShutdownRequested",
    "ShuttingDown",
    "SignalReceived",
    "SignalScope",
    "StopFunc",
    "Supervisor",
    "WorkerPool",
    "drain_scope",
    "every",
    "log_extra",
    "new_request_id",
    "signal_context",
    "with_drain",
]
