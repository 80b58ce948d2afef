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

A cancelled context's entry is not searched for in the heap: the entry is marked dead
(its context reference dropped, so the heap keeps nothing alive) and popped when it
reaches the top, or swept out when dead entries outnumber the live ones.
"""

from __future__ import annotations

import heapq
import itertools
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

# A heap entry is a list ``[deadline, seq, ctx, queue]``: lists compare element-wise in
# C, ``seq`` breaks ties in arrival order (so equal deadlines fire first-armed first and
# the context is never compared), and ``ctx`` is set to ``None`` when the entry leaves
# the heap or dies in it.
Entry = list[Any]

_seq = itertools.count()


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
        self.heap: list[Entry] = []
        self.dead = 0  # dead entries still in heap
        self.compact_at = _COMPACT_MIN  # sweep when dead exceeds this (and half the heap)
        # the deadline the thread sleeps towards; an earlier one must call wake()
        self.wake_at = math.inf if threaded else -math.inf
        self._thread: threading.Thread | None = None
        self._wake = threading.Lock()  # released to wake the thread; locked otherwise
        self._wake.acquire()

    def live(self) -> int:
        """The number of armed, not yet fired or cancelled timers."""
        return len(self.heap) - self.dead

    def wake(self, deadline: float) -> None:
        """A deadline earlier than ``wake_at`` was pushed: start or wake the thread.

        Callers push entries inline: ``heappush(queue.heap, [deadline, next(_seq), ctx,
        queue])``, then call this if ``deadline < queue.wake_at``.
        """
        self.wake_at = deadline
        if self._thread is None:
            self._start()
        elif self._wake.locked():
            try:
                self._wake.release()
            except RuntimeError:  # another thread woke it first
                pass

    def compact(self) -> None:
        """Sweep dead entries out once they are the majority (callers kill entries inline:
        ``entry[2] = None; queue.dead += 1; if queue.dead > queue.compact_at: compact()``).
        """
        if self.dead * 2 > len(self.heap):
            self.heap = [e for e in self.heap if e[2] is not None]
            heapq.heapify(self.heap)
            self.dead = 0
        self.compact_at = max(_COMPACT_MIN, len(self.heap) // 2)

    def pop_due(self, t: float) -> list[Any]:
        """Remove and return the contexts whose deadline is <= t, in deadline order."""
        heap = self.heap
        due = []
        while heap and heap[0][0] <= t:
            entry = heapq.heappop(heap)
            ctx = entry[2]
            if ctx is None:
                self.dead -= 1
            else:
                entry[2] = None
                due.append(ctx)
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
                while self.heap and self.heap[0][2] is None:
                    heapq.heappop(self.heap)
                    self.dead -= 1
                if due:
                    self.wake_at = -math.inf  # busy: an add need not wake us
                    wait = 0.0
                elif self.heap:
                    idle_since = None
                    self.wake_at = self.heap[0][0]
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
            # so a deadline never fires before now() reaches it.
            self._wake.acquire(timeout=min(max(wait, 0.0), _MAX_SLEEP))

    def after_fork_in_child(self) -> None:
        """Called with the lock held by the forking thread, in the child."""
        self._thread = None
        self._wake = threading.Lock()
        self._wake.acquire()
        self.wake_at = math.inf
        if self.threaded and self.heap:
            self.wake_at = self.heap[0][0]
            self._start()


def register_fork_hooks(lock: threading.Lock, queue: TimerQueue) -> None:
    """Hold the tree lock across fork(), and restart the timer thread in the child."""
    if not hasattr(os, "register_at_fork"):  # pragma: no cover - Windows
        return

    def child() -> None:
        queue.after_fork_in_child()
        lock.release()

    os.register_at_fork(before=lock.acquire, after_in_parent=lock.release, after_in_child=child)
