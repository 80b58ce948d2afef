"""The asyncio bridge: waking tasks when a context ends, from whatever thread ended it.

Imported on first use by ``await ctx.done()`` and ``async with scope``, so that
``import tether`` does not import asyncio.

A context that ends wakes asyncio waiters through a per-loop ``_Waker``: every
notification for a loop is appended to the waker's batch, and only the first one of a
batch schedules the drain with ``call_soon_threadsafe`` (or ``call_soon`` when the
canceller runs on that loop's own thread). When a timer ends ten thousand contexts
waited on by ten thousand tasks of one loop, the loop is woken once, not ten thousand
times.

The waker is also its loop's own deadline timer. A scope entered with ``async with``
whose context has a deadline on the real clock is counted in ``scopes``, and the waker
keeps one ``TimerHandle`` at the earliest deadline of its open scopes. When it fires it
ends, on the loop's thread and in one critical section, every context of the shared
timer heap whose deadline passed (what the timer thread would have done), then re-arms
at the heap's next deadline while scopes are open. The heap entry stays: the timer thread
still ends the context for threads and other loops if this loop is blocked; whichever
pops a deadline first ends it. A FakeClock drives deadlines itself: nothing is armed.
See docs/design.md section 13.2.

``async with scope`` runs this module's ``scope_aenter``/``scope_aexit``, installed on
``Scope`` when the module is imported (design.md section 13.4).
"""

from __future__ import annotations

import math
import sys
import threading
from asyncio import AbstractEventLoop, CancelledError, TimerHandle, current_task
from asyncio.events import _get_running_loop
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

from . import _clock, _context
from ._errors import Canceled

if TYPE_CHECKING:
    from types import TracebackType

    from ._context import Context, Scope

_LOCK = _context._LOCK
_rc = _context._rc
_REAL_TIMERS = _context._REAL_TIMERS
_TIMED = _context._TIMED
_INTERRUPTED = _context._INTERRUPTED
_EXITED = _context._EXITED
_ENTERED_ASYNC = _context._ENTERED | _context._ASYNC
_ASYNC = _context._ASYNC
_current = _context._current
_BACKGROUND = _context._BACKGROUND
_cancel = _context._cancel
_Canceled = Canceled
_fresh_error = _context._fresh_error
_deferred = _context._deferred  # one deque for the process's life

__all__ = ["scope_aenter", "scope_aexit", "wait_done", "waker_for"]


class _Waker:
    __slots__ = ("_drain_cb", "_lock", "_pending", "loop", "scopes", "timer", "timer_at")

    def __init__(self, loop: AbstractEventLoop) -> None:
        self.loop = loop
        # The loop's own deadline timer (see the module docstring); touched only on the
        # loop's thread. `scopes`: deadline scopes open on this loop.
        self.timer: TimerHandle | None = None
        self.timer_at = math.inf
        self.scopes = 0
        # An RLock: a signal handler or finalizer that runs on this thread while it holds
        # the lock (at a call inside the `with`) re-enters instead of deadlocking. It is
        # safe because each section reads and writes _pending with no call in between.
        self._lock = threading.RLock()
        self._pending: list[Any] | None = None  # None: no drain scheduled
        # One bound method for the waker's life, not one per post (a cycle through the
        # waker, collected with it; a waker lives as long as its loop's thread uses it)
        self._drain_cb = self._drain

    def post(self, fn: Callable[[], object]) -> bool:
        """Run ``fn`` on the loop soon. Any thread; never blocks.

        Returns False if the loop is closed: ``fn`` will never run (whoever handed over
        something that must not be lost, such as a Limiter slot, takes it back).
        """
        return self.post_many([fn])

    def post_many(self, fns: list[Any]) -> bool:
        """Run each of ``fns`` on the loop soon, in order, in one loop callback.

        A CancelFunc among them stands for its ``_interrupt()`` (no bound method made).
        Returns False if the loop is closed and nothing will run.
        """
        loop = self.loop
        with self._lock:
            if self._pending is not None:
                self._pending.extend(fns)
                return not loop.is_closed()
            self._pending = fns
        try:
            if _get_running_loop() is loop:
                loop.call_soon(self._drain_cb)
            else:
                loop.call_soon_threadsafe(self._drain_cb)
        except RuntimeError:  # the loop is closed: nobody is left to wake
            with self._lock:
                self._pending = None
            return False
        return True

    def arm(self, deadline: float) -> None:
        """Have the loop expire deadlines at ``deadline`` (on the clock's scale).

        On the loop's thread. The delay is converted to the loop's own clock, whatever
        its scale (``loop.time()`` need not be ``time.monotonic``).
        """
        h = self.timer
        if h is not None:
            h.cancel()
        self.timer_at = deadline
        self.timer = self.loop.call_later(deadline - _clock.now(), self._fire)

    def _fire(self) -> None:
        """The loop's timer: end every context whose deadline passed, then re-arm."""
        self.timer = None
        self.timer_at = math.inf
        q = _clock.timers
        if q is not _REAL_TIMERS:  # a FakeClock drives deadlines now
            return
        nxt = _context._expire_due(q, _clock.now())
        if nxt is not None and self.scopes > 0:
            # math.inf: the expiry was deferred (re-entered); look again next iteration
            self.arm(nxt if nxt != math.inf else _clock.now())

    def _drain(self) -> None:
        with self._lock:
            batch = self._pending
            self._pending = None
        cancel_func = _context.CancelFunc
        for fn in batch or ():
            try:
                if type(fn) is cancel_func:
                    fn._interrupt()
                else:
                    fn()
            except Exception:  # isolated: the rest of the batch still runs
                _context._log_exception("tether: a wake-up on the event loop raised")


_tls = threading.local()

# The cancel requests tether itself has made on a task and not yet taken back, because a
# context ended: by `async with` scopes (`scope_cancels`, each taken back when its block
# is left) and by TaskGroups interrupting their tasks (`group_cancels`, dropped when the
# task is done). What is left of `task.cancelling()` beyond them came from elsewhere.
# Loop threads only; an entry is removed when its count drops to zero.
scope_cancels: dict[Any, int] = {}
group_cancels: dict[Any, int] = {}


# The last (loop, waker) pair handed out, read without a lock (one immutable tuple): the
# common case, one loop, skips the thread-local lookup (~500 instructions per scope).
_last: tuple[Any, Any] = (None, None)


def waker_for(loop: AbstractEventLoop) -> _Waker:
    """The waker of ``loop``; call it on the loop's thread."""
    global _last
    lw = _last
    if lw[0] is loop:
        w: _Waker | None = lw[1]
        assert w is not None
        return w
    w = getattr(_tls, "waker", None)
    if w is None or w.loop is not loop:
        w = _tls.waker = _Waker(loop)
    _last = (loop, w)
    return w


class _FutureWaiter:
    """Resolves ``fut`` on its loop's thread (registered as ``(waker, self)``)."""

    __slots__ = ("_fut",)

    def __init__(self, fut: Any) -> None:
        self._fut = fut

    def __call__(self) -> None:
        if not self._fut.done():
            self._fut.set_result(None)


def wait_done(c: Context) -> Generator[Any, None, None]:
    """The body of ``await ctx.done()`` for owner ``c``."""
    if c._err is not None:
        return
    loop = _get_running_loop()
    if loop is None:
        from . import _trio

        if _trio.in_trio():
            return (yield from _trio.wait_done(c).__await__())
        raise RuntimeError(
            "tether: `await ctx.done()` needs a running asyncio event loop or Trio; "
            "from a plain thread, call ctx.done().wait(timeout)"
        )
    fut = loop.create_future()
    if c is _context._BACKGROUND:  # never ends: wait for the task's own cancellation
        yield from fut
        return
    w = (waker_for(loop), _FutureWaiter(fut))
    if not _context._add_waiter(c, w):
        return
    try:
        yield from fut
    finally:
        _context._remove_waiter(c, w)


async def scope_aenter(scope: Scope) -> Context:
    """``Scope.__aenter__`` (installed on ``Scope`` when this module is imported): enter,
    and register the cancel function to interrupt the task.

    The hot path of ``async with``, one coroutine and no call beyond it: ``_enter`` is
    inlined, and so is the waiter registration, in ``_add_waiter``'s critical section (the
    shape of ``_context._cancel``'s: re-entry detected by ``_rc()`` and deferred, the lock
    released by the handler of an asynchronous exception).
    """
    cf = scope[1]
    loop = _get_running_loop()
    task = None if loop is None else current_task(loop)
    if task is None:
        raise RuntimeError(
            "tether: `async with` a context must run inside an asyncio task; "
            "use a plain `with` elsewhere"
        )
    if cf._state:  # cf._enter(_ASYNC), inlined
        cf._enter(_ASYNC)  # raises: the scope was already entered
    cf._state = _ENTERED_ASYNC
    c = cf._ctx  # a scope's context is always an owner
    # the previous context, not the Token (see CancelFunc._enter)
    cf._prev = _current.get(_BACKGROUND)
    _current.set(c)
    cf._task = task
    cf._cancelling = task.cancelling()
    lw = _last
    w: _Waker = lw[1] if lw[0] is loop else waker_for(loop)  # type: ignore[arg-type]
    cf._waker = w
    n = _rc()
    if n:  # re-entered by a finalizer or a signal handler: registration deferred
        live = _context._add_waiter(c, cf)
    else:
        mine = False
        try:
            _LOCK.acquire()
            mine = True
            live = c._err is None
            if live:
                if c._waiters is None:
                    c._waiters = cf
                else:
                    _context._put_waiter(c, cf)
            mine = False
            _LOCK.release()
        except BaseException:  # an asynchronous exception: undo, release, re-raise
            if mine:
                _context._drop_waiter(c, cf)
            while _rc() > n:
                _LOCK.release()
            raise
        if _deferred:
            _context._run_deferred()
    if not live:
        # born ended: interrupt at the body's first suspension, as asyncio.timeout(0)
        w.post(cf._interrupt)
        return c
    d = c._deadline
    if d is not None and _clock.timers is _REAL_TIMERS:
        # The loop's own timer delivers the deadline too (the timer thread may be slow
        # to get the GIL from this very loop): one armed handle per loop, at the
        # earliest deadline of its open scopes.
        cf._state = _ENTERED_ASYNC | _TIMED
        w.scopes += 1
        if d < w.timer_at:
            w.arm(d)
    return c


async def scope_aexit(
    scope: Scope,
    exc_type: type[BaseException] | None,
    exc: BaseException | None,
    tb: TracebackType | None,
) -> None:
    """``Scope.__aexit__`` (installed on ``Scope`` when this module is imported): leave,
    and raise the context's error if it was the scope's interruption that ended the block.

    Raised here, not by a helper: one frame fewer in the traceback is one frame object
    and one traceback entry fewer per interruption (tracked by the collector). No local
    may hold the task or the new error when it is raised: the error's traceback holds
    this frame, and a cycle would keep frames, tracebacks and the task's handles alive
    until a collector pass.
    """
    cf = scope[1]
    task = cf._task
    assert task is not None
    cf._task = None  # no task -> frame -> cancel function -> task cycle
    state = cf._state
    if state & _TIMED:
        cf._waker.scopes -= 1
    cf._state = state | _EXITED  # cf._exit(...), inlined: restore current()
    _current.set(cf._prev)
    c = cf._ctx
    if not state & _INTERRUPTED:
        # unregister the interrupter and cancel, under one lock hold
        ended = c._err is not None
        _cancel(c, _Canceled(), None, cf)
        if not ended or exc_type is None or not issubclass(exc_type, CancelledError):
            return
        # The context ended but its own interruption has not run yet (it was posted
        # after the one that reached the task): the same rule as below, if tether
        # delivered what did reach it.
        n = task.cancelling()
        k = scope_cancels.get(task, 0)
        if n <= cf._cancelling or not (k or task in group_cancels):
            return
        if not _answered(task, n - cf._cancelling - k):
            return
    else:
        if c._err is None:  # it has ended (its end interrupted the task); as _exit
            _cancel(c, _Canceled(), None)
        n = task.uncancel()
        k = scope_cancels.get(task, 1) - 1
        if k:
            scope_cancels[task] = k
        else:
            scope_cancels.pop(task, None)
        if exc_type is None or not issubclass(exc_type, CancelledError):
            return
        # Other cancel requests pending beyond the scope's own: those tether made because
        # a context ended (an enclosing scope's, a TaskGroup's on its task) are answered
        # by this context's error too: the code inside sees DeadlineExceeded, whoever
        # delivered the interruption. A request from elsewhere passes through, as
        # asyncio.timeout does.
        if n > cf._cancelling and not _answered(task, n - cf._cancelling - k):
            return
    del task
    raise _fresh_error(c) from (exc if c._cause is None else c._cause)


def _answered(task: Any, others: int) -> bool:
    """``others`` pending cancel requests beyond the scope's own: True if every one was a
    TaskGroup's (taken back now: the context's error answers them), False if any came
    from outside tether."""
    g = group_cancels.get(task, 0)
    if others - g > 0:
        return False
    if g:
        del group_cancels[task]
        for _ in range(g):
            task.uncancel()
    return True


# `async with scope` runs these coroutines directly: no call from Scope's own methods
# (which import this module on first use, so that `import tether` does not import
# asyncio) into a helper here, two Python frames fewer per scope.
_context.Scope.__aenter__ = scope_aenter  # type: ignore[method-assign,assignment]
_context.Scope.__aexit__ = scope_aexit  # type: ignore[method-assign,assignment]
# ...and the core reaches this module through its `_aio` global (CancelFunc._interrupt),
# which `_load_aio` sets only when the core imports it: set it whoever imported it first.
_context._aio = sys.modules[__name__]
