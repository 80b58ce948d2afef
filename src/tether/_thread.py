"""Worker threads: the shared elastic pool behind ``Group`` and ``to_thread``.

Go starts a goroutine per ``errgroup.Go``. A thread per task is too dear in Python
(starting one costs 50-100 us), and a fixed-size pool (``ThreadPoolExecutor``) deadlocks
a group whose tasks wait for one another once the pool is full. So:

- jobs go to one FIFO queue that every waiting worker takes from, as in
  ``ThreadPoolExecutor``: the first worker awake runs the next job, so a burst of short
  jobs is drained by few threads, with few wake-ups;
- when a job finds no waiting worker and fewer than ``MIN_WORKERS`` are alive
  (``ThreadPoolExecutor``'s default size), a worker is started at once (one at a time);
- beyond that, a *monitor* thread runs while jobs wait, and every ``TICK`` seconds checks
  that the queue moved. If no job was taken during a whole tick, every worker is stuck
  (blocked, waiting for each other, or running long work), and it starts more workers:
  half as many again as are alive (at least one, at most the jobs waiting, at most 64 a
  tick). So every job gets a thread within a few ticks when it needs one -- tasks that
  wait for one another never deadlock, I/O fan-out gets its concurrency -- but a burst
  of short jobs does not start a thread per job (measured: docs/design.md section 2).
  The monitor exits after ``LINGER`` seconds with nothing waiting.
- a worker that waited ``IDLE_SECONDS`` without a job exits; the pool is empty when
  nothing runs.

This module does not import asyncio (``import tether`` must not); ``to_thread`` imports
it when called.

Workers are daemon threads named ``tether-worker-N`` while they run a job and
``tether-worker-idle-N`` while they wait for one, so that the test leak check can tell
an idle worker (not a leak) from one still running a task after its test (a leak).

Locking: ``_Pool._lock`` guards the counters of the pool (every field but ``_jobs``,
which is a ``SimpleQueue``). It is a leaf lock: nothing is called while holding it but
``SimpleQueue.put`` and ``Lock.release``, which never block. Invariant (under the lock):
``_queued`` jobs are in ``_jobs``; ``_waiting`` workers will take from it; a worker
exits only when ``_queued == 0``, so no job is ever stranded.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from contextvars import Context as _CVContext
from contextvars import copy_context
from types import CoroutineType
from typing import TYPE_CHECKING, Any, TypeVar, TypeVarTuple

from . import _threads
from ._context import Context, _current, _derive, _fresh_error
from ._errors import ContextError

if TYPE_CHECKING:
    from ._aio import _Waker

__all__ = ["IDLE_SECONDS", "submit", "to_thread"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")
Job = Callable[[], object]

IDLE_SECONDS = 2.0  # a worker idle this long exits
TICK = 0.002  # the monitor's period: a backlog that did not move for this long is stuck
LINGER = 0.1  # the monitor exits after this long without a backlog
MAX_SPAWN_PER_TICK = 64
MIN_WORKERS = min(32, (os.cpu_count() or 1) + 4)  # started on demand without a tick
_log = logging.getLogger("tether")


class _Pool:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[Job] = queue.SimpleQueue()
        # _lock protects the following fields.
        self._queued = 0  # jobs put in _jobs and not yet taken
        self._waiting = 0  # workers blocked (or about to block) in _jobs.get
        self._starting = 0  # worker threads started that have not yet looked for a job
        self._live = 0  # worker threads alive
        self._count = 0  # worker threads ever started, for names
        self._taken = 0  # jobs ever taken: the monitor's progress mark
        self._monitoring = False  # the monitor thread runs

    def submit(self, job: Job) -> None:
        """Run ``job()`` on a worker thread soon. Never blocks for long; any thread.

        Raises ``RuntimeError`` (``tether: ...``) only if the job will not run: no worker
        is alive and none could be started; the job was then not queued. A monitor that
        cannot start is logged (the job runs on the workers there are) and retried by a
        later submit.
        """
        lock = self._lock
        lock.acquire()
        if self._queued < self._waiting:  # a waiting worker takes it
            self._queued += 1
            self._jobs.put(job)
            lock.release()
            return
        spawn = self._live < MIN_WORKERS and not self._starting
        if spawn:
            n = self._reserve_locked(1)
        else:  # workers are starting or busy: the monitor sees to it
            self._queued += 1
            self._jobs.put(job)
        monitor = not self._monitoring
        if monitor:
            self._monitoring = True
        lock.release()
        if spawn:
            try:
                self._spawn(n, 1)
            except BaseException:
                with lock:
                    alive = self._live
                    if not alive and monitor:
                        self._monitoring = False
                if not alive:
                    raise  # nobody could run it: the caller learns, nothing was queued
                # the live workers take it; the monitor adds more if they are stuck
            with lock:
                self._queued += 1
                self._jobs.put(job)
        if monitor:
            try:
                _threads.start(self._monitor, name="tether-worker-monitor")
            except RuntimeError:
                with lock:
                    self._monitoring = False
                _log.exception("tether: could not start the worker pool's monitor")

    def _reserve_locked(self, k: int) -> int:
        """Count ``k`` workers about to start; return the first one's number."""
        self._starting += k
        self._live += k
        n = self._count + 1
        self._count += k
        return n

    def _spawn(self, first: int, k: int) -> None:
        """Start ``k`` reserved workers; roll back the reservation of those that fail.

        Raises if the first one cannot start; later failures are logged.
        """
        for i in range(k):
            try:
                _threads.start(self._work, first + i, name=f"tether-worker-{first + i}")
            except BaseException:
                with self._lock:
                    left = k - i
                    self._starting -= left
                    self._live -= left
                if i == 0:
                    raise
                _log.exception("tether: could not start a worker thread")
                return

    def _work(self, n: int) -> None:
        lock = self._lock
        get = self._jobs.get
        thread = threading.current_thread()
        busy_name = thread.name
        idle_name = f"tether-worker-idle-{n}"
        lock.acquire()
        self._starting -= 1
        while True:
            self._waiting += 1
            lock.release()
            thread.name = idle_name
            while True:
                try:
                    job = get(timeout=IDLE_SECONDS)
                    break
                except queue.Empty:
                    with lock:
                        if self._queued == 0:  # nothing for us: exit
                            self._waiting -= 1
                            self._live -= 1
                            return
            thread.name = busy_name
            lock.acquire()
            self._waiting -= 1
            self._queued -= 1
            self._taken += 1
            lock.release()
            try:
                job()
            except BaseException:  # pragma: no cover - jobs catch their own errors
                _log.exception("tether: a worker job raised")
            job = None  # type: ignore[assignment]
            lock.acquire()

    def _monitor(self) -> None:
        lock = self._lock
        mark = -1
        quiet_since: float | None = None
        while True:
            time.sleep(TICK)
            k = 0
            with lock:
                backlog = self._queued - self._waiting
                if backlog <= 0:
                    now = time.monotonic()
                    if quiet_since is None:
                        quiet_since = now
                    elif now - quiet_since >= LINGER:
                        self._monitoring = False
                        return
                    mark = -1
                    continue
                quiet_since = None
                if self._taken == mark and not self._starting:
                    # Nothing was taken for a whole tick: every worker is stuck.
                    k = min(backlog, max(1, self._live // 2), MAX_SPAWN_PER_TICK)
                    first = self._reserve_locked(k)
                mark = self._taken
            if k:
                try:
                    self._spawn(first, k)
                except Exception:  # pragma: no cover - out of threads
                    _log.exception("tether: could not start a worker thread")

    def workers(self) -> tuple[int, int, int]:
        """(live workers, waiting workers, queued jobs): a snapshot, for tests and tools."""
        with self._lock:
            return self._live, self._waiting, self._queued

    def _after_fork_in_child(self) -> None:
        # The workers did not survive the fork; queued jobs belong to the parent.
        self.__init__()  # type: ignore[misc]


_pool = _Pool()
submit = _pool.submit

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_pool._after_fork_in_child)


# --------------------------------------------------------------------------------------
# to_thread


class _Call:
    """One ``to_thread`` call: runs on a worker, reports back to the awaiting loop."""

    __slots__ = ("args", "cv", "exc", "fn", "fut", "resolved", "value", "waker")

    def __init__(
        self, fn: Callable[..., Any], args: tuple[Any, ...], cv: _CVContext, waker: _Waker
    ) -> None:
        self.fn: Callable[..., Any] | None = fn
        self.args: tuple[Any, ...] | None = args
        self.cv: _CVContext | None = cv
        self.waker = waker
        self.value: Any = None
        self.exc: BaseException | None = None
        self.fut: Any = None  # the future the awaiting task waits on now (loop thread)
        self.resolved = False  # fn returned and the loop was told (loop thread only)

    def __call__(self) -> None:  # worker thread
        cv, fn, args = self.cv, self.fn, self.args
        assert cv is not None
        assert fn is not None
        assert args is not None
        self.fn = self.args = self.cv = None
        try:
            self.value = cv.run(fn, *args)
        except BaseException as e:
            self.exc = e
        self.waker.post(self._resolve)

    def _resolve(self) -> None:  # loop thread
        self.resolved = True
        f = self.fut
        if f is not None and not f.done():
            f.set_result(None)


def _fn_name(fn: object) -> str:
    mod = getattr(fn, "__module__", None)
    name = getattr(fn, "__qualname__", None) or repr(fn)
    return f"{mod}.{name}" if mod in ("time", "os", "socket", "select") else name


def _call_failed(e: TypeError, fn: object, where: str) -> TypeError:
    """``fn(ctx, *args)`` failed at the call itself: say that tether passes ``ctx`` first."""
    err = TypeError(
        f"tether: {where} calls fn(ctx, *args), the context first, and calling "
        f"{_fn_name(fn)} that way failed ({e}). Pass a function whose first parameter "
        f"is the context (def work(ctx, ...)); to run one that takes none, wrap it: "
        f"lambda ctx, *a: {_fn_name(fn)}(*a)"
    )
    err.__cause__ = e
    return err


def _not_a_function(fn: object, where: str) -> TypeError:
    """``fn`` is not callable: say so, and close a coroutine (no never-awaited warning)."""
    if type(fn) is CoroutineType:
        fn.close()
        return TypeError(
            f"tether: {where} needs a function, not a coroutine object: pass the "
            "function and its arguments, g.go(fetch, url), not g.go(fetch(ctx, url)); "
            "async functions run in a tether.TaskGroup"
        )
    return TypeError(f"tether: {where} needs a callable, got {type(fn).__name__}")


def _returned_coroutine(value: CoroutineType[Any, Any, Any], fn: object, where: str) -> TypeError:
    value.close()  # never awaited, and never will be: no warning
    return TypeError(
        f"tether: {where} runs plain functions on a thread, but {_fn_name(fn)} is an "
        "async function (it returned a coroutine); run it in a tether.TaskGroup, or "
        "await it directly"
    )


def _enter_child(child: Context, fn: Callable[..., Any], *args: Any) -> Any:
    _current.set(child)
    try:
        value = fn(child, *args)
    except TypeError as e:
        tb = e.__traceback__
        if tb is not None and tb.tb_next is None:  # the call itself failed, not fn's body
            raise _call_failed(e, fn, "to_thread") from e
        raise
    if type(value) is CoroutineType:
        raise _returned_coroutine(value, fn, "to_thread")
    return value


async def to_thread(
    ctx: Context, fn: Callable[[Context, *Ts], T], *args: *Ts, abandon: bool = False
) -> T:
    """Run ``fn(child, *args)`` in a worker thread and await its result.

    ``child`` is a context derived from ``ctx`` (``with_cancel``): it ends when ``ctx``
    ends, and when the awaiting task is cancelled. The thread can poll it
    (``child.check()``), block on it (``child.done().wait(t)``), read its budget
    (``child.remaining()``) or hook a callback onto it: the thing ``asyncio.to_thread``
    cannot give a worker thread. The worker carries a copy of the caller's
    ``contextvars``, with ``tether.current()`` set to ``child``.

    Cancellation: if the awaiting task is cancelled, ``child`` is cancelled (its cause
    is the ``CancelledError``) and the await still waits for ``fn`` to return (it
    should, promptly, since it watches ``child``), then re-raises ``CancelledError``;
    further cancellations while it waits are absorbed into that one. With
    ``abandon=True`` it re-raises at once instead and ``fn`` finishes on its own,
    unobserved (its result or error is dropped). ``to_thread`` never interrupts
    ``fn``: a thread cannot be killed, only asked to stop.

    Blocks (suspends) the calling task until ``fn`` returns, not the event loop. Each
    call runs ``fn`` once, in a fresh child context. Call it from a coroutine on any
    event loop, in any thread; ``fn`` runs on tether's shared worker threads (reused,
    started on demand, never more than the work needs). If ``ctx`` already ended, it
    raises ``ctx``'s error at once (a fresh one, as ``ctx.check()``) and ``fn`` is not
    called. Raises what ``fn`` raised, or ``CancelledError`` as above; ``TypeError``
    for a ``None``/non-Context ``ctx`` or a non-callable ``fn``; ``RuntimeError``
    outside an event loop.

    Added in 0.1.
    """
    from asyncio import CancelledError, get_running_loop

    from ._aio import waker_for

    if not callable(fn):
        raise _not_a_function(fn, "to_thread")
    loop = get_running_loop()
    cancel = _derive(ctx, "to_thread", None, False, None)
    child = cancel._ctx
    c = child._c or child
    if c._err is not None:
        cancel()
        raise _fresh_error(c)
    call = _Call(_enter_child, (child, fn, *args), copy_context(), waker_for(loop))
    try:
        submit(call)
    except BaseException:
        cancel()
        raise
    cancelled: BaseException | None = None
    try:
        while not call.resolved:
            call.fut = fut = loop.create_future()
            try:
                await fut
            except CancelledError as e:
                if cancelled is None:
                    cancelled = e
                    cancel(e)
                if abandon:
                    raise
    finally:
        call.fut = None
        cancel()
    if cancelled is not None:
        if call.exc is not None and not isinstance(call.exc, ContextError):
            cancelled.__context__ = call.exc  # keep fn's own failure visible
        raise cancelled
    exc = call.exc
    if exc is not None:
        call.exc = None
        raise exc
    return call.value  # type: ignore[no-any-return]
