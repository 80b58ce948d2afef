"""What the lifecycle components share: keys, errors, the drain context, thread helpers.

The drain context
-----------------
Graceful shutdown needs two signals, not one: "stop taking new work" (the component's
``ctx`` ends) and "give up on the work you already took" (the drain deadline passes).
Work that was already accepted must not run under the component's ``ctx``, or the first
signal would abort it. So the Supervisor binds a second context, the *drain context*,
under a private key (``with_drain``); it ends only when the drain deadline passes.
``drain_scope(ctx)`` gives a component the context its in-flight work should run under:
``ctx``'s values, the drain context's cancellation. Go's ``http.Server`` keeps its
server in the request context the same way (``ServerContextKey``).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import secrets
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from .. import _context, _threads
from .._context import Context, Key, Scope, after_func, cause, with_cancel, without_cancel
from .._keys import REQUEST_ID
from ._signals import SignalReceived

__all__ = [
    "REQUEST_ID",
    "WORKER",
    "ComponentExited",
    "ComponentFailed",
    "DrainTimeout",
    "QueueFull",
    "Rejected",
    "ShutdownRequested",
    "ShuttingDown",
    "SignalReceived",
    "drain_scope",
    "log_extra",
    "new_request_id",
    "with_drain",
]

T = TypeVar("T")

LOG = logging.getLogger("tether.lifecycle")

WORKER: Key[str] = Key("worker")

_DRAIN: Key[Context] = Key("tether.lifecycle.drain")


# --------------------------------------------------------------------------------------
# Errors and causes


class ShutdownRequested(Exception):
    """The cause recorded when ``Supervisor.shutdown()`` is called without one.

    Added in 0.1.
    """

    __module__ = "tether.lifecycle"

    def __str__(self) -> str:
        return super().__str__() if self.args else "shutdown requested"


class ComponentFailed(Exception):
    """The cause of a shutdown started by a component that raised.

    ``name`` is the component's name; the component's exception is ``__cause__``.

    Added in 0.1.
    """

    __module__ = "tether.lifecycle"

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"component {self.name!r} failed: {self.__cause__!r}"


class ComponentExited(Exception):
    """The cause of a shutdown started by a component that returned before shutdown.

    A service is its components: when one stops for good, the service stops (a half-alive
    process that still answers its health check is worse than a restart).

    Added in 0.1.
    """

    __module__ = "tether.lifecycle"

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"component {self.name!r} returned before shutdown"


class DrainTimeout(TimeoutError):
    """The cause of a drain context ended because the drain deadline passed.

    In-flight work sees its context end with ``Canceled`` and this as the cause: stop,
    and leave what is not done to be reported.

    Added in 0.1.
    """

    __module__ = "tether.lifecycle"

    def __str__(self) -> str:
        return super().__str__() if self.args else "drain deadline passed"


class Rejected(Exception):
    """Work was not accepted (``WorkerPool.submit``, ``DetachedRunner.go``).

    The caller still owns the item: nothing was queued, nothing is lost. The two kinds
    are ``QueueFull`` (shed load, retry later, or answer 503) and ``ShuttingDown``.

    Added in 0.1.
    """

    __module__ = "tether.lifecycle"


class QueueFull(Rejected):
    """The bound on running and queued work is reached. Added in 0.1."""

    __module__ = "tether.lifecycle"


class ShuttingDown(Rejected):
    """The receiver stopped accepting work because it is shutting down. Added in 0.1."""

    __module__ = "tether.lifecycle"


# --------------------------------------------------------------------------------------
# Values


def new_request_id() -> str:
    """A fresh request id: 16 lowercase hex characters (64 random bits).

    Non-blocking, thread-safe; a new value on every call; never raises. The charset and
    length pass the ``X-Request-ID`` validation of tether's HTTP integrations, which
    already ended contexts do not affect (it takes none).

    Added in 0.1.
    """
    return secrets.token_hex(8)


def log_extra(ctx: Context) -> dict[str, str]:
    """The logging tags bound on ``ctx``: ``{"worker": ..., "request_id": ...}``.

    Only the keys that are bound appear. Use it as ``log.info("...",
    extra=log_extra(ctx))``; the lifecycle components tag their own records the same way.
    Non-blocking, thread-safe; a new dict on each call; works the same on a live or an
    already ended context (values outlive cancellation). Raises ``TypeError`` if ``ctx``
    is not a Context.

    Added in 0.1.
    """
    if type(ctx) is not Context:
        raise TypeError(f"tether: log_extra needs a tether.Context, got {type(ctx).__name__}")
    out: dict[str, str] = {}
    w = ctx.value(WORKER)
    if w is not None:
        out["worker"] = w
    r = ctx.value(REQUEST_ID)
    if r is not None:
        out["request_id"] = r
    return out


# --------------------------------------------------------------------------------------
# The drain context


def with_drain(ctx: Context, drain: Context) -> Context:
    """Bind ``drain`` as the drain context of the work started under ``ctx``.

    Returns a child of ``ctx`` (same cancellation, one more value). ``drain`` should be
    a context that is *not* cancelled when shutdown starts, only when the drain deadline
    passes; ``drain_scope`` reads it. The Supervisor does this for its components; call
    it yourself to run a ``WorkerPool``/``Scheduler`` with a grace period outside one.
    Non-blocking, thread-safe, and a new context on each call; an already ended ``ctx``
    or ``drain`` is accepted (work then gets no grace). Raises ``TypeError`` unless both
    are Contexts.

    Added in 0.1.
    """
    if type(drain) is not Context:
        raise TypeError(
            f"tether: with_drain needs a tether.Context as drain, got {type(drain).__name__}"
        )
    return _context.with_value(ctx, _DRAIN, drain)


def drain_scope(ctx: Context) -> Scope:
    """The context in-flight work should run under: ``ctx``'s values, ended by the drain.

    Returns a ``(work, cancel)`` scope. ``work`` keeps every value of ``ctx`` but is not
    cancelled when ``ctx`` is; it ends (cause ``DrainTimeout``, or whatever cause the
    drain context ended with) when the drain context bound by ``with_drain`` ends. With
    no drain context bound, ``work`` simply ends with ``ctx`` (no grace period). If the
    drain context already ended, ``work`` is born ended.

    Cancel the scope when the work is over: the callback it registers on the drain
    context is then removed (within moments, off the cancelling thread), so a scope
    per request or per item is fine. Non-blocking, thread-safe, a new scope on each
    call. Raises ``TypeError`` if ``ctx`` is not a Context.

    Added in 0.1.
    """
    if type(ctx) is not Context:
        raise TypeError(f"tether: drain_scope needs a tether.Context, got {type(ctx).__name__}")
    drain = ctx.value(_DRAIN)
    if drain is None:
        return with_cancel(ctx)
    scope = with_cancel(without_cancel(ctx))
    cancel = scope[1]

    def end() -> None:
        cancel(cause(drain))

    if drain.err() is not None:
        end()
    else:
        # Unregister from the drain context as soon as the scope ends, so that a scope
        # per request leaves nothing behind on the long-lived drain context.
        after_func(scope[0], after_func(drain, end))
    return scope


# --------------------------------------------------------------------------------------
# Helpers


def is_async(fn: object) -> bool:
    """True for coroutine functions (and partials of them)."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - an object with an async __call__
    )


def check_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not name:
        raise TypeError(f"tether: a {what} name must be a non-empty str, got {name!r:.40}")
    return name


def check_callable(fn: object, what: str) -> None:
    if not callable(fn):
        raise TypeError(
            f"tether: {what} must be a function taking a context, got {type(fn).__name__}"
        )


def positive_seconds(x: object, what: str, *, allow_none: bool = False) -> float | None:
    """Validate a positive finite duration (``None`` allowed when ``allow_none``)."""
    if x is None and allow_none:
        return None
    s = _context._seconds(x, what)
    if s <= 0:
        raise ValueError(f"tether: {what} must be positive, got {x!r:.40}")
    return s


def non_negative_seconds(x: object, what: str) -> float:
    s = _context._seconds(x, what)
    if s < 0:
        raise ValueError(f"tether: {what} must be >= 0, got {x!r:.40}")
    return s


def positive_int(x: object, what: str, *, minimum: int = 1) -> int:
    if type(x) is not int:
        raise TypeError(f"tether: {what} must be an int, got {type(x).__name__}")
    if x < minimum:
        raise ValueError(f"tether: {what} must be >= {minimum}, got {x}")
    return x


def start_thread(
    name: str,
    target: Callable[..., object],
    *args: Any,
    undo: Callable[[], object] | None = None,
) -> threading.Thread:
    """Start a daemon thread: a stuck worker must never keep the process from exiting.

    The lifecycle's one way to start a thread. If the thread cannot start (``RuntimeError:
    can't start new thread``, or any error from ``Thread.start``), ``undo()`` runs first —
    the caller's bookkeeping for the thread is rolled back — and then a ``RuntimeError``
    naming the thread is raised from the original error.
    """
    t = _threads.new(target, *args, name=name)
    try:
        t.start()
    except BaseException as e:
        if undo is not None:
            undo()
        if isinstance(e, RuntimeError):
            raise RuntimeError(f"tether: could not start thread {name!r}: {e}") from e
        raise
    return t


def is_fatal(e: BaseException) -> bool:
    """A ``BaseException`` that must reach the top (``SystemExit``, ``KeyboardInterrupt``).

    ``CancelledError`` is not fatal: it is an outcome of the work that raised it.
    """
    return not isinstance(e, Exception | asyncio.CancelledError)


class Fatal(Exception):
    """Carries a fatal ``BaseException`` out of a task without tearing down the loop.

    ``SystemExit``/``KeyboardInterrupt`` raised in an asyncio task escape
    ``run_until_complete`` and skip everything after it; wrapped in this, the task ends
    like any failed task and the receiver unwraps ``exc`` once its own shutdown is done.
    """

    def __init__(self, exc: BaseException) -> None:
        super().__init__(repr(exc))
        self.exc = exc


def unwrap(e: BaseException) -> BaseException:
    return e.exc if isinstance(e, Fatal) else e


async def call_async(fn: Callable[..., Any], *args: Any) -> Any:
    """``await fn(*args)``, with a fatal exception wrapped in ``Fatal`` (see there)."""
    try:
        return await fn(*args)
    except (asyncio.CancelledError, Exception):
        raise
    except BaseException as e:
        raise Fatal(e) from None


def thread_future(
    loop: asyncio.AbstractEventLoop, name: str, fn: Callable[..., T], *args: Any
) -> asyncio.Future[T]:
    """Run ``fn(*args)`` in a new daemon thread; a future of ``loop`` gets the outcome.

    Unlike ``run_in_executor``, nothing waits for the thread at interpreter exit, and a
    future that nobody awaits any more (the loop closed) is simply dropped.
    """
    fut: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if fut.done():
            return
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)

    def body() -> None:
        try:
            r = fn(*args)
        except BaseException as e:  # handed to the awaiting task, which decides
            out: tuple[bool, Any] = (False, e)
        else:
            out = (True, r)
        try:
            loop.call_soon_threadsafe(settle, *out)
        except RuntimeError:  # the loop is closed: nobody waits for this any more
            pass

    try:
        start_thread(name, body)
    except RuntimeError as e:  # no thread: the future fails, the awaiting task decides
        fut.set_exception(e)
    return fut


async def wait_until(futs: list[asyncio.Future[Any]], ctx: Context, *, first: bool = False) -> None:
    """Return when every future is done (``first``: any), or when ``ctx`` ends."""
    pending = {f for f in futs if not f.done()}
    if not pending or ctx.err() is not None or (first and len(pending) < len(futs)):
        return

    async def ended() -> None:
        await ctx.done()

    watcher = asyncio.ensure_future(ended())
    try:
        while pending and not watcher.done():
            _, pending = await asyncio.wait(
                {*pending, watcher}, return_when=asyncio.FIRST_COMPLETED
            )
            pending.discard(watcher)
            if first:
                break
    finally:
        if not watcher.done():
            watcher.cancel()
            await asyncio.wait({watcher})
