"""What the database and Redis bindings share: the watch, the task interrupter, errors.

Private. Each ``bind`` does three things the same way:

- on entry, ``entry_check(ctx)`` raises the context's error if it already ended, or if
  its deadline already passed (the timer thread may not have fired yet), before any
  round trip;
- inside, a ``Watch`` runs the driver's stop (``conn.interrupt()``, a cancel request, a
  socket shutdown) from ``after_func`` when the context ends, and, on exit, ``Watch.stop``
  waits for a stop that already started, so it can never hit the connection's *next*
  operation, after the block;
- on the way out, ``ended(ctx)`` says whether a driver error is the context's doing, and
  ``error(ctx)`` makes the fresh ``Canceled``/``DeadlineExceeded`` to raise ``from`` it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

from .. import _clock
from .._context import Context, _fresh_error, _owner, after_func
from .._errors import ContextError, DeadlineExceeded

__all__ = ["Interrupter", "Watch", "chain", "ended", "entry_check", "error", "missing"]


def missing(module: str, extra: str, e: ImportError) -> ImportError:
    """The ``ImportError`` naming the extra to install."""
    err = ImportError(
        f"tether: tether.integrations.{module} needs the '{extra}' extra: "
        f"pip install 'tether[{extra}]'"
    )
    err.__cause__ = e
    return err


def _past_deadline(c: Context) -> bool:
    d = c._deadline
    return d is not None and _clock.now() >= d


def ended(ctx: Context) -> bool:
    """True once ``ctx`` ended or its deadline passed (even before the timer fired)."""
    c = ctx._c or ctx
    return c._err is not None or _past_deadline(c)


def error(ctx: Context) -> ContextError:
    """A fresh error for an ended ``ctx``: its own type, or ``DeadlineExceeded`` when only
    the deadline passed and the timer thread has not marked it yet (never early: the
    deadline did pass)."""
    c = ctx._c or ctx
    if c._err is not None:
        return _fresh_error(c)
    return DeadlineExceeded()


def entry_check(ctx: object) -> Context:
    """Validate ``ctx`` and raise its error if it already ended; return its owner."""
    c = _owner(ctx)
    if c._err is not None:
        raise _fresh_error(c)
    if _past_deadline(c):
        raise DeadlineExceeded()
    return c


class Watch:
    """``after_func(ctx, fn)`` that can be stopped *and waited for*.

    ``stop()`` returns ``False`` if ``fn`` never started (it never will), ``True`` if it
    started — after waiting up to ``timeout`` seconds for it to finish, so the caller
    can hand the connection on knowing no stop is still in flight.
    """

    __slots__ = ("_done", "_fired", "_fn", "_stop")

    def __init__(self, ctx: Context, fn: Callable[[], object]) -> None:
        self._fn = fn
        self._fired = False
        # Held until fn has run: a Lock is ~20x cheaper to make than an Event, and only
        # the rare stop() that finds fn started ever waits on it.
        self._done = threading.Lock()
        self._done.acquire()
        self._stop = after_func(ctx, self._run)

    def _run(self) -> None:
        try:
            self._fired = True
            self._fn()
        finally:
            self._done.release()

    @property
    def fired(self) -> bool:
        return self._fired

    def stop(self, timeout: float) -> bool:
        if self._stop():
            return False
        if self._done.acquire(timeout=timeout):
            self._done.release()
        return True

    async def astop(self, timeout: float) -> bool:
        if self._stop():
            return False
        # The stop is a blocking call running in tether's after_func worker; it takes a
        # round trip on loopback. Poll rather than block the loop (this path is taken
        # only when the context ended while the block was leaving).
        end = time.monotonic() + timeout
        delay = 0.0005
        while not self._done.acquire(blocking=False):
            if time.monotonic() >= end:
                return True
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.02)
        self._done.release()
        return True


class Interrupter:
    """Interrupts the current asyncio task when ``ctx`` ends (as ``asyncio.timeout``).

    Built inside a task; ``close(exc)`` on the way out returns ``True`` iff this
    interrupter cancelled the task *and* ``exc`` is that cancellation (then it has been
    uncancelled, and the caller raises the context's error instead).
    """

    __slots__ = ("_active", "_cancelling", "_interrupted", "_loop", "_stop", "_task")

    def __init__(self, ctx: Context) -> None:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError(
                "tether: bind(ctx, conn) for an async connection must run in an asyncio "
                "task: use `async with bind(ctx, conn):` inside a coroutine"
            )
        self._task = task
        self._loop = task.get_loop()
        self._cancelling = task.cancelling()
        self._active = True  # read and written on the loop thread only
        self._interrupted = False
        self._stop = after_func(ctx, self._post)

    def _post(self) -> None:  # on tether's after_func worker
        try:
            self._loop.call_soon_threadsafe(self._interrupt)
        except RuntimeError:  # the loop closed: nothing left to interrupt
            pass

    def _interrupt(self) -> None:  # on the loop thread
        if self._active and not self._task.done():
            self._interrupted = True
            self._task.cancel()

    def close(self, exc: BaseException | None) -> bool:
        self._active = False
        self._stop()
        if not self._interrupted:
            return False
        if self._task.uncancel() > self._cancelling:
            return False  # somebody else cancelled the task too: theirs passes through
        return isinstance(exc, asyncio.CancelledError)


def chain(err: ContextError, cause: BaseException) -> Any:
    """``raise chain(error(ctx), e)`` is ``raise error(ctx) from e``, keeping the context's
    own cause (``tether.cause``) visible as a note."""
    own = err.__cause__
    if own is not None and own is not cause:
        err.add_note(f"tether: the context was cancelled with cause {own!r}")
    err.__cause__ = cause
    return err
