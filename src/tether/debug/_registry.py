"""The registry behind ``tether.debug``: live contexts, held by weak references.

The hot path (``on_create``/``on_end``, called by the core for every owner derived
and ended) takes no lock and allocates two tuples: an entry is a plain tuple, stored
in a dict under ``id(ctx)`` with a weak reference to the context (so the registry never
keeps one alive), and every operation on the dict and the deque is a single atomic C
call. An id found in the dict when a context ends is that context's own entry: a
freed context's id can only be reused by one created later, whose ``on_create``
overwrote the stale entry. Entries of contexts freed without ending are pruned when
the registry is read. Line numbers are computed when read, too (the entry keeps code
objects and instruction offsets).
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import weakref
from collections import deque
from types import CodeType
from typing import Any

from .. import _clock, _context, _observe
from .._context import Context
from .._keys import REQUEST_ID

__all__ = ["Registry"]

_PKG = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Frames in these files are tether's plumbing; a creation stack starts below them.
_SKIP = (os.path.join(_PKG, "_"), os.path.join(_PKG, "debug", ""))
STACK_DEPTH = 6
_getframe = sys._getframe
_ref = weakref.ref

# An entry: (seq, parent seq or None, kind, born, deadline, request id, stack, ref)
Entry = tuple[int, int | None, str, float, float | None, Any, tuple[tuple[CodeType, int], ...], Any]


def _site(stack: tuple[tuple[CodeType, int], ...]) -> str:
    if not stack:
        return "?"
    filename, line = _context._site(*stack[0])
    return f"{filename}:{line}"


def _frames(stack: tuple[tuple[CodeType, int], ...]) -> list[str]:
    out = []
    for code, lasti in stack:
        filename, line = _context._site(code, lasti)
        out.append(f"{filename}:{line} in {code.co_qualname}")
    return out


class Registry:
    """Observer of the core that keeps the live contexts and the recently ended ones."""

    def __init__(self, limit: int, keep_ended: float) -> None:
        self.limit = limit
        self.keep_ended = keep_ended
        self._by_id: dict[int, Entry] = {}
        # (entry, ended at, reason), oldest first
        self._ended: deque[tuple[Entry, float, str]] = deque(maxlen=min(limit, 10_000))
        self._seq = itertools.count(1)
        self._overflow = itertools.count()  # contexts not tracked: the registry was full
        self._full = itertools.count()  # creates that found the registry full
        self._read_lock = threading.Lock()  # serialises readers' pruning

    @property
    def overflow(self) -> int:
        return int(repr(self._overflow)[6:-1])  # "count(N)"

    # ------------------------------------------------------------------ observer
    def on_create(self, ctx: Context, parent: Context, kind: str) -> None:
        by_id = self._by_id
        if len(by_id) >= self.limit:
            # full: prune entries of contexts freed without ending, but only every 1024th
            # time (a scan is O(limit)), then count the overflow
            if next(self._full) % 1024 == 0:
                self._live()
            if len(by_id) >= self.limit:
                next(self._overflow)
                return
        # frames 0-3: this method, the observer fan-out, the core's _observed, _derive
        f: Any = _getframe(4)
        skip = _SKIP
        while f is not None and f.f_code.co_filename.startswith(skip):
            f = f.f_back
        stack = []
        for _ in range(STACK_DEPTH):
            if f is None:
                break
            stack.append((f.f_code, f.f_lasti))
            f = f.f_back
        owner = parent._c or parent
        pe = by_id.get(id(owner))
        e: Entry = (
            next(self._seq),
            None if pe is None else pe[0],
            kind,
            _clock.now(),
            ctx._deadline,
            ctx.value(REQUEST_ID),
            tuple(stack),
            _ref(ctx),
        )
        if ctx._err is None:
            by_id[id(ctx)] = e
        else:  # born ended (the core reports no end for it): show it as ended at once
            reason = "parent" if owner._err is not None else "deadline"
            self._ended.append((e, e[3], reason))

    def on_end(self, ctx: Context, reason: str) -> None:
        e = self._by_id.pop(id(ctx), None)
        if e is not None:
            self._ended.append((e, _clock.now(), reason))

    # ------------------------------------------------------------------ reading
    def _live(self) -> list[tuple[Context, Entry]]:
        out = []
        by_id = self._by_id
        with self._read_lock:
            for k, e in by_id.copy().items():
                ctx = e[7]()
                if ctx is None:  # freed without ending: not live, not a leak
                    got = by_id.pop(k, None)
                    if got is not None and got is not e:  # a new context took the id
                        by_id.setdefault(k, got)
                elif ctx.err() is None:
                    out.append((ctx, e))
        return out

    def _recent(self, now: float) -> list[tuple[Entry, float, str]]:
        ended = self._ended
        with self._read_lock:
            while ended and now - ended[0][1] > self.keep_ended:
                ended.popleft()
            return list(ended)

    @staticmethod
    def _row(
        e: Entry, now: float, ctx: Context | None, end: float | None, reason: str | None
    ) -> dict[str, Any]:
        seq, parent, kind, born, deadline, rid, stack, _ = e
        live = end is None
        return {
            "id": seq,
            "parent": parent,
            "kind": kind,
            "state": "live" if live else "ended",
            "reason": reason,
            "repr": repr(ctx) if ctx is not None else f"{kind} [{reason}]",
            "age": round((now if end is None else end) - born, 6),
            "deadline_in": None if deadline is None else round(deadline - now, 6),
            "ended_ago": None if end is None else round(now - end, 6),
            "site": _site(stack),
            "request_id": rid,
        }

    def snapshot(self, request_id: str | None) -> dict[str, Any]:
        now = _clock.now()
        live = self._live()
        rows = [self._row(e, now, ctx, None, None) for ctx, e in live]
        rows += [self._row(e, now, None, end, reason) for e, end, reason in self._recent(now)]
        if request_id is not None:
            rows = [r for r in rows if r["request_id"] == request_id]
        rows.sort(key=lambda r: r["id"])
        return {
            "enabled": True,
            "limit": self.limit,
            "tracked": len(live),
            "overflow": self.overflow,
            "contexts": rows,
        }

    def leaks(self, older_than: float) -> list[dict[str, Any]]:
        now = _clock.now()
        out = []
        for ctx, e in self._live():
            if now - e[3] >= older_than:
                row = self._row(e, now, ctx, None, None)
                row["stack"] = _frames(e[6])
                out.append(row)
        out.sort(key=lambda r: -r["age"])
        return out


_state_lock = threading.Lock()
_registry: Registry | None = None


def enable(*, limit: int = 10_000, keep_ended: float = 5.0) -> None:
    """Start keeping a registry of live contexts (creation site and stack, age, deadline,
    parent), for ``snapshot()``, ``leaks()`` and ``asgi_app()``.

    Contexts derived from now on are tracked, up to ``limit`` live ones at a time; more
    are counted in ``snapshot()["overflow"]`` and not tracked. Ended contexts stay in
    the snapshot for ``keep_ended`` seconds (the live view fades them out). The registry
    holds contexts by weak reference only: it never keeps one alive, and a context
    freed without being cancelled simply leaves it. Costs about one derive+cancel more
    per derived context (measured in ``bench/bench_observe.py``).

    Non-blocking; idempotent (a second call while enabled changes nothing, even with
    other arguments: ``disable()`` first); thread-safe. Contexts that already exist or
    already ended are not tracked. Raises ``ValueError`` for a ``limit`` below 1 or a
    negative ``keep_ended``.

    Added in 0.1.
    """
    global _registry
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"tether: debug.enable(limit=...) needs an int >= 1, got {limit!r}")
    if not isinstance(keep_ended, int | float) or not 0 <= keep_ended < float("inf"):
        raise ValueError(
            f"tether: debug.enable(keep_ended=...) needs finite seconds >= 0, got {keep_ended!r}"
        )
    with _state_lock:
        if _registry is not None:
            return
        _registry = Registry(limit, float(keep_ended))
        _observe.add_observer(_registry)


def disable() -> None:
    """Stop tracking and drop the registry. Idempotent; thread-safe; non-blocking.

    Does nothing when not enabled (or already disabled); contexts are not affected,
    live or ended. Raises nothing.

    Added in 0.1.
    """
    global _registry
    with _state_lock:
        reg, _registry = _registry, None
        if reg is not None:
            _observe.remove_observer(reg)


def is_enabled() -> bool:
    """Whether ``enable()`` is in effect.

    Non-blocking; thread-safe; idempotent (reads a flag, the same until
    ``enable``/``disable``); says nothing about contexts, live or ended. Raises nothing.
    """
    return _registry is not None


def snapshot(*, request_id: str | None = None) -> dict[str, Any]:
    """The tracked contexts, as JSON-serialisable data.

    With ``request_id``, only the contexts carrying that ``tether.REQUEST_ID`` (one
    request's tree); ``tracked`` and ``overflow`` still count every context.

    ``{"enabled", "limit", "tracked", "overflow", "contexts": [...]}``; each context:
    ``id`` (a sequence number), ``parent`` (the id of its parent owner when that was
    tracked and still live at the child's creation, else ``None``: the view draws it
    as a root), ``kind``, ``state`` (``"live"``/``"ended"``), ``reason``
    (``"canceled"``/``"deadline"``/``"parent"`` once ended), ``repr``, ``age`` (seconds
    since creation, up to the end), ``deadline_in`` (seconds left, negative once
    passed, ``None`` without a deadline), ``ended_ago``, ``site`` (``file:line`` of the
    first frame outside tether's core) and ``request_id``. Ordered by ``id``: parents
    before children. Times use tether's clock (``FakeClock`` in tests).

    Non-blocking (copies under a short lock); each call builds a new dict; thread-safe.
    Ended contexts appear only for ``keep_ended`` seconds. When not enabled it returns
    ``{"enabled": False, "contexts": []}``. Raises ``TypeError`` for a ``request_id``
    that is not a ``str``.

    Added in 0.1.
    """
    if request_id is not None and not isinstance(request_id, str):
        raise TypeError(
            f"tether: snapshot(request_id=...) takes a str, got {type(request_id).__name__}"
        )
    reg = _registry
    if reg is None:
        return {"enabled": False, "limit": 0, "tracked": 0, "overflow": 0, "contexts": []}
    return reg.snapshot(request_id)


def leaks(older_than: float = 300) -> list[dict[str, Any]]:
    """Live tracked contexts older than ``older_than`` seconds: leak suspects.

    Oldest first; each is a ``snapshot()`` row plus ``stack``: the creation stack,
    innermost first, as ``"file:line in function"`` strings (up to 8 frames, starting
    at the first frame outside tether's core — the line that derived it). A context is
    a suspect only while it is live and reachable: one that was freed, even without a
    ``cancel()``, is not a leak and is not listed.

    Non-blocking; builds a new list on each call; thread-safe. Returns ``[]`` when not
    enabled. Raises ``ValueError`` for a negative or non-finite ``older_than``.

    Added in 0.1.
    """
    if not isinstance(older_than, int | float) or not 0 <= older_than < float("inf"):
        raise ValueError(
            f"tether: leaks(older_than=...) needs finite seconds >= 0, got {older_than!r}"
        )
    reg = _registry
    return [] if reg is None else reg.leaks(float(older_than))
