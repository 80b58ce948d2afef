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
# fire in the order they were armed). ``_context`` arms and disarms inline, under the
# tree lock: push the deadline if it is new to ``armed`` (and ``wake()`` the thread if it
# is earlier than ``wake_at``); on cancel, drop the context from ``armed``, pop the heap's
# last value if it is that deadline, else ``compact()``. Floats are not tracked by the
# garbage collector
# and a deadline needs no tie-breaking sequence number: with 10,000 tasks each inside an
# ``async with with_timeout``, collector passes over per-timer objects were most of
# tether's overhead. A context armed in a queue has ``ctx._entry`` set to the queue; the
# key is its ``ctx._deadline``. Removing it from ``armed`` is what disarms it; a heap
# value no longer in ``armed`` is dead: popped when it reaches the top, or swept when
# dead values are the majority.


class TimerQueue:
    """A heap of deadlines. Every method must be called with ``lock`` held."""

    def __init__(
        self,
        lock: threading.Lock,
        expire: Callable[[list[Any]], None],
        *,
        threaded: bool,
    ) -> None:
        self._lock = lock
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

    def compact(self) -> None:
        """Sweep dead values out if they are the majority (amortised O(1) per cancel)."""
        heap = self.heap
        if len(heap) > _COMPACT_MIN and len(heap) > 2 * len(self.armed):
            self.heap = [x for x in heap if x in self.armed]
            heapq.heapify(self.heap)

    def wake(self, deadline: float) -> None:
        """A deadline earlier than ``wake_at`` was pushed: start or wake the thread."""
        self.wake_at = deadline
        if self._thread is None:
            self._start()
        elif self._wake.locked():
            try:
                self._wake.release()
            except RuntimeError:  # another thread woke it first
                pass

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

    def _start(self) -> None:
        t = threading.Thread(target=self._run, name="tether-timer", daemon=True)
        self._thread = t
        t.start()

    def _run(self) -> None:
        lock = self._lock
        me = threading.current_thread()
        idle_since: float | None = None
        while True:
            with lock:
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
            if due:
                self._expire(due)
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
            self._start()


def register_fork_hooks(lock: threading.Lock, queue: TimerQueue) -> None:
    """Hold the tree lock across fork(), and restart the timer thread in the child."""
    if not hasattr(os, "register_at_fork"):  # pragma: no cover - Windows
        return

    def child() -> None:
        queue.after_fork_in_child()
        lock.release()

    os.register_at_fork(before=lock.acquire, after_in_parent=lock.release, after_in_child=child)
