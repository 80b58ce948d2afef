"""Worker threads: the shared elastic pool behind ``Group`` and ``to_thread``.

Go starts a goroutine per ``errgroup.Go``; a thread per task is too dear in Python
(starting one costs 50-100 us), and a fixed-size pool (``ThreadPoolExecutor``) deadlocks
a group whose tasks wait for one another once the pool is full. So, as the after_func
runner does, but tuned for throughput:

- a job goes to an idle worker if there is one (the most recently idle: LIFO, so the
  others stay idle long enough to exit);
- otherwise it waits in a FIFO backlog, and a new worker is started, unless one is
  already starting. A worker that takes a job from the backlog and sees more behind it
  starts the next one. So every queued job gets a thread of its own soon (no deadlock,
  Go's semantics), but a burst of short jobs does not start a thread per job: the
  workers drain the backlog while the next thread starts (measured in docs/design.md).
- a worker idle for ``IDLE_SECONDS`` exits; the pool is empty when nothing runs.

This module does not import asyncio (``import tether`` must not); ``to_thread`` imports
it when called.

Workers are daemon threads named ``tether-worker-N`` while they run a job and
``tether-worker-idle-N`` while they wait for one, so that the test leak check can tell
an idle worker (not a leak) from one still running a task after its test (a leak).

Locking: ``_Pool._lock`` guards ``_idle``, ``_backlog``, ``_starting``, ``_count`` and
every idle worker's ``job``. It is a leaf lock: nothing is called while holding it but
``Lock.release`` (which never blocks).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from contextvars import Context as _CVContext
from contextvars import copy_context
from typing import TYPE_CHECKING, Any, TypeVar, TypeVarTuple

from ._context import Context, _current, _derive, _fresh_error
from ._errors import ContextError

if TYPE_CHECKING:
    from ._aio import _Waker

__all__ = ["IDLE_SECONDS", "submit", "to_thread"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")
Job = Callable[[], object]

IDLE_SECONDS = 2.0
_log = logging.getLogger("tether")


class _Worker:
    __slots__ = ("job", "wake")

    def __init__(self) -> None:
        self.job: Job | None = None
        self.wake = threading.Lock()  # released (once) to hand this worker a job
        self.wake.acquire()


class _Pool:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        # _lock protects the following fields.
        self._idle: list[_Worker] = []  # waiting for a job, most recently idle last
        self._backlog: deque[Job] = deque()  # jobs no worker has taken yet
        self._starting = False  # a worker thread is being started
        self._count = 0  # workers ever started, for names

    def submit(self, job: Job) -> None:
        """Run ``job()`` on a worker thread soon. Never blocks for long; any thread."""
        lock = self._lock
        lock.acquire()
        idle = self._idle
        if idle:
            w = idle.pop()
            w.job = job
            w.wake.release()
            lock.release()
            return
        self._backlog.append(job)
        if self._starting:
            lock.release()
            return
        self._starting = True
        self._count += 1
        n = self._count
        lock.release()
        self._spawn(n)

    def _spawn(self, n: int) -> None:
        t = threading.Thread(target=self._work, args=(n,), name=f"tether-worker-{n}", daemon=True)
        try:
            t.start()
        except BaseException:
            # The job stays in the backlog: the next worker to finish will take it.
            with self._lock:
                self._starting = False
            raise

    def _work(self, n: int) -> None:
        lock = self._lock
        me = _Worker()
        thread = threading.current_thread()
        busy_name = thread.name
        idle_name = f"tether-worker-idle-{n}"
        first = True
        while True:
            spawn = 0
            lock.acquire()
            if first:
                self._starting = False
                first = False
            backlog = self._backlog
            if backlog:
                job: Job | None = backlog.popleft()
                if backlog and not self._starting:  # more waiting: start the next worker
                    self._starting = True
                    self._count += 1
                    spawn = self._count
            else:
                job = None
                self._idle.append(me)
            lock.release()
            if job is None:
                thread.name = idle_name
                if not me.wake.acquire(timeout=IDLE_SECONDS):
                    with lock:
                        try:
                            self._idle.remove(me)
                        except ValueError:
                            pass  # a job was handed to us as we timed out: take it
                        else:
                            return
                    me.wake.acquire()
                job = me.job
                me.job = None
                thread.name = busy_name
            elif spawn:
                try:
                    self._spawn(spawn)
                except Exception:  # pragma: no cover - out of threads
                    _log.exception("tether: could not start a worker thread")
            try:
                job()  # type: ignore[misc]
            except BaseException:  # pragma: no cover - jobs catch their own errors
                _log.exception("tether: a worker job raised")
            job = None

    def workers(self) -> tuple[int, int]:
        """(idle workers, queued jobs), for tests and tools."""
        with self._lock:
            return len(self._idle), len(self._backlog)

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


def _enter_child(child: Context, fn: Callable[..., Any], *args: Any) -> Any:
    _current.set(child)
    return fn(child, *args)


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
        raise TypeError(f"tether: to_thread needs a callable, got {type(fn).__name__}")
    loop = get_running_loop()
    child, cancel = _derive(ctx, "to_thread", None, False, None)
    c = child._c
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
