"""The registry behind ``tether.debug``: live contexts, held by weak references.

Locking: ``_Registry._lock`` guards ``_by_ctx``, ``_ended`` and the counters. It is a
leaf lock: nothing is called under it but dict/deque operations (no user code, no
other lock). The core calls ``on_create``/``on_end`` outside its own lock.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import weakref
from collections import deque
from types import CodeType, FrameType
from typing import Any

from .. import _clock, _observe
from .._context import Context
from .._keys import REQUEST_ID

__all__ = ["Registry"]

_PKG = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Frames in these files are tether's plumbing; a creation stack starts below them.
_SKIP = (os.path.join(_PKG, "_"), os.path.join(_PKG, "debug", ""))
STACK_DEPTH = 8


class Entry:
    """What the registry knows about one tracked owner."""

    __slots__ = (
        "__weakref__",
        "born",
        "ctx_ref",
        "deadline",
        "ended",
        "kind",
        "parent",
        "reason",
        "repr",
        "request_id",
        "seq",
        "stack",
    )

    born: float
    ctx_ref: weakref.ref[Context]
    deadline: float | None
    kind: str
    parent: int | None
    request_id: str | None
    seq: int
    stack: list[tuple[CodeType, int]]

    def __init__(self) -> None:
        self.ended: float | None = None
        self.reason: str | None = None
        self.repr: str | None = None  # frozen at the end, when the context may be gone

    def site(self) -> str:
        if not self.stack:
            return "?"
        code, line = self.stack[0]
        return f"{code.co_filename}:{line}"

    def frames(self) -> list[str]:
        out = []
        for code, line in self.stack:
            out.append(f"{code.co_filename}:{line} in {code.co_qualname}")
        return out


class Registry:
    """Observer of the core that keeps the live contexts and the recently ended ones."""

    def __init__(self, limit: int, keep_ended: float) -> None:
        self.limit = limit
        self.keep_ended = keep_ended
        self._lock = threading.Lock()
        self._by_ctx: weakref.WeakKeyDictionary[Context, Entry] = weakref.WeakKeyDictionary()
        self._ended: deque[Entry] = deque(maxlen=max(100, min(limit, 10_000)))
        self._seq = itertools.count(1)
        self.overflow = 0  # contexts not tracked because the registry was full

    # ------------------------------------------------------------------ observer
    def on_create(self, ctx: Context, parent: Context, kind: str) -> None:
        if len(self._by_ctx) >= self.limit:
            with self._lock:
                self.overflow += 1
            return
        f: FrameType | None = sys._getframe(1)
        skip = _SKIP
        while f is not None and f.f_code.co_filename.startswith(skip):
            f = f.f_back
        stack: list[tuple[CodeType, int]] = []
        while f is not None and len(stack) < STACK_DEPTH:
            stack.append((f.f_code, f.f_lineno))
            f = f.f_back
        e = Entry()
        e.seq = next(self._seq)
        e.kind = kind
        e.born = _clock.now()
        e.deadline = ctx._deadline
        e.stack = stack
        e.ctx_ref = weakref.ref(ctx)
        owner = parent._c or parent
        with self._lock:
            pe = self._by_ctx.get(owner)
            e.parent = pe.seq if pe is not None else None
            e.request_id = None  # read at the end (or from the live context)
            self._by_ctx[ctx] = e

    def on_end(self, ctx: Context, reason: str) -> None:
        with self._lock:
            e = self._by_ctx.pop(ctx, None)
        if e is None:
            return
        e.ended = _clock.now()
        e.reason = reason
        e.repr = repr(ctx)
        e.request_id = ctx.value(REQUEST_ID)
        with self._lock:
            self._ended.append(e)

    # ------------------------------------------------------------------ reading
    def _live(self) -> list[tuple[Context, Entry]]:
        with self._lock:
            return list(self._by_ctx.items())

    def _recent(self, now: float) -> list[Entry]:
        with self._lock:
            while self._ended and now - (self._ended[0].ended or now) > self.keep_ended:
                self._ended.popleft()
            return list(self._ended)

    def row(self, e: Entry, ctx: Context | None, now: float) -> dict[str, Any]:
        live = e.ended is None
        d = ctx.deadline() if ctx is not None else e.deadline
        rid = ctx.value(REQUEST_ID) if ctx is not None else e.request_id
        return {
            "id": e.seq,
            "parent": e.parent,
            "kind": e.kind,
            "state": "live" if live else "ended",
            "reason": e.reason,
            "repr": repr(ctx) if live and ctx is not None else e.repr,
            "age": round((now if live else (e.ended or now)) - e.born, 6),
            "deadline_in": None if d is None else round(d - now, 6),
            "ended_ago": None if live else round(now - (e.ended or now), 6),
            "site": e.site(),
            "request_id": rid,
        }

    def snapshot(self) -> dict[str, Any]:
        now = _clock.now()
        live = self._live()
        rows = [self.row(e, ctx, now) for ctx, e in live if ctx.err() is None]
        rows += [self.row(e, None, now) for e in self._recent(now)]
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
            if ctx.err() is None and now - e.born >= older_than:
                row = self.row(e, ctx, now)
                row["stack"] = e.frames()
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
    """Whether ``enable()`` is in effect. Non-blocking; thread-safe; raises nothing."""
    return _registry is not None


def snapshot() -> dict[str, Any]:
    """The tracked contexts, as JSON-serialisable data.

    ``{"enabled", "limit", "tracked", "overflow", "contexts": [...]}``; each context:
    ``id`` (a sequence number), ``parent`` (the id of the nearest tracked ancestor
    owner, or ``None``), ``kind``, ``state`` (``"live"``/``"ended"``), ``reason``
    (``"canceled"``/``"deadline"``/``"parent"`` once ended), ``repr``, ``age`` (seconds
    since creation, up to the end), ``deadline_in`` (seconds left, negative once
    passed, ``None`` without a deadline), ``ended_ago``, ``site`` (``file:line`` of the
    first frame outside tether's core) and ``request_id``. Ordered by ``id``: parents
    before children. Times use tether's clock (``FakeClock`` in tests).

    Non-blocking (copies under a short lock); each call builds a new dict; thread-safe.
    Ended contexts appear only for ``keep_ended`` seconds. When not enabled it returns
    ``{"enabled": False, "contexts": []}``. Raises nothing.

    Added in 0.1.
    """
    reg = _registry
    if reg is None:
        return {"enabled": False, "limit": 0, "tracked": 0, "overflow": 0, "contexts": []}
    return reg.snapshot()


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
