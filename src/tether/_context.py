"""The context tree: derivation, cancellation, deadlines, values.

Layout of the state
-------------------
There is one class, ``Context``. A context either *owns* cancellation state (those made
by ``with_cancel``/``with_timeout``/``with_deadline``, and ``background()`` itself) or
*shares* the state of its nearest owning ancestor (``with_value``, ``todo()``;
``without_cancel`` shares background's, which never ends). ``ctx._c`` is that owner
for a sharing context and ``None`` for an owner, so every query is O(1) whatever the
depth: ``err()`` reads ``(ctx._c or ctx)._err`` (a context is always truthy). An owner
does not point at itself: a self-reference would make every context a reference cycle,
freed only by the cyclic garbage collector, whose passes cost ~10% of a derive+cancel
and most of the gap to asyncio.timeout with 10,000 tasks (docs/benchmarks.md);
``value()`` is one dict lookup, because every context
carries the full mapping of the values visible from it (copied on ``with_value``).

The state slots are private and written only by the functions of this module; the
public surface is read-only, which is what "contexts are immutable" means here. The
owner's slots are kept on the same object (rather than on a separate private node) to
keep ``err()`` to two attribute loads and a context under 200 bytes; ``docs/design.md``
records the measurements.

Locking
-------
``_LOCK`` is one process-wide leaf lock. It protects, on every owner: ``_err``,
``_cause``, ``_children``, ``_waiters``, ``_entry``, ``_event``; and every timer
queue. A reader needs no lock: ``_err`` goes from ``None`` to an exception once and
never changes after.

The lock discipline (docs/design.md, "The core survives faults", explains why):

- A critical section is ``_locked(fn, *args)``, or its inlined copy on the hot paths
  (derive and cancel, see ``_cancel``). An asynchronous exception can strike right after
  ``acquire()`` returns: the hot paths then release whatever the thread holds beyond what
  it held before (``_rc()``, the lock's recursion count), and finish the work they
  interrupted; ``_locked`` uses a ``with`` statement, which cannot be interrupted there.
- Code can re-enter on the *same* thread while it holds the lock: a garbage-collector
  pass started by any allocation runs finalizers (a generator suspended inside
  ``with with_cancel(...)`` closes its scope), and a signal handler runs between two
  bytecodes. ``_LOCK`` is an ``RLock`` and a critical section first checks ``_rc()``: a
  thread that already holds the lock has re-entered, so it does not touch the tree but
  *defers* its work (``_defer``), which the holder runs as soon as it leaves (as
  CPython's ``queue`` did for bpo-14976). A cancel from a finalizer or a signal handler
  therefore takes effect microseconds later, when the interrupted critical section ends.
- Under the lock: no user code, no blocking, no thread start, no other lock but the timer
  thread's wake lock (released, never waited for). Allocating is allowed (a collection
  it starts can only defer work, see above).
- ``_mark`` survives an asynchronous exception (``KeyboardInterrupt`` from a signal
  handler) at any point: it marks the whole subtree before it unlinks anything, and every
  step is idempotent, so the caller finishes an interrupted ``_mark`` by running it again
  before re-raising. No live descendant is ever left under an ended ancestor.
- Cancellation runs in two phases: under the lock, mark the whole subtree ended and
  collect what must be woken; then, without the lock, wake it (set thread events, post to
  event loops, hand ``after_func`` callbacks to the runner), each waiter isolated from the
  others' failures.
"""

from __future__ import annotations

import gc
import math
import numbers
import sys
import threading
import warnings
from collections import deque
from collections.abc import Callable, Generator, Hashable
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from functools import partial
from heapq import heappop as _heappop
from heapq import heappush as _heappush
from types import CodeType, TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar, final, overload

from . import _clock, _runner
from ._errors import (
    BlockingCallWarning,
    Canceled,
    ContextError,
    DeadlineExceeded,
    LostCancelWarning,
)

if TYPE_CHECKING:
    from asyncio import Task

    from ._aio import _Waker

__all__ = [
    "CancelFunc",
    "Context",
    "Done",
    "Key",
    "Scope",
    "after_func",
    "background",
    "cause",
    "current",
    "todo",
    "with_cancel",
    "with_deadline",
    "with_timeout",
    "with_value",
    "without_cancel",
]

T = TypeVar("T")
# What a context wakes when it ends: a callable run on the canceller's thread (a thread
# event's ``set``, an after_func hand-off), a ``(waker, fn)`` pair whose ``fn`` runs on the
# waker's event loop, or a CancelFunc inside ``async with`` (it interrupts its task).
Waiter = Any

_LOCK = threading.RLock()
# How many times this thread holds _LOCK: non-zero before taking it means this thread is
# already inside a critical section (a finalizer or signal handler re-entered it).
# RLock._recursion_count came with CPython 3.11.6; before it (Debian 12 ships 3.11.2)
# _is_owned, also C, says the same with True for "one or more". Every caller only tests
# it for zero, or releases while it is above a zero it read before taking the lock, so
# the two are interchangeable (tests/test_faults.py runs with either).
_rc: Callable[[], int] = getattr(_LOCK, "_recursion_count", None) or _LOCK._is_owned  # type: ignore[attr-defined]
_deferred: deque[Callable[[], object]] = deque()  # work of re-entrant calls, run on leave
_new = object.__new__
_NO_VALUES: dict[Hashable, Any] = {}  # the values of a context without any; never written
_getframe = sys._getframe
_modules = sys.modules
_gc_is_finalized = gc.is_finalized
_gc_callbacks = gc.callbacks

# The asyncio bridge, imported on first use so that `import tether` does not import
# asyncio (a function-level import costs microseconds per call; this global does not).
_aio: Any = None


def _load_aio() -> Any:
    global _aio
    from . import _aio as mod

    _aio = mod
    return mod


# Set by the test leak checker (tether.testing) to a WeakKeyDictionary: every owner
# derived while it is set is recorded with its creation site (code, lasti), so a test can
# ask which contexts are still live and reachable, and where they were made.
_track: Any = None

# Set by tether._observe while an observer is registered: an object whose
# ``created(ctx, parent, kind)`` is called after an owner is derived and whose
# ``ended(list of (ctx, reason))`` is called, without the lock, after owners ended.
# With none registered, the hot paths pay one global check.
_observer: Any = None


class _Reentered:
    """What ``_locked`` returns when this thread is already inside a critical section."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<re-entered>"


_REENTERED: Any = _Reentered()


def _locked(fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)`` as a critical section; ``_REENTERED`` if this thread re-entered.

    A re-entry is a finalizer or a signal handler that runs while this thread is inside a
    critical section: it must not touch the tree, and ``_defer``s its work instead. The
    lock is taken by a ``with`` statement, which an asynchronous exception cannot
    interrupt between acquiring and protecting (the hot paths inline the same shape).
    Deferred work runs after the lock is released.
    """
    if _rc():
        return _REENTERED  # type: ignore[no-any-return]
    with _LOCK:
        r = fn(*args)
    if _deferred:
        _run_deferred()
    return r


def _defer(fn: Callable[[], object]) -> None:
    """Run ``fn()`` when the critical section this thread is inside ends."""
    _deferred.append(fn)


def _run_deferred() -> None:
    """Run deferred work, oldest first (a derive's link before the cancel that follows)."""
    while True:
        try:
            fn = _deferred.popleft()
        except IndexError:
            return
        try:
            fn()
        except Exception:
            _log_exception("tether: deferred cancellation work raised")


def _on_loop_thread() -> bool:
    """True if the calling thread runs an asyncio event loop or a Trio run (~40 ns).

    Imports nothing: a thread runs a loop only if asyncio (or Trio) was imported.
    """
    aio = _modules.get("asyncio")
    if aio is not None and aio._get_running_loop() is not None:
        return True
    trio = _modules.get("trio")
    return trio is not None and bool(trio.lowlevel.in_trio_run())


def _warn_blocking(call: str, instead: str, stacklevel: int = 3) -> None:
    """Warn that ``call`` blocks the event loop running on this thread; name ``instead``."""
    warnings.warn(
        f"tether: {call} blocks this thread, which runs an event loop (asyncio or Trio): "
        f"every task of the loop stalls while it waits; in a coroutine use {instead}",
        BlockingCallWarning,
        stacklevel=stacklevel,
    )


def _log_exception(msg: str) -> None:
    import logging  # only on failure paths: `import tether` stays light

    logging.getLogger("tether").exception(msg)


# --------------------------------------------------------------------------------------
# Keys


@final
class Key(Generic[T]):
    """A typed key for ``with_value``/``Context.value``, compared by identity.

    ``REQUEST_ID = tether.Key[str]("request_id")`` declares a key whose values are
    ``str``; ``ctx.value(REQUEST_ID)`` is then typed ``str | None``. Two keys with the
    same name are different keys, so packages cannot collide. The name is for ``repr``
    only. Create keys once, at module level.

    Added in 0.1.
    """

    __slots__ = ("name",)
    __module__ = "tether"

    def __init__(self, name: str) -> None:
        if not isinstance(name, str):
            raise TypeError(f"tether: a Key's name must be a str, got {type(name).__name__}")
        self.name = name

    def __repr__(self) -> str:
        return f"tether.Key({self.name!r})"

    def __reduce__(self) -> Any:
        raise TypeError("tether: a Key is compared by identity and cannot be pickled")

    def __copy__(self) -> Key[T]:
        return self

    def __deepcopy__(self, memo: object) -> Key[T]:
        return self  # compared by identity: a copy must be the key itself


# --------------------------------------------------------------------------------------
# Context


@final
class Context:
    """A node of the context tree: cancellation, a deadline and values, read-only.

    Make one with ``background()``/``todo()`` or derive one with ``with_cancel``,
    ``with_timeout``, ``with_deadline``, ``with_value``, ``without_cancel``; contexts
    are never constructed directly. Every method is safe to call from any thread or
    event loop and none blocks, except ``done().wait()``. A context is immutable (its
    state changes only from live to ended, once), hashable by identity,
    weak-referenceable, and not picklable (send a deadline across processes with
    tether's propagation instead).

    Added in 0.1.
    """

    __slots__ = (
        "_c",  # the nearest owning ancestor, or None for an owner (no self-reference cycle)
        "_values",  # dict of every value visible from here (_NO_VALUES: none); never mutated
        "_parent",  # the context this one was derived from (None for the roots)
        "_kind",  # how it was made, for repr
        "_label",  # what repr shows in parentheses for with_value (the key)
        # -- owner-only state; the ones marked (L) are guarded by _LOCK --
        "_err",  # (L) None while live; the error instance once ended; set once
        "_cause",  # (L) the cause given with the first cancellation, or None
        "_deadline",  # when it expires on the clock's scale, or None; never changes
        "_dcause",  # the cause recorded if the deadline fires
        "_pnode",  # the owner it is registered with, or None
        "_children",  # (L) set of registered child owners, or None
        "_waiters",  # (L) what to wake when it ends: None, one waiter, or a dict of them
        "_entry",  # (L) the TimerQueue its deadline is armed in, or None
        "_event",  # (L) threading.Event for Done.wait, made on the first wait
        "__weakref__",
    )
    __module__ = "tether"

    _c: Context | None
    _values: dict[Hashable, Any]  # _NO_VALUES when no value is bound
    _parent: Context | None
    _kind: str
    _label: object
    _err: ContextError | None
    _cause: BaseException | None
    _deadline: float | None
    _dcause: BaseException | None
    _pnode: Context | None
    _children: set[Context] | None
    _waiters: Waiter | dict[Waiter, None] | None
    _entry: _clock.TimerQueue | None
    _event: threading.Event | None

    def __init__(self) -> None:
        raise TypeError(
            "tether: contexts are not constructed directly; start from "
            "tether.background() and derive with tether.with_cancel/with_timeout/with_value"
        )

    def __init_subclass__(cls, **kwargs: Any) -> None:  # pragma: no cover - @final
        raise TypeError("tether: Context cannot be subclassed; attach data with with_value")

    # -- the interface -----------------------------------------------------------------

    def deadline(self) -> float | None:
        """When this context expires, in seconds on the clock's scale, or ``None``.

        The clock is ``time.monotonic`` (or a ``FakeClock``): compare with
        ``time.monotonic()``, or use ``remaining()``. A child's deadline is never later than
        its parent's.

        Non-blocking; returns the same value on every call; thread-safe. An ended context
        keeps reporting the deadline it had. Raises nothing.
        """
        return (self._c or self)._deadline

    def remaining(self) -> float | None:
        """Seconds left before the deadline, or ``None`` if there is none.

        Use it to clamp a socket, driver or HTTP timeout to the budget that is left. Once the
        context ended by its deadline the result is ``<= 0`` (a deadline never fires early); a
        context cancelled before its deadline still reports the time that was left.

        Non-blocking; each call reads the clock; thread-safe. Raises nothing.
        """
        d = (self._c or self)._deadline
        return None if d is None else d - _clock.now()

    def done(self) -> Done:
        """The handle that is set when this context ends: poll, block on or await it.

        Non-blocking; every call returns an equal handle (a new small object: caching it
        on the context would make a reference cycle); thread-safe. On an already ended
        context the handle is already set. Raises nothing.
        """
        d: Done = _new(Done)
        d._c = self._c or self
        return d

    def err(self) -> ContextError | None:
        """``None`` while live; a ``Canceled`` or ``DeadlineExceeded`` once ended.

        O(1) at any depth. Once non-``None`` it never changes, and ``done().is_set()`` is
        already true. The instance is shared by the contexts that ended together; to raise,
        use ``check()``, which raises a fresh one.

        Non-blocking; idempotent (the same instance on every call once ended); thread-safe.
        Raises nothing.
        """
        return (self._c or self)._err

    def check(self) -> None:
        """Raise if this context ended, else return ``None``: the cancellation point.

        Call it between slices of work in a thread (``ctx.check()`` is Go's
        ``if err := ctx.Err(); err != nil { return err }``).

        Non-blocking; idempotent (it raises on every call once ended); thread-safe. Raises a
        fresh exception of ``err()``'s type (``Canceled`` or ``DeadlineExceeded``) on an
        ended context, with the cause, if one was given, as ``__cause__``; nothing while
        live.
        """
        c = self._c or self
        if c._err is not None:
            raise _fresh_error(c)

    @overload
    def value(self, key: Key[T]) -> T | None: ...
    @overload
    def value(self, key: Hashable) -> Any: ...
    def value(self, key: Hashable) -> Any:
        """The value bound to ``key`` by the nearest ``with_value`` above, or ``None``.

        O(1) at any depth. Keys compare by equality (a ``tether.Key`` by identity, and typed:
        ``ctx.value(REQUEST_ID)`` is ``str | None`` for a ``Key[str]``). Values stay readable
        after the context ended and through ``without_cancel``.

        Non-blocking; the same result on every call; thread-safe. Raises ``TypeError`` for an
        unhashable key.
        """
        # A context without values shares one empty dict (never written), so an
        # unhashable key raises TypeError on every context, and there is no branch.
        return self._values.get(key)

    # -- Python protocol ---------------------------------------------------------------

    def __repr__(self) -> str:
        parts: list[str] = []
        node: Context | None = self
        while node is not None:
            parts.append(node._describe())
            node = node._parent
        if len(parts) > 12:
            parts[6:-5] = [f"...{len(parts) - 11} more..."]
        e = (self._c or self)._err
        state = "live" if e is None else str(e)
        return f"<tether.Context {'.'.join(reversed(parts))} [{state}]>"

    def _describe(self) -> str:
        kind = self._kind
        if kind == "with_value":
            label = self._label
            return f"with_value({_key_name(label)})"
        if kind == "with_deadline" and self._c is None and self._err is None:
            d = self._deadline
            assert d is not None
            kind = f"with_deadline(in {d - _clock.now():.3g}s)"
        parent = self._parent
        if parent is not None and self._values is not parent._values:
            # an owner made with values of its own (an inbound request's, a message's)
            pv, missing = parent._values, object()
            new = [_key_name(k) for k, v in self._values.items() if pv.get(k, missing) is not v]
            if new:
                more = f", +{len(new) - 3}" if len(new) > 3 else ""
                kind += f"+values({', '.join(new[:3])}{more})"
        return kind

    def __copy__(self) -> Context:
        return self

    def __deepcopy__(self, memo: object) -> Context:
        return self

    def __reduce__(self) -> Any:
        raise TypeError(
            "tether: a Context cannot be pickled; send its remaining() budget across the "
            "process boundary and derive a new context there"
        )


def _key_name(key: object) -> str:
    return key.name if type(key) is Key else repr(key)[:40]


def _fresh_error(c: Context) -> ContextError:
    e = c._err
    assert e is not None
    fresh = type(e)()
    cause = c._cause
    if cause is not None:
        fresh.__cause__ = cause
    return fresh


# --------------------------------------------------------------------------------------
# Done


@final
class Done:
    """Set when its context ends. Returned by ``ctx.done()``; never constructed directly.

    - ``is_set()`` polls (non-blocking);
    - ``wait(timeout=None)`` blocks the calling thread until set or the timeout passes;
    - ``await done`` suspends the calling task until set — an asyncio task on any
      event loop in any thread, or a Trio task (AnyIO on either backend) — woken
      promptly when another thread cancels. Cancelling the awaiting task unregisters it.

    Using it as a bool is an error (``if ctx.done():`` is always true for an object);
    write ``if ctx.done().is_set():`` or ``if ctx.err() is not None:``. It is awaitable,
    not a future: for ``asyncio.wait``/``as_completed`` wrap it,
    ``asyncio.ensure_future(ctx.done())``, and cancel that task after use.

    Added in 0.1.
    """

    __slots__ = ("_c",)
    __module__ = "tether"
    _c: Context

    def __init__(self) -> None:
        raise TypeError("tether: use ctx.done() to get a context's Done handle")

    def is_set(self) -> bool:
        """True once the context ended; never goes back to false.

        Non-blocking; thread-safe; on an already ended context, true. Idempotent. Raises
        nothing.
        """
        return self._c._err is not None

    def wait(self, timeout: float | None = None) -> bool:
        """Block the calling thread until the context ends; return ``is_set()``.

        ``timeout`` is in real seconds (``None`` or ``math.inf``: no limit; ``<= 0``: just
        poll). Many threads
        may wait at once; a ``cancel()`` from any thread releases them all. Do not call it on
        an event loop's thread: ``await`` the handle instead (a call that would block there
        warns, ``tether.BlockingCallWarning``; a poll does not). A context that can never
        end (``background()``) blocks until the timeout.

        Blocks (up to ``timeout``); idempotent; thread-safe. On an already ended context it
        returns ``True`` at once. Raises ``TypeError`` for a timeout that is not a number of
        seconds, ``ValueError`` for NaN or ``-inf``.
        """
        c = self._c
        if c._err is not None:
            return True
        if timeout is not None:
            if timeout == math.inf:
                timeout = None  # +inf is "no limit", like None
            else:
                timeout = _seconds(timeout, "timeout", "pass None to wait without a limit")
                if timeout <= 0:
                    return False
                if timeout > threading.TIMEOUT_MAX:  # longer than a lock can wait: no limit
                    timeout = None
        if _on_loop_thread():
            _warn_blocking("ctx.done().wait(timeout)", "await ctx.done()")
        return _block(c, timeout)

    def __await__(self) -> Generator[Any, None, None]:
        """``await ctx.done()``: suspend the calling task until the context ends.

        Works for an asyncio task on any event loop in any thread, and for a Trio task (AnyIO
        on either backend); woken promptly when another thread cancels. Cancelling the
        awaiting task unregisters it and leaves nothing behind on the context.

        Blocks the awaiting task, never the loop; each await is independent (idempotent);
        thread-safe. On an already ended context it returns at once. Raises ``RuntimeError``
        when awaited outside asyncio and Trio.
        """
        gen: Generator[Any, None, None] = (_aio or _load_aio()).wait_done(self._c)
        return gen

    def __eq__(self, other: object) -> bool:
        return type(other) is Done and other._c is self._c

    def __hash__(self) -> int:
        return hash(self._c)

    def __bool__(self) -> bool:
        raise TypeError(
            "tether: a Done handle has no truth value; use ctx.done().is_set() "
            "(or ctx.err() is not None)"
        )

    def __repr__(self) -> str:
        return f"<tether.Done {'set' if self.is_set() else 'unset'} of {self._c!r}>"


def _block(c: Context, timeout: float | None) -> bool:
    """Block until owner ``c`` ends or ``timeout`` (real seconds, > 0, or None) passes.

    ``Done.wait`` without its argument checks and its event-loop warning (``sleep``
    warns once itself, then waits here).
    """
    ev = c._event
    if ev is None:
        new = threading.Event()
        if c is _BACKGROUND:
            return new.wait(timeout)
        got = _locked(_install_event, c, new)
        if got is _REENTERED:  # in a finalizer or signal handler: register afterwards
            ev = new
            _defer(partial(_late_add, c, new.set))
        elif got is None:
            return True  # ended meanwhile
        else:
            ev = got
    return ev.wait(timeout)


# --------------------------------------------------------------------------------------
# The tree: registration, waiters, cancellation


def _install_event(c: Context, new: threading.Event) -> threading.Event | None:
    """The event ``Done.wait`` blocks on (``new`` if there was none); None if ended."""
    if c._err is not None:
        return None
    ev = c._event
    if ev is None:
        ev = c._event = new
        _put_waiter(c, new.set)
    return ev


def _put_waiter(c: Context, w: Waiter) -> None:
    """Register ``w`` on live owner ``c``. Holds _LOCK.

    One waiter is stored as itself (most contexts have at most one), more in a dict.
    """
    ws = c._waiters
    if ws is None:
        c._waiters = w
    elif type(ws) is dict:
        ws[w] = None
    else:
        c._waiters = {ws: None, w: None}


def _drop_waiter(c: Context, w: Waiter) -> None:
    """Unregister ``w`` from owner ``c`` if it is there. Holds _LOCK."""
    ws = c._waiters
    if ws is None:
        return
    if type(ws) is dict:
        ws.pop(w, None)
    elif ws == w:
        c._waiters = None


def _try_put(c: Context, w: Waiter) -> bool:
    if c._err is not None:
        return False
    _put_waiter(c, w)
    return True


def _add_waiter(c: Context, w: Waiter) -> bool:
    """Register ``w`` to run when owner ``c`` ends. False (nothing kept) if already ended.

    ``c`` must not be background, which never ends (callers keep nothing for it).
    Re-entered from a finalizer or a signal handler, the registration is deferred (and
    ``w`` runs then if ``c`` ended meanwhile); it returns True.
    """
    r = _locked(_try_put, c, w)
    if r is _REENTERED:
        _defer(partial(_late_add, c, w))
        return True
    return r


def _late_add(c: Context, w: Waiter) -> None:
    """A deferred ``_add_waiter``: register ``w``, or wake it now if ``c`` ended meanwhile."""
    r = _locked(_try_put, c, w)
    if r is _REENTERED:
        _defer(partial(_late_add, c, w))
    elif not r:
        _notify([w])


def _remove_waiter(c: Context, w: Waiter) -> None:
    if _locked(_drop_waiter, c, w) is _REENTERED:
        _defer(partial(_remove_waiter, c, w))


# What _mark collected, read and cleared by its caller before it leaves the critical
# section (guarded by the lock). Kept here, not in a local list, so that what an
# interrupted _mark collected is not lost, and so that a cancel with nothing to wake
# allocates nothing.
_out: list[Waiter] = []
_ended: list[tuple[Context, str]] = []  # (owner, reason) while an observer is registered


def _mark(root: Context, err: ContextError, cause: BaseException | None) -> None:
    """End ``root`` and its whole subtree. Holds the lock.

    Appends the waiters to wake to ``_out`` (and, with an observer, the ended owners to
    ``_ended``). ``root`` is unlinked from the owner it is registered with; its
    descendants need no unlinking, since their parents' child sets are dropped whole.

    Safe against an asynchronous exception at any point: every owner of the subtree is
    marked before any child set is dropped, and each step is idempotent, so running it
    again (``_finish``) completes an interrupted run. An owner already ended is not
    marked again, but its children are still visited.
    """
    c = root
    stack: list[Context] | None = None
    parents: list[Context] | None = None
    while True:
        if c._err is None:
            ws = c._waiters
            if ws is not None:
                if type(ws) is dict:
                    _out.extend(ws)
                else:
                    _out.append(ws)
                c._waiters = None
            q = c._entry
            if q is not None:
                q.disarm(c)
            c._cause = cause
            c._err = err
            if _observer is not None:
                _ended.append(
                    (c, "parent" if c is not root else _REASONS.get(type(err), "canceled"))
                )
        ch = c._children
        if ch is not None:
            if stack is None:
                stack = list(ch)
                parents = [c]
            else:
                stack.extend(ch)
                parents.append(c)  # type: ignore[union-attr]
        if not stack:
            break
        c = stack.pop()
    if parents is not None:
        for c in parents:
            c._children = None
    p = root._pnode
    if p is not None:
        ch = p._children
        if ch is not None:
            ch.discard(root)


_REASONS: dict[type, str] = {DeadlineExceeded: "deadline", Canceled: "canceled"}


def _finish(
    roots: tuple[Context, ...] | list[Context],
    err: ContextError,
    cause: BaseException | None,
    deadline: bool,
) -> None:
    """Complete ``_mark`` of ``roots`` after an asynchronous exception interrupted it.

    Runs under the lock; absorbs further interruptions until the subtrees are all ended
    (the first one is re-raised by the caller), then drops the duplicate waiters that a
    run interrupted between collecting and clearing them may have left.
    """
    while True:
        try:
            for c in roots:
                _mark(c, err, c._dcause if deadline else cause)
            break
        except BaseException:  # a second Ctrl-C: finish; the caller re-raises the first
            continue
    _out[:] = dict.fromkeys(_out)
    _ended[:] = dict.fromkeys(_ended)


def _take() -> tuple[list[Waiter] | None, list[tuple[Context, str]] | None]:
    """What the finished ``_mark`` calls collected, and clear it. Holds the lock."""
    out = ended = None
    if _out:
        out = _out.copy()
        _out.clear()
    if _ended:
        ended = _ended.copy()
        _ended.clear()
    return out, ended


def _report(ended: list[tuple[Context, str]]) -> None:
    obs = _observer
    if obs is not None:
        try:
            obs.ended(ended)
        except Exception:
            _log_exception("tether: an observer raised")


def _notify(out: list[Waiter]) -> None:
    """Wake what ``_mark`` collected. Called without the lock.

    A waiter is a callable run here (a thread event's ``set``, an ``after_func``
    hand-off), a ``(waker, fn)`` pair whose ``fn`` must run on the waker's event loop, or
    a CancelFunc in ``async with``, whose ``_interrupt`` runs on its waker's loop. Loop
    work is grouped so that each loop is posted to once, however many of its tasks were
    waiting, and without allocating per waiter.

    Each waiter is isolated from the others: one that raises an ``Exception`` is logged
    and the rest are still woken; a ``BaseException`` (``KeyboardInterrupt``) is re-raised
    once every waiter has been woken.
    """
    if len(out) == 1 and type(out[0]) is CancelFunc:  # one scope: its task's loop
        try:
            out[0]._waker.post_many(out)  # ``out`` is this call's own list: handed over
        except Exception:
            _log_exception("tether: waking an event loop raised")
        return
    loops: dict[_Waker, list[Any]] | None = None
    fatal: BaseException | None = None
    for w in out:
        t = type(w)
        if t is CancelFunc:  # the waker's drain calls its _interrupt()
            waker, fn = w._waker, w
        elif t is tuple:
            waker, fn = w
        else:
            try:
                w()
            except Exception:
                _log_exception("tether: waking a waiter raised")
            except BaseException as e:
                if fatal is None:
                    fatal = e
            continue
        if loops is None:
            loops = {}
        fns = loops.get(waker)
        if fns is None:
            loops[waker] = [fn]
        else:
            fns.append(fn)
    if loops is not None:
        for waker, fns in loops.items():
            try:
                waker.post_many(fns)
            except Exception:
                _log_exception("tether: waking an event loop raised")
            except BaseException as e:
                if fatal is None:
                    fatal = e
    if fatal is not None:
        raise fatal


def _cancel(
    c: Context, err: ContextError, cause: BaseException | None, drop: Waiter | None = None
) -> None:
    """End owner ``c`` (first cancellation wins); first unregister ``drop``, if given.

    Re-entered from a finalizer or a signal handler while this thread is inside a
    critical section, it is deferred until that section ends. ``CancelFunc.__call__``
    inlines it (the hot path of every cancel): change both.

    The lock is taken with ``acquire()`` rather than ``with`` (which costs ~1,000
    instructions more): an asynchronous exception can strike right after ``acquire()``
    returns, so the handler releases whatever this call holds beyond what the thread
    held before (``_rc()``), and finishes a section it interrupted.
    """
    n = _rc()
    if n:
        _defer(partial(_cancel, c, err, cause, drop))
        return
    mine = False
    interrupted: BaseException | None = None
    try:
        _LOCK.acquire()
        mine = True
        if drop is not None:
            if c._waiters is drop:  # _drop_waiter's common case (an `async with` exit)
                c._waiters = None
            else:
                _drop_waiter(c, drop)
        if c._err is None:
            if c._children is None and c._waiters is None and _observer is None:
                # _mark's steps for a leaf with nothing to wake (a scope left normally):
                # the same order, so that _finish completes an interrupted run
                q = c._entry
                if q is not None:
                    q.disarm(c)
                c._cause = cause
                c._err = err
                p = c._pnode
                if p is not None:
                    ch = p._children
                    if ch is not None:
                        ch.discard(c)
            else:
                _mark(c, err, cause)
        out = ended = None
        if _out or _ended:
            out, ended = _take()
        mine = False
        _LOCK.release()
    except BaseException as e:  # KeyboardInterrupt: finish what it interrupted, re-raise
        interrupted = e
        out, ended = _interrupted(n, mine, (c,), err, cause)
    if _deferred:
        _run_deferred()
    if ended is not None:
        _report(ended)
    if out is not None:
        _notify(out)
    if interrupted is not None:
        raise interrupted


def _interrupted(
    n: int,
    mine: bool,
    roots: tuple[Context, ...],
    err: ContextError,
    cause: BaseException | None,
) -> tuple[list[Waiter] | None, list[tuple[Context, str]] | None]:
    """An asynchronous exception hit a cancel: complete it and release the lock.

    ``mine``: the exception struck inside the critical section, which is finished
    (``_finish``) so that no live descendant is left under an ended ancestor. Then every
    hold of ``_LOCK`` beyond the ``n`` the thread had before is released.
    """
    out = ended = None
    if mine:
        _finish(roots, err, cause, False)
        out, ended = _take()
    while _rc() > n:
        _LOCK.release()
    return out, ended


def _expire_locked(due: list[Context], err: ContextError) -> Any:
    interrupted: BaseException | None = None
    try:
        for c in due:
            if c._err is None:
                _mark(c, err, c._dcause)
    except BaseException as e:
        interrupted = e
        _finish(due, err, None, True)
    return (*_take(), interrupted)


def _expire(due: list[Context]) -> None:
    """End contexts whose deadline passed (timer thread or FakeClock.advance).

    Contexts that expire together share one ``DeadlineExceeded`` instance, as a subtree
    ended by one cancellation does.
    """
    r = _locked(_expire_locked, due, DeadlineExceeded())
    if r is _REENTERED:
        _defer(partial(_expire, due))
        return
    out, ended, interrupted = r
    if ended is not None:
        _report(ended)
    if out is not None:
        _notify(out)
    if interrupted is not None:
        raise interrupted


def _due_locked(q: _clock.TimerQueue, t: float, err: ContextError) -> Any:
    due = q.pop_due(t)
    heap = q.heap
    armed = q.armed
    while heap and heap[0] not in armed:
        _heappop(heap)
    nxt = heap[0] if heap else None
    if not due:
        return None, None, None, nxt
    return (*_expire_locked(due, err), nxt)


def _expire_due(q: _clock.TimerQueue, t: float) -> float | None:
    """End the contexts of ``q`` whose deadline is ``<= t``, on this thread.

    What an event loop's own timer runs (``_aio``), so that a deadline reaches its task
    without the timer thread. Returns the earliest deadline still armed in ``q``, or
    ``None``; ``math.inf`` if this call was re-entered and deferred its work.
    """
    r = _locked(_due_locked, q, t, DeadlineExceeded())
    if r is _REENTERED:
        _defer(partial(_expire_due, q, t))
        return math.inf
    out, ended, interrupted, nxt = r
    if ended is not None:
        _report(ended)
    if out is not None:
        _notify(out)
    if interrupted is not None:
        raise interrupted
    return nxt  # type: ignore[no-any-return]


def _unlink(c: Context) -> None:
    """Undo a derive that did not complete: unregister ``c``, disarm it. Holds the lock."""
    p = c._pnode
    if p is not None:
        ch = p._children
        if ch is not None:
            ch.discard(c)
        c._pnode = None
    q = c._entry
    if q is not None:
        q.disarm(c)


def _link_locked(p: Context, c: Context, deadline: float | None) -> Any:
    start = False
    if c._err is None:
        if p._err is not None:
            _mark(c, p._err, p._cause)
        else:
            if p is not _BACKGROUND:
                c._pnode = p
                ch = p._children
                if ch is None:
                    p._children = {c}
                else:
                    ch.add(c)
            if deadline is not None:
                start = _clock.timers.arm(c, deadline)
    return (*_take(), start)


def _link(p: Context, c: Context, deadline: float | None) -> None:
    """Finish a derive made re-entrantly (deferred): register ``c``, arm its deadline."""
    r = _locked(_link_locked, p, c, deadline)
    if r is _REENTERED:
        _defer(partial(_link, p, c, deadline))
        return
    out, ended, start = r
    if ended is not None:
        _report(ended)
    if out is not None:
        _notify(out)
    if start:
        try:
            _clock.timers.start()
        except RuntimeError:
            _log_exception("tether: could not start the timer thread")


_clock.timers = _REAL_TIMERS = _clock.TimerQueue(_locked, _defer, _expire, threaded=True)
_clock.register_fork_hooks(_LOCK, _REAL_TIMERS)


def _owner(parent: object) -> Context:
    if type(parent) is Context:
        return parent._c or parent
    if parent is None:
        raise TypeError(
            "tether: parent context is None; pass tether.background() at the top of a "
            "request or program, or tether.todo() where a context is not plumbed yet"
        )
    raise TypeError(f"tether: parent must be a tether.Context, got {type(parent).__name__}")


def _derive(
    parent: Context,
    kind: str,
    deadline: float | None,
    expired: bool,
    dcause: BaseException | None,
    *,
    values: dict[Hashable, Any] | None = None,
) -> CancelFunc:
    """Make an owning child of ``parent``; return its cancel function (``cf._ctx``: the
    child). Callers that hand out the pair wrap it as ``Scope((cf._ctx, cf))``; internal
    callers that only unpack it skip that tuple (one allocation per derive).

    ``deadline`` is the child's own (``None``: none); ``expired`` says it already
    passed (the caller knows it without reading the clock twice). ``values``, when
    given, is the child's whole value mapping (``parent._values`` plus its own, never
    mutated afterwards): one node instead of a ``with_value`` under it.
    """
    if type(parent) is not Context:
        _owner(parent)  # raises the right error
    p = parent._c or parent
    c: Context = _new(Context)
    c._c = None  # an owner: see the module docstring
    c._values = parent._values if values is None else values
    c._parent = parent
    c._kind = kind
    c._err = None
    c._cause = None
    c._children = None
    c._waiters = None
    c._entry = None
    c._event = None
    pd = p._deadline
    if deadline is None:
        c._deadline = pd
    elif pd is not None and pd <= deadline:
        c._deadline = pd  # the parent's deadline ends it first: no timer of its own
        deadline = None
    else:
        c._deadline = deadline
        c._dcause = dcause
    if deadline is not None and expired:  # born expired, unless born ended: no timer
        e = p._err  # reading without the lock linearises before a racing cancel
        if e is None:
            c._err = DeadlineExceeded()
            c._cause = dcause
        else:
            c._err = e
            c._cause = p._cause
        c._pnode = None
    elif p is _BACKGROUND and deadline is None:
        c._pnode = None  # nothing to register with, nothing to arm: no lock
    else:
        start = reentered = mine = False
        n = _rc()
        try:  # the shape of _cancel's critical section (see there)
            if n:  # re-entered by a finalizer or a signal handler
                reentered = True
            else:
                _LOCK.acquire()
                mine = True
                if p is _BACKGROUND:
                    c._pnode = None
                elif p._err is not None:  # born ended under an ended parent
                    c._err = p._err
                    c._cause = p._cause
                    c._pnode = None
                    deadline = None
                else:
                    c._pnode = p
                    ch = p._children
                    if ch is None:
                        p._children = {c}
                    else:
                        ch.add(c)
                if deadline is not None:
                    # arm (inline: this is with_timeout's hot path; TimerQueue.arm is the
                    # same steps, see _clock's comment)
                    q = _clock.timers
                    armed = q.armed
                    b = armed.setdefault(deadline, c)
                    if b is c:
                        _heappush(q.heap, deadline)
                        if deadline < q.wake_at:
                            start = q.wake(deadline)
                    elif type(b) is dict:
                        b[c] = None
                    else:
                        armed[deadline] = {b: None, c: None}
                    c._entry = q
                mine = False
                _LOCK.release()
        except BaseException:  # an asynchronous exception: undo the half-made link
            if mine:
                _unlink(c)
            while _rc() > n:
                _LOCK.release()
            raise
        if reentered:  # a finalizer or a signal handler: link it once the holder leaves
            c._pnode = None
            _defer(partial(_link, p, c, deadline))
        else:
            if _deferred:
                _run_deferred()
            if start:  # the timer thread is started outside the lock
                try:
                    q.start()
                except RuntimeError as e:
                    _abandon(c)
                    raise RuntimeError(
                        "tether: could not start the timer thread, so this deadline could "
                        "not be armed (no context was created); the process is out of "
                        "threads or shutting down"
                    ) from e
    cf: CancelFunc = _new(CancelFunc)
    cf._ctx = c
    f = _getframe(2)
    cf._code = f.f_code
    cf._lasti = f.f_lasti
    if _track is not None:
        _track[c] = (cf._code, cf._lasti)
    cf._state = 0
    if _observer is not None:
        c._label = (cf._code, cf._lasti)  # an owner's _label: its creation site
        _observed(c, parent, kind)
        born = c._err
        if born is not None:  # born ended: it is never marked, so report its end here
            _report([(c, "deadline" if p._err is not born else "parent")])
    return cf


def _observed(c: Context, parent: Context, kind: str) -> None:
    obs = _observer
    if obs is not None:
        try:
            obs.created(c, parent, kind)
        except Exception:
            _log_exception("tether: an observer raised")


def _abandon_locked(c: Context) -> None:
    _unlink(c)
    c._err = Canceled()


def _abandon(c: Context) -> None:
    """Unregister and disarm a context that will never be returned to anyone."""
    if _locked(_abandon_locked, c) is _REENTERED:
        _defer(partial(_abandon, c))


# --------------------------------------------------------------------------------------
# Cancel functions and scopes

# CancelFunc._state bits
_ENTERED = 1  # entered with `with` or `async with`
_ASYNC = 2  # ... with `async with`: it interrupts its task when the context ends
_INTERRUPTED = 4  # ... and it did
_EXITED = 8
_TIMED = 16  # ... counted among its loop's deadline scopes (see _aio)


@final
class CancelFunc:
    """Cancels the context it was returned with: ``cancel()`` or ``cancel(cause)``.

    Idempotent (the first cancellation of a context wins, and later calls do nothing),
    safe from any thread or event loop, never waits for the work the context governs.
    Before it returns, the context and every descendant are ended, waiting threads are
    released and waiting tasks are scheduled to resume; ``after_func`` callbacks start
    on other threads. ``cause`` must be an exception (or ``None``): it is what
    ``tether.cause()`` reports for the context and its descendants.

    Dropping it without calling it while the context is live emits a
    ``LostCancelWarning`` that points at the line that derived the context.

    Added in 0.1.
    """

    __slots__ = ("_cancelling", "_code", "_ctx", "_lasti", "_prev", "_state", "_task", "_waker")
    __module__ = "tether"
    _ctx: Context
    _code: CodeType
    _lasti: int
    _state: int
    _prev: Context  # current() before the block was entered
    # set by `async with` (see _aio.scope_aenter): the task to interrupt, its cancelling()
    # count at entry, and its loop's waker
    _task: Task[Any] | None
    _cancelling: int
    _waker: _Waker

    def __new__(cls) -> CancelFunc:  # not __init__: no half-made instance reaches __del__
        raise TypeError("tether: cancel functions come from with_cancel/with_timeout/...")

    def __call__(self, cause: BaseException | None = None) -> None:
        """Cancel the context: ``cancel()`` or ``cancel(cause)``.

        Before it returns, the context and every descendant are ended, waiting threads are
        released and waiting tasks are scheduled to resume; ``after_func`` callbacks start on
        other threads. ``cause`` (an exception, or ``None``) is what ``tether.cause()``
        reports for the context and its descendants; without one, ``cause()`` reports the
        ``Canceled`` error.

        Never blocks or waits for the work the context governs; idempotent: the first
        cancellation wins, later calls (with or without a cause) do nothing; thread-safe and
        safe from any event loop. From a ``signal`` handler or a finalizer (``__del__``, a
        generator closed by the garbage collector) that interrupted this thread inside
        tether's own bookkeeping, the cancellation is deferred until that bookkeeping
        ends — microseconds later — instead of deadlocking; ``tether.signal_context``
        remains the simplest way to cancel on a signal. On an already ended context it
        does nothing. Raises ``TypeError`` if ``cause`` is not an exception or ``None``.
        """
        if cause is not None and not isinstance(cause, BaseException):
            raise TypeError(
                f"tether: cause must be an exception or None, got {type(cause).__name__}"
            )
        c = self._ctx
        if c._err is None:  # _cancel(c, Canceled(), cause), inlined: the hot path
            err = Canceled()
            n = _rc()
            if n:  # re-entered by a finalizer or a signal handler
                _defer(partial(_cancel, c, err, cause))
                return
            mine = False
            interrupted: BaseException | None = None
            try:
                _LOCK.acquire()
                mine = True
                if c._err is None:
                    _mark(c, err, cause)
                out = ended = None
                if _out or _ended:
                    out, ended = _take()
                mine = False
                _LOCK.release()
            except BaseException as e:
                interrupted = e
                out, ended = _interrupted(n, mine, (c,), err, cause)
            if _deferred:
                _run_deferred()
            if ended is not None:
                _report(ended)
            if out is not None:
                _notify(out)
            if interrupted is not None:
                raise interrupted

    def __del__(self) -> None:
        c = self._ctx
        # A child of background() with no deadline is registered nowhere: dropping its
        # cancel function leaks nothing, so there is nothing to warn about.
        if (
            c._err is None
            and (c._pnode is not None or c._entry is not None)
            and not sys.is_finalizing()
        ):
            # A finalizer of the same garbage (a generator's `finally: cancel()`) may yet
            # cancel it, in either order, and perhaps deferred until the critical section
            # it runs in ends: then the verdict waits (_judge_lost).
            if _gc_is_finalized(self):  # true only when the cycle collector calls
                _suspect_lost(c, self._code, self._lasti)  # judged at the pass's end
            elif _rc():  # inside tether's own critical section: judged when it ends
                _defer(partial(_judge_lost, [(c, self._code, self._lasti)]))
            else:
                _warn_lost(c, self._code, self._lasti)

    def __repr__(self) -> str:
        return f"<tether.CancelFunc of {self._ctx!r}>"

    # -- used by Scope ------------------------------------------------------------------

    def _enter(self, flags: int) -> Context:
        if self._state:
            raise RuntimeError(
                "tether: this (ctx, cancel) scope was already entered; derive a new "
                "context for each `with` block"
            )
        self._state = _ENTERED | flags
        c = self._ctx
        # Keep the previous context rather than the Token: a Token (and its hold on the
        # old mapping) per open block costs collector time with thousands of tasks.
        self._prev = _current.get(_BACKGROUND)
        _current.set(c)
        return c

    def _exit(self, drop: Waiter | None = None) -> None:
        """Leave the block: restore ``current()``, unregister ``drop``, cancel."""
        self._state |= _EXITED
        _current.set(self._prev)
        c = self._ctx
        if c._err is None or drop is not None:
            _cancel(c, Canceled(), None, drop)

    def _leave(self) -> None:
        """Undo ``_enter(0)`` without ending the context: ``current()`` restored, and the
        scope can be entered again (the consumer enters a message's scope as ``async
        with`` once its handler suspends)."""
        _current.set(self._prev)
        self._state = 0

    def _interrupt(self) -> None:
        """On the task's loop: cancel the task if its `async with` block is still active."""
        if self._state & ~_TIMED == _ENTERED | _ASYNC:
            self._state |= _INTERRUPTED
            task = self._task
            assert task is not None
            d = _aio.scope_cancels
            d[task] = d.get(task, 0) + 1
            task.cancel()


def _site(code: CodeType, lasti: int) -> tuple[str, int]:
    line = code.co_firstlineno
    for start, end, ln in code.co_lines():
        if start <= lasti < end and ln is not None:
            line = ln
            break
    return code.co_filename, line


def _warn_lost(c: Context, code: CodeType, lasti: int) -> None:
    filename, line = _site(code, lasti)
    warnings.warn_explicit(
        LostCancelWarning(
            f"tether: the cancel function of {c!r}, created at {filename}:{line}, "
            "was garbage-collected without being called; the context stays "
            "registered until its parent ends. Call cancel() on every path, or "
            "use `with`/`async with`."
        ),
        LostCancelWarning,
        filename,
        line,
    )


# Cancel functions the cycle collector dropped while their context was live, judged at
# the end of the pass (see CancelFunc.__del__).
_suspects: list[tuple[Context, CodeType, int]] = []
_gc_hooked = False


def _suspect_lost(c: Context, code: CodeType, lasti: int) -> None:
    global _gc_hooked
    if not _gc_hooked:
        _gc_hooked = True
        _gc_callbacks.append(_collected)
    _suspects.append((c, code, lasti))


def _collected(phase: str, info: dict[str, int]) -> None:
    """gc callback (installed with the first suspect): judge what the pass dropped."""
    if phase == "stop" and _suspects:
        batch = _suspects[:]
        del _suspects[: len(batch)]
        if _rc() or _deferred:  # the pass ran inside a critical section, or cancels wait:
            _defer(partial(_judge_lost, batch))  # after the cancels finalizers deferred
        else:
            _judge_lost(batch)


def _judge_lost(batch: list[tuple[Context, CodeType, int]]) -> None:
    for c, code, lasti in batch:
        if c._err is None and (c._pnode is not None or c._entry is not None):
            try:
                _warn_lost(c, code, lasti)
            except Exception:  # the warning turned into an error: nobody here to raise to
                _log_exception("tether: a LostCancelWarning was raised as an error")


class Scope(tuple[Context, CancelFunc]):
    """The ``(ctx, cancel)`` pair returned by ``with_cancel``/``with_timeout``/``with_deadline``.

    Unpack it (``ctx, cancel = tether.with_cancel(parent)``) or enter it:

    - ``with scope as ctx:`` makes ``ctx`` the current context inside the block and
      cancels it on exit;
    - ``async with scope as ctx:`` additionally interrupts the current asyncio task when
      ``ctx`` ends (for whatever reason: its deadline, an ancestor's cancellation, or a
      ``cancel()`` from any thread), and on exit raises ``ctx.check()``'s error if, and
      only if, it was that interruption that ended the block. A cancellation from
      elsewhere passes through as ``CancelledError``; ``task.cancelling()`` is back to
      its value at entry. Exactly as ``asyncio.timeout`` does, with the context's error
      in place of ``TimeoutError`` — and one rule more: when ``ctx`` has ended (by its
      deadline, say) and tether interrupted the task for it, the code inside sees
      ``ctx``'s error even if tether also delivered the interruption elsewhere (an
      enclosing scope whose context ended, or a ``TaskGroup`` whose deadline passed);
      only a cancel request from outside tether passes through.

    A scope can be entered once. Entering does not block.

    Added in 0.1.
    """

    __slots__ = ()
    __module__ = "tether"

    @property
    def ctx(self) -> Context:
        """The derived context."""
        return self[0]

    @property
    def cancel(self) -> CancelFunc:
        """Its cancel function."""
        return self[1]

    def __enter__(self) -> Context:
        return self[1]._enter(0)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self[1]._exit()

    # Replaced by tether._aio.scope_aenter/scope_aexit when that module is first imported
    # (these load it, then delegate, once): `import tether` does not import asyncio.
    async def __aenter__(self) -> Context:
        ctx: Context = await (_aio or _load_aio()).scope_aenter(self)
        return ctx

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await (_aio or _load_aio()).scope_aexit(self, exc_type, exc, tb)

    def __repr__(self) -> str:
        return f"<tether.Scope of {self[0]!r}>"


# --------------------------------------------------------------------------------------
# Roots


def _root(kind: str) -> Context:
    c: Context = _new(Context)
    c._c = None
    c._values = _NO_VALUES
    c._parent = None
    c._kind = kind
    c._label = None
    c._err = None
    c._cause = None
    c._deadline = None
    c._dcause = None
    c._pnode = None
    c._children = None
    c._waiters = None
    c._entry = None
    c._event = None
    return c


_BACKGROUND = _root("background")
_TODO = _root("todo")
_TODO._c = _BACKGROUND
_current: ContextVar[Context] = ContextVar("tether.current")


def background() -> Context:
    """The root context: never cancelled, no deadline, no values.

    Use it at the top of ``main``, of a request (before the server integration derives the
    request's context) and in tests.

    Non-blocking; returns the same object on every call; thread-safe. It is never ended.
    Raises nothing.
    """
    return _BACKGROUND


def todo() -> Context:
    """Like ``background()``, but says "the right context is not plumbed here yet".

    A marker for code review and ``tether lint``; it behaves as ``background()``.

    Non-blocking; returns the same object on every call; thread-safe. It is never ended.
    Raises nothing.
    """
    return _TODO


def current() -> Context:
    """The innermost context entered with ``with``/``async with`` here, else background.

    "Here" is the ``contextvars`` context: the current thread, or the current asyncio task
    (tasks copy their creator's at creation). Threads started with ``threading.Thread``
    start from background; ``tether.to_thread`` and ``tether.Group`` carry it across.
    Prefer passing ``ctx`` explicitly; ``current()`` is for code whose signature you
    cannot change (logging filters, framework hooks).

    Non-blocking; the same result on every call within one block; thread-safe. Returns
    the entered context even if it already ended (check ``err()``). Raises nothing.
    """
    return _current.get(_BACKGROUND)


# --------------------------------------------------------------------------------------
# Durations and deadlines


def _seconds(
    x: object, what: str = "duration", hint: str = "for no limit, do not set a deadline"
) -> float:
    t = type(x)
    if t is float:
        if x - x == 0:  # type: ignore[operator]  # finite
            return x  # type: ignore[return-value]
    elif t is int:
        try:
            return float(x)  # type: ignore[arg-type]
        except OverflowError:
            pass
    elif t is timedelta:
        return x.total_seconds()  # type: ignore[attr-defined,no-any-return]
    elif t is bool or isinstance(x, str | bytes) or not isinstance(x, numbers.Real):
        raise TypeError(
            f"tether: a {what} is seconds as an int or float, or a datetime.timedelta; "
            f"got {t.__name__} {x!r:.40}"
        )
    else:
        try:
            f = float(x)
        except OverflowError:
            f = math.inf
        if math.isfinite(f):
            return f
    raise ValueError(f"tether: a {what} must be a finite number of seconds, got {x!r:.40}; {hint}")


def _clock_time(when: object) -> float:
    if isinstance(when, datetime):
        if when.tzinfo is None or when.utcoffset() is None:
            raise TypeError(
                "tether: a deadline datetime must be timezone-aware, e.g. "
                "datetime.now(timezone.utc) + timedelta(seconds=5); got a naive datetime"
            )
        return _clock.now() + (when - datetime.now(UTC)).total_seconds()
    return _seconds(when, "deadline")


# A deadline further than this ahead on the clock's scale is a mistake, not a budget:
# ``time.time()`` (seconds since 1970, ~1.7e9) passed where ``time.monotonic()``
# (seconds since boot, typically < 1e8) is expected lands ~56 years away.
_FAR = 10 * 365.25 * 86400.0


def _far_deadline(d: float, now: float) -> ValueError:
    return ValueError(
        f"tether: a deadline of {d:.6g} is {(d - now) / (365.25 * 86400):.3g} years from "
        "now on tether's clock (time.monotonic's scale), so it looks like a time.time() "
        "value: pass with_timeout(parent, seconds), an aware datetime "
        "(datetime.now(timezone.utc) + timedelta(seconds=5)), or a time on the "
        "monotonic scale (time.monotonic() + 5, ctx.deadline()); for no limit, set no "
        "deadline"
    )


def _cause_arg(cause: object) -> BaseException | None:
    if cause is None or isinstance(cause, BaseException):
        return cause
    raise TypeError(f"tether: cause must be an exception or None, got {type(cause).__name__}")


# --------------------------------------------------------------------------------------
# Derivation


def with_cancel(parent: Context) -> Scope:
    """Derive a child of ``parent`` that ends when cancelled or when ``parent`` ends.

    Returns the ``(ctx, cancel)`` pair (a ``Scope``), which is also a context manager that
    cancels on exit. The caller must call ``cancel`` on every path (or use ``with``): until
    then the child stays registered with the parent.

    Non-blocking; each call makes a new context; thread-safe. If ``parent`` already
    ended, the child is born ended with the parent's error and cause. Raises
    ``TypeError`` if ``parent`` is not a Context (``None`` included: pass
    ``tether.background()``).
    """
    cf = _derive(parent, "with_cancel", None, False, None)
    return Scope((cf._ctx, cf))


def with_deadline(
    parent: Context, when: float | datetime, cause: BaseException | None = None
) -> Scope:
    """Derive a child that also ends, with ``DeadlineExceeded``, at ``when``.

    ``when`` is a time on the clock's scale (``time.monotonic``; see ``ctx.deadline()``)
    or a timezone-aware ``datetime``. The child's deadline is the earlier of ``when`` and
    the parent's; if the parent's is earlier or equal, no timer is armed. ``cause`` is
    recorded as the cause only if this deadline fires. Same pair and obligations as
    ``with_cancel``.

    Non-blocking; each call makes a new context; thread-safe. If ``parent`` already
    ended, the child is born ended with the parent's error; if ``when`` already passed,
    it is born ended with ``DeadlineExceeded``. Raises ``TypeError`` for a
    ``None``/non-Context parent, a non-number ``when`` (``bool`` and ``str`` included), a
    naive datetime or a non-exception cause; ``ValueError`` for NaN or infinity, and for
    a number ``when`` more than 10 years ahead (a ``time.time()`` value, most likely:
    the message names the fix; ``with_timeout`` and a ``datetime`` have no such limit).
    """
    d = _clock_time(when)
    if cause is not None:
        cause = _cause_arg(cause)
    now = _clock.now()
    if d - now > _FAR and not isinstance(when, datetime):  # a datetime cannot be mistaken
        raise _far_deadline(d, now)
    cf = _derive(parent, "with_deadline", d, d <= now, cause)
    return Scope((cf._ctx, cf))


def with_timeout(
    parent: Context, seconds: float | timedelta, cause: BaseException | None = None
) -> Scope:
    """Derive a child that ends, with ``DeadlineExceeded``, ``seconds`` from now.

    Exactly ``with_deadline(parent, now() + seconds, cause)``. ``seconds`` is an int, a
    float or a ``timedelta``.

    Non-blocking; each call makes a new context; thread-safe. If ``parent`` already
    ended, the child is born ended with the parent's error; zero or negative ``seconds``
    give a child born ended with ``DeadlineExceeded``. Raises ``TypeError`` for a
    ``None``/non-Context parent, a non-number (``bool`` and ``str`` included) or a
    non-exception cause; ``ValueError`` for NaN or infinity.
    """
    t = type(seconds)
    fast = (t is float or t is int) and seconds - seconds == 0  # type: ignore[operator]
    s = seconds if fast else _seconds(seconds)
    try:
        d = _clock.now() + s  # type: ignore[operator]
    except OverflowError:
        d = _clock.now() + _seconds(s)  # raises the tether error
    if cause is not None:
        cause = _cause_arg(cause)
    cf = _derive(parent, "with_deadline", d, s <= 0, cause)  # type: ignore[operator]
    return Scope((cf._ctx, cf))


def _derive_values(
    parent: Context, seconds: float | None, values: dict[Hashable, Any]
) -> CancelFunc:
    """``with_timeout(with_value(parent, ...), seconds)`` as one owning node (internal).

    For the one-context-per-item pattern (a consumer's message, a job): ``values`` is the
    child's whole mapping (``parent._values`` plus the item's own, e.g. ``REQUEST_ID``;
    never mutated afterwards); ``seconds`` is a number already checked by the caller
    (``None``: no deadline of its own, as ``with_cancel``). Returns the cancel function
    (``cf._ctx`` is the child; ``Scope((cf._ctx, cf))`` makes the pair). The creation
    site (for ``LostCancelWarning`` and observers) is this function's caller, as for
    ``with_timeout``. Non-blocking, thread-safe; raises what ``with_timeout`` raises
    for a bad parent.
    """
    if seconds is None:
        return _derive(parent, "with_cancel", None, False, None, values=values)
    return _derive(
        parent, "with_deadline", _clock.now() + seconds, seconds <= 0, None, values=values
    )


def with_value(parent: Context, key: Key[T] | Hashable, value: T | Any) -> Context:
    """Derive a child that carries ``value`` under ``key``; cancellation is the parent's.

    The nearest binding wins (binding ``None`` shadows too). Use it for request-scoped
    data (request id, trace, principal), not to pass optional arguments. There is no
    cancel function: the child has no cancellation of its own. O(number of visible keys).

    Non-blocking; each call makes a new context; thread-safe. Under an already ended
    parent the child is ended too (it shares the parent's state). Raises ``TypeError``
    for a ``None``/non-Context parent or an unhashable key, ``ValueError`` for a ``None``
    key.
    """
    p = _owner(parent)
    if key is None:
        raise ValueError("tether: a value key must not be None; use a tether.Key('name')")
    old = parent._values
    try:
        values = {key: value} if old is _NO_VALUES else {**old, key: value}
    except TypeError:
        raise TypeError(
            f"tether: a value key must be hashable, got {type(key).__name__}; "
            "use a tether.Key('name')"
        ) from None
    c: Context = _new(Context)
    c._c = p
    c._values = values
    c._parent = parent
    c._kind = "with_value"
    c._label = key
    return c


def without_cancel(parent: Context) -> Context:
    """A child that keeps ``parent``'s values but never ends: no deadline, no cause.

    For work that must outlive the request that started it (an audit write, a cache
    fill); give it its own timeout with ``with_timeout``.

    Non-blocking; each call makes a new context; thread-safe. Even under an already ended
    parent the child is live. Raises ``TypeError`` for a ``None``/non-Context parent.
    """
    _owner(parent)
    c: Context = _new(Context)
    c._c = _BACKGROUND
    c._values = parent._values
    c._parent = parent
    c._kind = "without_cancel"
    c._label = None
    return c


def cause(ctx: Context) -> BaseException | None:
    """Why ``ctx`` ended: ``None`` while live; else the first cause, or ``ctx.err()``.

    The cause is the exception given to the first ``cancel(cause)`` of ``ctx`` or of the
    ancestor whose cancellation ended it, or the ``cause=`` of the
    ``with_timeout``/``with_deadline`` whose deadline fired. Without one, it is
    ``ctx.err()``. ``without_cancel`` contexts never have one.

    Non-blocking; idempotent (it never changes once non-``None``); thread-safe. Raises
    ``TypeError`` if ``ctx`` is not a Context.
    """
    c = _owner(ctx)
    e = c._err
    if e is None:
        return None
    k = c._cause
    return e if k is None else k


# --------------------------------------------------------------------------------------
# after_func


class _AfterFunc:
    """One ``after_func`` registration; also the waiter its context runs when it ends.

    ``_state``: 0 pending, 1 handed to the runner, 2 stopped, 3 running. Each transition
    reads and writes ``_state`` with ``_LOCK`` held and nothing that can be interrupted
    in between (no call, no loop), so it is taken even re-entrantly (no ``_rc()``
    check): a signal handler or finalizer that re-enters finds the state whole.
    """

    __slots__ = ("_c", "_fn", "_state")

    def __init__(self, c: Context, fn: Callable[[], object]) -> None:
        self._c = c
        self._fn = fn
        self._state = 0

    def __call__(self) -> None:  # the context ended: hand fn to the runner
        with _LOCK:
            s = self._state
            if s == 0:
                self._state = 1
        if s == 0 and not _runner.submit(self._run):
            # No thread could be started: the job stays queued for the runner's next
            # worker, and until then stop() can still prevent it.
            with _LOCK:
                if self._state == 1:
                    self._state = 0

    def _run(self) -> None:  # on a runner thread
        with _LOCK:
            s = self._state
            if s < 2:
                self._state = 3
        if s < 2:
            self._fn()

    def stop(self) -> bool:
        with _LOCK:
            s = self._state
            if s == 0:
                self._state = 2
        if s:
            return False
        _remove_waiter(self._c, self)
        return True


def after_func(ctx: Context, fn: Callable[[], object]) -> Callable[[], bool]:
    """Arrange for ``fn()`` to run once, on another thread, after ``ctx`` ends.

    Returns ``stop``: ``stop()`` unregisters ``fn`` and returns ``True`` if that
    prevented it from running; ``False`` if ``fn`` was already started or already
    stopped. ``stop`` is idempotent and thread-safe and does not wait for ``fn``. ``fn``
    never runs inside ``cancel()``; an exception it raises is logged on the ``tether``
    logger. For a context that can never end (``background()``) ``fn`` never runs.

    Non-blocking; each call registers a new callback; thread-safe. If ``ctx`` already
    ended, ``fn`` is started at once (still on another thread). Raises ``TypeError`` if
    ``ctx`` is not a Context or ``fn`` is not callable.
    """
    c = _owner(ctx)
    if not callable(fn):
        raise TypeError(f"tether: after_func needs a callable, got {type(fn).__name__}")
    af = _AfterFunc(c, fn)
    if c is not _BACKGROUND and not _add_waiter(c, af):
        af()
    return af.stop
