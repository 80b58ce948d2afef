"""The asyncio bridge: waking tasks when a context ends, from whatever thread ended it.

Imported on first use by ``await ctx.done()`` and ``async with scope``, so that
``import tether`` does not import asyncio.

A context that ends wakes asyncio waiters through a per-loop ``_Waker``: every
notification for a loop is appended to the waker's batch, and only the first one of a
batch schedules the drain with ``call_soon_threadsafe`` (or ``call_soon`` when the
canceller runs on that loop's own thread). When a timer ends ten thousand contexts
waited on by ten thousand tasks of one loop, the loop is woken once, not ten thousand
times.
"""

from __future__ import annotations

import threading
from asyncio import AbstractEventLoop, CancelledError, Task, current_task
from asyncio.events import _get_running_loop
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

from . import _context

if TYPE_CHECKING:
    from ._context import CancelFunc, Context

__all__ = ["TaskInterrupt", "enter_scope", "exit_scope", "wait_done", "waker_for"]


class _Waker:
    __slots__ = ("_lock", "_pending", "loop")

    def __init__(self, loop: AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._pending: list[Callable[[], object]] | None = None  # None: no drain scheduled

    def post(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` on the loop soon. Any thread; never blocks; drops it if closed."""
        with self._lock:
            if self._pending is not None:
                self._pending.append(fn)
                return
            self._pending = [fn]
        loop = self.loop
        try:
            if _get_running_loop() is loop:
                loop.call_soon(self._drain)
            else:
                loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is closed: nobody is left to wake
            with self._lock:
                self._pending = None

    def _drain(self) -> None:
        with self._lock:
            batch = self._pending
            self._pending = None
        for fn in batch or ():
            fn()


_tls = threading.local()


def waker_for(loop: AbstractEventLoop) -> _Waker:
    """The waker of ``loop``; call it on the loop's thread."""
    w: _Waker | None = getattr(_tls, "waker", None)
    if w is None or w.loop is not loop:
        w = _tls.waker = _Waker(loop)
    return w


class _FutureWaiter:
    __slots__ = ("_fut", "_waker")

    def __init__(self, waker: _Waker, fut: Any) -> None:
        self._waker = waker
        self._fut = fut

    def __call__(self) -> None:  # any thread
        self._waker.post(self._resolve)

    def _resolve(self) -> None:  # loop thread
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
    w = _FutureWaiter(waker_for(loop), fut)
    if not _context._add_waiter(c, w):
        return
    try:
        yield from fut
    finally:
        _context._remove_waiter(c, w)


class TaskInterrupt:
    """The waiter an ``async with`` scope registers: cancels its task when ctx ends."""

    __slots__ = ("active", "cancelling", "interrupted", "task", "waker")

    def __init__(self, task: Task[Any], waker: _Waker) -> None:
        self.task = task
        self.waker = waker
        self.cancelling = task.cancelling()
        self.active = True
        self.interrupted = False

    def __call__(self) -> None:  # any thread
        self.waker.post(self._fire)

    def _fire(self) -> None:  # loop thread, between steps of the task
        if self.active and not self.interrupted:
            self.interrupted = True
            self.task.cancel()


def enter_scope(cf: CancelFunc) -> Context:
    task = current_task() if _get_running_loop() is not None else None
    if task is None:
        raise RuntimeError(
            "tether: `async with` a context must run inside an asyncio task; "
            "use a plain `with` elsewhere"
        )
    ti = TaskInterrupt(task, waker_for(task.get_loop()))
    ctx = cf._enter(ti)
    c = ctx._c
    if c is not _context._BACKGROUND and not _context._add_waiter(c, ti):
        ti()  # born ended: interrupt at the body's first suspension, as asyncio.timeout(0)
    return ctx


def exit_scope(
    cf: CancelFunc, exc_type: type[BaseException] | None, exc: BaseException | None
) -> None:
    ti = cf._aio
    assert ti is not None
    ti.active = False
    c = cf._ctx
    if ti.interrupted:
        cf._exit()
        if (
            ti.task.uncancel() <= ti.cancelling
            and exc_type is not None
            and issubclass(exc_type, CancelledError)
        ):
            err = _context._fresh_error(c)
            if err.__cause__ is None:
                raise err from exc
            raise err
        return
    _context._remove_waiter(c, ti)
    cf._exit()
