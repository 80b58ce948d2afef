"""``Limiter``: bounded concurrency that sheds load, and waits only as long as a context.

The free slots are tokens in a ``deque``: ``try_acquire`` pops one without a lock
(``deque.pop`` is atomic), which is what makes load shedding cost ~100 ns. Everything
else takes ``_lock``, which guards ``_waiters`` and every waiter's ``state``, and under
which tokens are added. Invariant (under ``_lock``): if anyone waits, no token is free
-- a release hands its slot straight to the first waiter (FIFO) instead of freeing it,
and a waiter that gives up leaves the queue at once. So a lock-free ``try_acquire`` can
never take a slot that a waiter was promised. ``_lock`` is a leaf lock: nothing is
called while holding it but ``Lock.release``.

A waiter's state goes WAITING -> GRANTED (by ``release``) or WAITING -> GAVE_UP (its
context ended, or it was interrupted), once, under ``_lock``; whoever moves it wakes it.
"""

from __future__ import annotations

import sys
import threading
from collections import deque
from types import TracebackType
from typing import TYPE_CHECKING, Any, final

from . import _context
from ._context import Context, _fresh_error, _owner, current

_getframe = sys._getframe

if TYPE_CHECKING:
    from asyncio import Future

    from ._aio import _Waker

__all__ = ["Limiter"]

_WAITING = 0
_GRANTED = 1
_GAVE_UP = 2


class _Waiter:
    """A thread waiting in ``acquire``; also the callback its context runs when it ends."""

    __slots__ = ("limiter", "lock", "state")

    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter
        self.state = _WAITING
        self.lock = threading.Lock()
        self.lock.acquire()

    def wake(self) -> bool:
        self.lock.release()
        return True

    def __call__(self) -> None:  # the context ended; any thread
        if self.limiter._give_up(self):
            self.wake()


class _TaskWaiter:
    """A task waiting in ``aacquire``."""

    __slots__ = ("fut", "limiter", "state", "waker")

    def __init__(self, limiter: Limiter, fut: Future[None], waker: _Waker) -> None:
        self.limiter = limiter
        self.state = _WAITING
        self.fut = fut
        self.waker = waker

    def wake(self) -> bool:  # any thread; False: the task's loop is closed
        return self.waker.post(self._resolve)

    def _resolve(self) -> None:  # loop thread
        if not self.fut.done():
            self.fut.set_result(None)

    def __call__(self) -> None:  # the context ended; any thread
        if self.limiter._give_up(self):
            self.wake()


@final
class Limiter:
    """At most ``n`` holders at once: shed load with ``try_acquire``, or wait with a context.

    ``try_acquire()`` takes a slot if one is free, else returns ``False`` at once (shed
    the request: answer 503, serve stale, skip the prefetch). ``acquire(ctx)`` waits,
    first come first served, but no longer than ``ctx`` lives. ``release()`` gives the
    slot back (to the longest waiter, if any). ``with limiter:`` / ``async with
    limiter:`` acquire with ``tether.current()`` as the context and release on exit.

    One limiter serves threads and asyncio tasks (of any loop) together. A slot is not
    owned by whoever took it: any thread may release it (as a semaphore). Memory is
    8 bytes per slot.

    Added in 0.1.
    """

    __slots__ = ("_lock", "_n", "_tokens", "_waiters", "__weakref__")
    __module__ = "tether"

    _n: int
    _tokens: deque[None]  # one entry per free slot
    _lock: threading.Lock
    _waiters: deque[_Waiter | _TaskWaiter]  # (L) FIFO, all WAITING

    def __init__(self, n: int) -> None:
        if type(n) is not int:
            raise TypeError(
                f"tether: Limiter(n) needs an int number of slots, got {type(n).__name__}"
            )
        if n < 0:
            raise ValueError(f"tether: Limiter(n) needs n >= 0 slots, got {n}")
        self._n = n
        self._tokens = deque([None] * n)
        self._lock = threading.Lock()
        self._waiters = deque()

    @property
    def limit(self) -> int:
        """The number of slots, ``n``. Fixed.

        Non-blocking, thread-safe, idempotent, never raises; no context involved (so
        an ended one changes nothing).
        """
        return self._n

    @property
    def in_use(self) -> int:
        """How many slots are held now: a snapshot, for metrics and tests.

        Non-blocking, thread-safe (the value may be stale as soon as it is read), never
        raises; each call reads afresh. No context involved (an ended one changes
        nothing).
        """
        return self._n - len(self._tokens)

    def try_acquire(self) -> bool:
        """Take a slot if one is free now and return ``True``; else return ``False``.

        Never blocks (no lock: ~100 ns). Not idempotent: each ``True`` holds one more
        slot, which the caller must ``release()``. Thread-safe, and safe from any event
        loop. Never takes a slot that a waiting ``acquire`` is owed. No context is
        involved, so it succeeds even for work whose context already ended: check that
        first. Never raises.
        """
        t = self._tokens
        if t:
            try:
                t.pop()
            except IndexError:
                return False
            return True
        return False

    def acquire(self, ctx: Context) -> None:
        """Take a slot, blocking the calling thread until one is free or ``ctx`` ends.

        First come, first served among waiters (threads and tasks together). Not
        idempotent: each return holds one more slot, which the caller must
        ``release()``. Thread-safe. If ``ctx`` already ended it raises at once, even
        if a slot is free (as Go's ``semaphore.Acquire``), and if ``ctx`` ends while it
        waits it stops waiting and raises: a fresh ``ctx.err()``-type error, as
        ``ctx.check()``. A slot granted at the moment ``ctx`` ends is kept (returns
        normally). Raises ``Canceled``/``DeadlineExceeded`` as said, ``TypeError`` for
        a ``None``/non-Context ``ctx``, and ``KeyboardInterrupt`` if interrupted (no
        slot is then held). From an event loop, use ``await aacquire(ctx)``: on a loop's
        thread, a call that has to wait warns (``tether.BlockingCallWarning``).
        """
        c = _owner(ctx)
        if c._err is not None:
            raise _fresh_error(c)
        t = self._tokens
        if t:
            try:
                t.pop()
                return
            except IndexError:
                pass
        if _context._on_loop_thread():
            _context._warn_blocking(
                "Limiter.acquire(ctx) (or `with limiter:`) with no free slot",
                "await limiter.aacquire(ctx) or `async with limiter:`",
                3 if _getframe(1).f_code is not _ENTER_CODE else 4,
            )
        w = _Waiter(self)
        if not self._enqueue(w):
            return
        never_ends = c is _context._BACKGROUND
        if not never_ends and not _context._add_waiter(c, w):
            w()  # ended meanwhile
        try:
            w.lock.acquire()
        except BaseException:
            self._abandon(w)
            raise
        finally:
            if not never_ends:
                _context._remove_waiter(c, w)
        if w.state != _GRANTED:
            raise _fresh_error(c)

    async def aacquire(self, ctx: Context) -> None:
        """Take a slot, suspending the calling task until one is free or ``ctx`` ends.

        The asyncio form of ``acquire`` (blocks the task, never the loop), with the same
        semantics: first come first served with threads and other tasks; each return
        holds one more slot to ``release()`` (not idempotent); any loop, any thread;
        raises ``ctx``'s error at once if it already ended, or as soon as it ends while
        waiting. If the task is cancelled while waiting, no slot is held and
        ``CancelledError`` propagates. Raises ``Canceled``/``DeadlineExceeded``,
        ``CancelledError``, ``TypeError`` for a ``None``/non-Context ``ctx``,
        ``RuntimeError`` outside an event loop.
        """
        c = _owner(ctx)
        if c._err is not None:
            raise _fresh_error(c)
        t = self._tokens
        if t:
            try:
                t.pop()
                return
            except IndexError:
                pass
        from asyncio import get_running_loop

        from ._aio import waker_for

        loop = get_running_loop()
        w = _TaskWaiter(self, loop.create_future(), waker_for(loop))
        if not self._enqueue(w):
            return
        never_ends = c is _context._BACKGROUND
        if not never_ends and not _context._add_waiter(c, w):
            w()
        try:
            await w.fut
        except BaseException:
            self._abandon(w)
            raise
        finally:
            if not never_ends:
                _context._remove_waiter(c, w)
        if w.state != _GRANTED:
            raise _fresh_error(c)

    def release(self) -> None:
        """Give a slot back: to the longest waiter if there is one, else free it.

        Never blocks (a short lock). Not idempotent: call it once per successful
        acquire. Thread-safe and safe from any event loop; any thread may release a
        slot another took. No context involved, so it works the same after the work's
        context ended. Raises ``ValueError`` if no slot is held (more releases than
        acquires).
        """
        while True:
            with self._lock:
                ws = self._waiters
                if ws:
                    w = ws.popleft()
                    w.state = _GRANTED
                else:
                    t = self._tokens
                    if len(t) >= self._n:
                        raise ValueError(
                            "tether: Limiter.release() without a matching acquire; release "
                            "once per successful acquire()/try_acquire()"
                        )
                    t.append(None)
                    return
            if w.wake():
                return
            # The waiter's event loop is closed: it will never take the slot. Take the
            # grant back (so that its cleanup does not release it again) and pass it on.
            with self._lock:
                w.state = _GAVE_UP

    def __enter__(self) -> Limiter:
        """``with limiter:`` is ``limiter.acquire(tether.current())``; returns the limiter.

        Blocks like ``acquire`` (not idempotent: each entry holds a slot until exit);
        thread-safe. If the current context already ended, raises its error and the
        body does not run. Raises as ``acquire``.
        """
        self.acquire(current())
        return self

    # acquire() tells its caller's frame apart: `with limiter:` warns at the with line.

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Release the slot taken by ``__enter__``, whatever the body did.

        Never blocks; not idempotent (once per entry); thread-safe. Works the same if
        the context ended meanwhile. Raises nothing of its own (the body's exception
        propagates).
        """
        self.release()

    async def __aenter__(self) -> Limiter:
        """``async with limiter:`` is ``await limiter.aacquire(tether.current())``.

        Blocks (suspends) the task like ``aacquire``; not idempotent (one slot per
        entry); any loop, any thread. If the current context already ended, raises its
        error and the body does not run. Raises as ``aacquire``.
        """
        await self.aacquire(current())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Release the slot taken by ``__aenter__``, whatever the body did.

        Never blocks; not idempotent (once per entry); safe from any thread or loop.
        Works the same if the context ended meanwhile. Raises nothing of its own.
        """
        self.release()

    # -- internals ---------------------------------------------------------------------

    def _enqueue(self, w: _Waiter | _TaskWaiter) -> bool:
        """Take a free slot (False: no need to wait), or join the queue (True)."""
        with self._lock:
            t = self._tokens
            if t:
                try:
                    t.pop()
                    return False
                except IndexError:
                    pass
            self._waiters.append(w)
            return True

    def _give_up(self, w: Any) -> bool:
        """Move ``w`` from WAITING to GAVE_UP; True if this call did it."""
        with self._lock:
            if w.state != _WAITING:
                return False
            w.state = _GAVE_UP
            self._waiters.remove(w)
            return True

    def _abandon(self, w: _Waiter | _TaskWaiter) -> None:
        """The waiter was interrupted: leave the queue, or pass on a slot just granted."""
        if not self._give_up(w) and w.state == _GRANTED:
            self.release()

    def __repr__(self) -> str:
        return f"<tether.Limiter in_use={self.in_use}/{self._n} waiting={len(self._waiters)}>"


_ENTER_CODE = Limiter.__enter__.__code__
