"""The one clock, and the timer heaps that end contexts when their deadline passes.

All time in tether goes through ``now()``; ``tether.testing.FakeClock`` replaces ``now``
and ``timers`` for a block. A deadline is a float on the scale of ``now()``
(``time.monotonic`` unless a fake clock is installed).

Timers: one heap per queue, guarded by the tree lock that the queue is given (the same
lock that guards the context tree, so that arming a timer and registering a child are one
atomic step). The real queue has one daemon thread, started lazily by the first deadline,
that sleeps until the earliest deadline; a new earlier deadline wakes it; it exits after
``IDLE_SECONDS`` with an empty heap and is started again by the next deadline. There is
never a thread per context.

A cancelled context's deadline is not searched for in the heap: it is disarmed
(removed from the queue's ``armed`` map, so the heap keeps nothing alive) and popped
when it reaches the top, or swept out when dead values outnumber the live ones.
"""

from __future__ import annotations

import heapq
import math
import os
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["IDLE_SECONDS", "TimerQueue", "now"]

now: Callable[[], float] = time.monotonic
"""The clock: seconds on the ``time.monotonic`` scale unless a FakeClock is installed."""

timers: TimerQueue
"""Where new deadlines are armed; set by ``_context`` (the real queue) and FakeClock."""

IDLE_SECONDS = 2.0
_COMPACT_MIN = 1024  # never sweep heaps smaller than this; popping is cheaper
_MAX_SLEEP = 3600.0  # Lock.acquire overflows on far deadlines: wake up and look again

# The heap holds plain floats, the armed deadlines; ``armed`` maps each deadline to its
# context, or to an insertion-ordered dict of the contexts sharing it (equal deadlines
# fire in the order they were armed). The queue owns arming and disarming (``arm``,
# ``disarm``; ``_context._derive`` inlines ``arm`` on its hot path), under the tree lock:
# push the deadline if it is new to ``armed`` (and ask for the thread to be woken or
# started if it is earlier than ``wake_at``); on cancel, drop the context from ``armed``
# (and a deadline no context shares any more), pop the heap's last value if it is that
# deadline, else ``compact()``. Floats are not tracked by the garbage collector and a
# deadline needs no tie-breaking sequence number: with 10,000 tasks each inside an
# ``async with with_timeout``, collector passes over per-timer objects were most of
# tether's overhead. A context armed in a queue has ``ctx._entry`` set to the queue; the
# key is its ``ctx._deadline``. Removing it from ``armed`` is what disarms it; a heap
# value no longer in ``armed`` is dead: popped when it reaches the top, or swept when
# dead values are the majority. The thread is never started under the lock: ``wake``
# says when the caller must ``start()`` it after leaving.


class TimerQueue:
    """A heap of deadlines. Every method but ``start`` must be called inside a critical
    section of the tree lock (``enter()``/``leave()``, given by ``_context``)."""

    def __init__(
        self,
        enter: Callable[[], bool],
        leave: Callable[[], None],
        defer: Callable[[Callable[[], object]], None],
        expire: Callable[[list[Any]], None],
        *,
        threaded: bool,
    ) -> None:
        self._enter = enter
        self._leave = leave
        self._defer = defer
        self._expire = expire  # called without the lock, with contexts in deadline order
        self.threaded = threaded
        # The tree lock protects the following fields.
        self.heap: list[float] = []
        self.armed: dict[float, Any] = {}  # deadline -> context, or dict of contexts
        # the deadline the thread sleeps towards; an earlier one must call wake()
        self.wake_at = math.inf if threaded else -math.inf
        self._thread: threading.Thread | None = None
        self._wake = threading.Lock()  # released to wake the thread; locked otherwise
        self._wake.acquire()

    def live(self) -> int:
        """The number of armed, not yet fired or cancelled timers."""
        return sum(len(b) if type(b) is dict else 1 for b in self.armed.values())

    def arm(self, ctx: Any, deadline: float) -> bool:
        """Arm ``ctx`` to expire at ``deadline``; True if the caller must ``start()``.

        ``_context._derive`` inlines these steps on its hot path.
        """
        armed = self.armed
        b = armed.setdefault(deadline, ctx)
        start = False
        if b is ctx:
            heapq.heappush(self.heap, deadline)
            if deadline < self.wake_at:
                start = self.wake(deadline)
        elif type(b) is dict:
            b[ctx] = None
        else:
            armed[deadline] = {b: None, ctx: None}
        ctx._entry = self
        return start

    def disarm(self, ctx: Any) -> None:
        """Remove ``ctx``'s deadline; the heap value is dropped now if it is the last one.

        Idempotent, and safe to repeat after an asynchronous exception interrupted it: it
        only removes what is still ``ctx``'s. A deadline no context shares any more is
        removed from ``armed`` (an empty bucket would keep the thread waiting for it).
        """
        d = ctx._deadline
        armed = self.armed
        b = armed.get(d)
        if b is ctx:
            del armed[d]
        elif type(b) is dict:
            b.pop(ctx, None)
            if b:
                ctx._entry = None
                return
            del armed[d]
        else:
            ctx._entry = None
            return
        ctx._entry = None
        h = self.heap
        if h and h[-1] == d:  # the newest timer, cancelled first: common, and O(1)
            h.pop()
        else:
            self.compact()

    def compact(self) -> None:
        """Sweep dead values out if they are the majority (amortised O(1) per cancel)."""
        heap = self.heap
        if len(heap) > _COMPACT_MIN and len(heap) > 2 * len(self.armed):
            self.heap = [x for x in heap if x in self.armed]
            heapq.heapify(self.heap)

    def wake(self, deadline: float) -> bool:
        """A deadline earlier than ``wake_at`` was pushed: wake the thread.

        Returns True if no thread runs: the caller must call ``start()`` once it has left
        the critical section (a thread is never started under the lock).
        """
        self.wake_at = deadline
        if self._thread is None:
            return True
        if self._wake.locked():
            try:
                self._wake.release()
            except RuntimeError:  # another thread woke it first
                pass
        return False

    def pop_due(self, t: float) -> list[Any]:
        """Disarm and return the contexts whose deadline is <= t, in deadline order."""
        heap = self.heap
        armed = self.armed
        due: list[Any] = []
        while heap and heap[0] <= t:
            b = armed.pop(heapq.heappop(heap), None)
            if b is None:
                continue
            if type(b) is dict:
                for ctx in b:
                    ctx._entry = None
                    due.append(ctx)
            else:
                b._entry = None
                due.append(b)
        return due

    # -- the thread --------------------------------------------------------------------

    def start(self) -> None:
        """Start the timer thread unless one runs or is starting. Call without the lock.

        Raises ``RuntimeError`` if the thread cannot be started; the queue is then left as
        if none had been asked for, so that the next ``wake()`` tries again. A thread that
        died is replaced.
        """
        from . import _threads

        if not self._enter():  # re-entered: start it once the holder leaves
            self._defer(self._start_logged)
            return
        try:
            cur = self._thread
            if cur is not None and (cur.ident is None or cur.is_alive()):
                return  # running, or being started by another thread
            t = self._thread = _threads.new(self._run, name="tether-timer")
        finally:
            self._leave()
        try:
            t.start()
        except BaseException:
            if self._enter():
                try:
                    if self._thread is t:
                        self._thread = None
                        self.wake_at = math.inf
                finally:
                    self._leave()
            raise

    def _start_logged(self) -> None:
        try:
            self.start()
        except RuntimeError:
            import logging

            logging.getLogger("tether").exception("tether: could not start the timer thread")

    def _run(self) -> None:
        me = threading.current_thread()
        try:
            self._loop(me)
        finally:
            # However the loop ended, a later wake() must see that no thread runs.
            if self._enter():
                try:
                    if self._thread is me:
                        self._thread = None
                        self.wake_at = math.inf
                finally:
                    self._leave()

    def _loop(self, me: threading.Thread) -> None:
        idle_since: float | None = None
        while True:
            if not self._enter():  # pragma: no cover - the thread's own top level
                raise AssertionError("tether: the timer thread re-entered the tree lock")
            try:
                if self._thread is not me:  # replaced after a fork
                    return
                t = time.monotonic()
                due = self.pop_due(t)
                heap = self.heap
                while heap and heap[0] not in self.armed:
                    heapq.heappop(heap)
                if due:
                    self.wake_at = -math.inf  # busy: an add need not wake us
                    wait = 0.0
                elif self.heap:
                    idle_since = None
                    self.wake_at = self.heap[0]
                    wait = self.wake_at - t
                else:
                    if idle_since is None:
                        idle_since = t
                    elif t - idle_since >= IDLE_SECONDS:
                        self._thread = None
                        self.wake_at = math.inf
                        return
                    self.wake_at = math.inf
                    wait = IDLE_SECONDS
            finally:
                self._leave()
            if due:
                try:
                    self._expire(due)
                except Exception:  # isolated: one failure must not stop every deadline
                    import logging

                    logging.getLogger("tether").exception("tether: ending expired contexts raised")
                del due
                continue
            # Lock.acquire(timeout) may return a hair early; the loop re-checks the clock,
            # so a deadline never fires before now() reaches it. Sleeping at most
            # IDLE_SECONDS is how the thread sees that the deadline it sleeps towards was
            # cancelled (cancels do not wake it): with no live timer left it then exits,
            # instead of lingering until a dead far deadline.
            self._wake.acquire(timeout=min(max(wait, 0.0), IDLE_SECONDS, _MAX_SLEEP))

    def after_fork_in_child(self) -> None:
        """Called with the lock held by the forking thread, in the child."""
        self._thread = None
        self._wake = threading.Lock()
        self._wake.acquire()
        self.wake_at = math.inf
        if self.threaded and self.heap:
            self.wake_at = self.heap[0]
            from . import _threads

            t = self._thread = _threads.new(self._run, name="tether-timer")
            try:
                t.start()
            except RuntimeError:
                self._thread = None


def register_fork_hooks(lock: threading.RLock, queue: TimerQueue) -> None:
    """Hold the tree lock across fork(), and restart the timer thread in the child."""
    if not hasattr(os, "register_at_fork"):  # pragma: no cover - Windows
        return

    def child() -> None:
        queue.after_fork_in_child()
        lock.release()

    os.register_at_fork(before=lock.acquire, after_in_parent=lock.release, after_in_child=child)
