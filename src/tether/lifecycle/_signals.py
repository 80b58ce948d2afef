"""``signal_context``: Go's ``signal.NotifyContext``.

How a signal becomes a cancellation
-----------------------------------
Python runs a signal handler in the main thread, between two bytecodes of whatever the
main thread was doing — possibly while it holds the core's tree lock, an event loop
waker's lock or a ``threading.Event``'s condition, none of which is reentrant. So the
handler takes no lock and cancels nothing: it marks which contexts the signal ends and
puts them on a ``queue.SimpleQueue`` (whose ``put`` is documented as reentrant, safe in
signal handlers). One helper thread, ``tether-signals`` — started by the first
``signal_context`` and stopped with the last one — cancels them. The context ends a
few microseconds after the handler ran; waiting threads and tasks (an event loop asleep
in ``select`` in the main thread included) are woken by the ordinary cancellation.

The registry
------------
One handler per signal number (``_handle``) dispatches to every live signal context
registered for it, like Go's ``signal.Notify`` with several channels. ``_entries``
maps a signal to a tuple of entries; the tuple is replaced, never mutated, so the
handler always reads a consistent snapshot. ``_originals`` holds the handler that was
installed before ours, restored when the last context for that signal is stopped. Only
the main thread installs or restores handlers (Python's rule); a ``stop()`` from
another thread unregisters the context, and the next signal, finding nobody left,
restores the original handler itself and hands the signal to it.

Waking an event loop: on Linux a signal sent to the process interrupts the main thread's
``select``, so a loop asleep there runs the handler at once. A signal that lands on
another thread (``pthread_kill``, other platforms) only flags the main thread, which
would sleep on. So while an event loop in the main thread waits under a signal context
(``async with signal_context()``, ``Supervisor.run``), a wakeup fd (``set_wakeup_fd``)
makes any signal wake that loop — unless somebody else already set one.

Escalation: a signal that finds every registered context already ended (by an earlier
signal, or because its parent ended) means "shutdown is under way, hurry": the handler
restores the default action (``SIG_DFL``) and re-raises the signal, so a second Ctrl-C
or SIGTERM during a slow drain ends the process at once, killed by that signal.
"""

from __future__ import annotations

import os
import queue
import signal
import sys
import threading
import warnings
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, final

from .. import _threads
from .._context import Context, Scope, _derive, _site, background
from .._errors import LostCancelWarning

if TYPE_CHECKING:
    import asyncio

# This module is imported by `import tether` (for tether.signal_context): it must not
# import asyncio, which `wake_loop_on_signals` and `__aenter__` import when used.

__all__ = ["SignalReceived", "SignalScope", "StopFunc", "signal_context"]


class SignalReceived(Exception):
    """The cause of a context ended by a signal (``signal_context``, ``Supervisor``).

    ``signum`` is the signal number, ``name`` its name (``"SIGTERM"``); ``str()`` is
    ``"received SIGTERM"``. It is a cause, never raised by tether:
    ``tether.cause(ctx)`` returns it, and ``ctx.check()`` chains it as ``__cause__``
    of the ``Canceled`` it raises.

    Added in 0.1.
    """

    __module__ = "tether.lifecycle"

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = int(signum)
        try:
            self.name = signal.Signals(signum).name
        except ValueError:
            self.name = f"signal {signum}"

    def __str__(self) -> str:
        return f"received {self.name}"


_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None

_UNCATCHABLE = {getattr(signal, n) for n in ("SIGKILL", "SIGSTOP") if hasattr(signal, n)}


class _Entry:
    __slots__ = ("cancel", "ctx", "fired", "queue")

    def __init__(self, ctx: Context, cancel: Callable[..., None], q: queue.SimpleQueue[Any]):
        self.ctx = ctx
        self.cancel = cancel
        self.queue = q
        self.fired = 0  # the signal that fired it; written by the handler only


_lock = threading.Lock()  # serialises registry writers; the signal handler never takes it
# _lock protects the writes to the following; the handler reads them without it.
_entries: dict[int, tuple[_Entry, ...]] = {}
_originals: dict[int, _Handler] = {}  # per signal whose handler is (or should be) ours
_queue: queue.SimpleQueue[_Entry | None] | None = None  # the helper's inbox
_registered = 0  # entries registered over all signals (an entry counts once)


def _serve(q: queue.SimpleQueue[_Entry | None]) -> None:
    while True:
        e = q.get()
        if e is None:
            return
        e.cancel(SignalReceived(e.fired))
        del e


def _handle(signum: int, frame: FrameType | None) -> None:
    # Runs in the main thread between bytecodes: no locks, no logging, no cancellation.
    entries = _entries.get(signum, ())
    fired = False
    for e in entries:
        if not e.fired and e.ctx.err() is None:
            e.fired = signum
            e.queue.put(e)
            fired = True
    if fired:
        return
    if not entries:
        # Every signal context for it was stopped off the main thread: hand back.
        prev = _originals.pop(signum, signal.SIG_DFL)
        if prev is None:
            prev = signal.SIG_DFL
        signal.signal(signum, prev)
        if callable(prev):
            prev(signum, frame)
        elif prev == signal.SIG_DFL:
            signal.raise_signal(signum)
        return
    _escalate(signum)


def _escalate(signum: int) -> None:
    try:
        name = signal.Signals(signum).name
    except ValueError:  # pragma: no cover - real-time signals
        name = str(signum)
    try:
        os.write(2, f"tether: second {name} during shutdown: exiting now\n".encode())
    except OSError:  # pragma: no cover - stderr closed
        pass
    signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)


def _validate(signals: tuple[object, ...]) -> tuple[int, ...]:
    if not signals:
        signals = (signal.SIGINT, signal.SIGTERM)
    out: list[int] = []
    for s in signals:
        if isinstance(s, bool) or not isinstance(s, int):
            raise TypeError(
                "tether: signal_context takes signal numbers such as signal.SIGTERM, "
                f"got {type(s).__name__} {s!r:.40}"
            )
        try:
            sig = signal.Signals(s)
        except ValueError:
            raise ValueError(
                f"tether: {s} is not a signal number on this platform; use signal.SIGTERM, ..."
            ) from None
        if sig in _UNCATCHABLE:
            raise ValueError(f"tether: {sig.name} cannot be caught; a process cannot handle it")
        if sig not in out:
            out.append(sig)
    return tuple(out)


def _register(entry: _Entry, sigs: tuple[int, ...]) -> None:
    """Main thread only. Add the entry first, then install: a signal arriving in between
    is handled by the previous handler, never by ours with nobody registered."""
    with _lock:
        installed: list[int] = []
        try:
            for s in sigs:
                _entries[s] = (*_entries.get(s, ()), entry)
            for s in sigs:
                current = signal.getsignal(s)
                if current is not _handle:
                    _originals[s] = current
                    signal.signal(s, _handle)
                    installed.append(s)
        except BaseException:
            for s in sigs:
                _remove(entry, s)
            for s in installed:
                _restore(s)
            raise


def _remove(entry: _Entry, s: int) -> None:
    rest = tuple(e for e in _entries.get(s, ()) if e is not entry)
    if rest:
        _entries[s] = rest
    else:
        _entries.pop(s, None)


def _restore(s: int) -> None:
    """Main thread, registry empty for ``s``: put the original handler back."""
    if s not in _originals:
        return
    prev = _originals[s]
    if signal.getsignal(s) is _handle:
        signal.signal(s, signal.SIG_DFL if prev is None else prev)
    _originals.pop(s, None)


def _unregister(entry: _Entry, sigs: tuple[int, ...]) -> None:
    main = threading.current_thread() is threading.main_thread()
    with _lock:
        for s in sigs:
            _remove(entry, s)
            if main and s not in _entries:
                _restore(s)


def _acquire_helper() -> queue.SimpleQueue[_Entry | None]:
    global _queue, _registered
    with _lock:
        if _queue is None:
            q: queue.SimpleQueue[_Entry | None] = queue.SimpleQueue()
            _threads.start(_serve, q, name="tether-signals")
            _queue = q
        _registered += 1
        return _queue


def _release_helper() -> None:
    global _queue, _registered
    with _lock:
        _registered -= 1
        if _registered == 0 and _queue is not None:
            _queue.put(None)
            _queue = None


def _after_fork_in_child() -> None:
    global _queue
    # The forking thread holds _lock (taken by the `before` hook): release it here. The
    # helper thread did not survive fork(); start a new one if contexts remain, and move
    # the entries, which point at the old queue, to the new one.
    _lock.release()
    _queue = None
    if _registered:
        q: queue.SimpleQueue[_Entry | None] = queue.SimpleQueue()
        for entries in _entries.values():
            for e in entries:
                e.queue = q
        _threads.start(_serve, q, name="tether-signals")
        _queue = q


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_lock.acquire, after_in_parent=_lock.release, after_in_child=_after_fork_in_child
    )


def wake_loop_on_signals(loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
    """Make every signal wake ``loop`` (main thread only); returns the undo function.

    Does nothing (and undoing does nothing) off the main thread or when a wakeup fd is
    already set (by asyncio's ``add_signal_handler``, say).
    """
    if threading.current_thread() is not threading.main_thread():
        return _nothing
    import socket

    r, w = socket.socketpair()
    r.setblocking(False)
    w.setblocking(False)
    try:
        old = signal.set_wakeup_fd(w.fileno(), warn_on_full_buffer=False)
    except (ValueError, OSError):  # pragma: no cover - not the main interpreter
        r.close()
        w.close()
        return _nothing
    if old != -1:  # somebody else's: keep theirs
        signal.set_wakeup_fd(old)
        r.close()
        w.close()
        return _nothing

    def drain() -> None:
        try:
            while r.recv(4096):
                pass
        except OSError:
            pass

    loop.add_reader(r.fileno(), drain)

    def undo() -> None:
        if threading.current_thread() is threading.main_thread():
            current = signal.set_wakeup_fd(-1)
            if current != w.fileno():  # replaced since: put theirs back
                signal.set_wakeup_fd(current)
        try:
            loop.remove_reader(r.fileno())
        except (RuntimeError, ValueError):  # the loop is closed
            pass
        r.close()
        w.close()

    return undo


def _nothing() -> None:
    return None


@final
class StopFunc:
    """Stops a signal context: cancels it and restores the previous signal handlers.

    ``stop()`` is idempotent and thread-safe, never blocks, and raises nothing. Called
    on the main thread, it restores the handlers that were installed before (once no
    other signal context uses them) before returning; called from another thread, it
    unregisters the context at once and the next such signal restores the previous
    handler and hands the signal to it (Python lets only the main thread install
    handlers). Calling it after the context already ended (by a signal or its parent)
    still restores the handlers: always call it, or use ``with``.

    Added in 0.1.
    """

    __slots__ = ("_entry", "_scope", "_signals", "_stopped", "_undo_wakeup", "__weakref__")
    __module__ = "tether.lifecycle"
    _scope: Scope
    _entry: _Entry
    _signals: tuple[int, ...]
    _stopped: bool
    _undo_wakeup: Callable[[], None]

    def __init__(self) -> None:
        raise TypeError("tether: stop functions come from tether.signal_context()")

    def __call__(self) -> None:
        """Cancel the context and restore the previous handlers (see the class doc).

        Non-blocking, idempotent, thread-safe; fine after the context already ended;
        raises nothing.
        """
        with _lock:
            if self._stopped:
                return
            self._stopped = True
        # Unregister first: a signal arriving between the two must not find this context
        # already cancelled and take the "second signal" path (default action, re-raise),
        # which would end the process without running finally blocks or atexit.
        _unregister(self._entry, self._signals)
        self._scope[1]()
        _release_helper()

    def __del__(self) -> None:
        if not getattr(self, "_stopped", True) and not sys.is_finalizing():
            cf = self._scope[1]
            filename, line = _site(cf._code, cf._lasti)  # the signal_context() call
            warnings.warn_explicit(
                LostCancelWarning(
                    f"tether: the signal context {self._scope[0]!r}, created at "
                    f"{filename}:{line}, was garbage-collected without stop(); its signal "
                    "handlers stay installed. Call stop(), or use "
                    "`with tether.signal_context() as ctx:`."
                ),
                LostCancelWarning,
                filename,
                line,
            )

    def __repr__(self) -> str:
        names = ", ".join(signal.Signals(s).name for s in self._signals)
        state = "stopped" if self._stopped else "active"
        return f"<tether.lifecycle.StopFunc {state} for {names}>"


class SignalScope(tuple[Context, StopFunc]):
    """The ``(ctx, stop)`` pair returned by ``signal_context``; also a context manager.

    Unpack it (``ctx, stop = tether.signal_context()``) or enter it: ``with`` makes
    ``ctx`` current inside the block and calls ``stop()`` on exit; ``async with``
    additionally interrupts the current task when a signal arrives, and the block then
    raises ``Canceled`` with the ``SignalReceived`` as ``__cause__`` — exactly as
    ``async with tether.with_cancel(...)`` does. Entering does not block; a scope can be
    entered once (``RuntimeError`` otherwise).

    It is not a ``tether.Scope``: a Scope's second element only cancels, and ``stop``
    must also restore the signal handlers.

    Added in 0.1.
    """

    __slots__ = ()
    __module__ = "tether.lifecycle"

    @property
    def ctx(self) -> Context:
        """The context that a signal ends (``self[0]``).

        Non-blocking, thread-safe, idempotent (the same object every time), valid whether
        or not the context already ended; raises nothing.
        """
        return self[0]

    @property
    def stop(self) -> StopFunc:
        """Its stop function (``self[1]``).

        Non-blocking, thread-safe, idempotent (the same object every time), valid whether
        or not the context already ended; raises nothing.
        """
        return self[1]

    def __enter__(self) -> Context:
        return self[1]._scope.__enter__()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self[1]._scope.__exit__(exc_type, exc, tb)
        finally:
            self[1]()

    async def __aenter__(self) -> Context:
        import asyncio

        stop = self[1]
        ctx = await stop._scope.__aenter__()
        stop._undo_wakeup = wake_loop_on_signals(asyncio.get_running_loop())
        return ctx

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stop = self[1]
        try:
            await stop._scope.__aexit__(exc_type, exc, tb)
        finally:
            stop._undo_wakeup()
            stop()

    def __repr__(self) -> str:
        return f"<tether.lifecycle.SignalScope of {self[0]!r}>"


def signal_context(*signals: int, parent: Context = background()) -> SignalScope:  # noqa: B008
    """A child of ``parent`` that ends when one of ``signals`` arrives: Go's NotifyContext.

    ``signals`` default to ``SIGINT`` and ``SIGTERM``. Returns the ``(ctx, stop)`` pair
    (a ``SignalScope``, also a context manager). The first such signal cancels ``ctx``
    with a ``SignalReceived`` cause naming it (``tether.cause(ctx)``); ``ctx.err()`` is
    ``Canceled``. A signal that arrives when ``ctx`` has already ended — a second
    Ctrl-C, a second SIGTERM during a slow drain — restores the default action and
    re-raises itself: the process exits at once, killed by that signal (exit status
    ``-signum`` for a parent that waits on it, ``128 + signum`` in a shell).

    ``stop()`` (and leaving a ``with`` block) cancels ``ctx`` and restores the handlers
    installed before; call it on every path. Several signal contexts may be active at
    once: a signal ends all of them, and the previous handlers come back when the last
    one stops. If ``parent`` already ended, ``ctx`` is born ended, the handlers are still
    installed, and the first signal escalates.

    Does not block. Must be called from the main thread (Python runs signal handlers
    only there); the context itself may be passed to and waited on from any thread or
    event loop. Not idempotent: each call makes a new registration. The handler works under asyncio
    too — an event loop running in the main thread is woken by the cancellation.

    Raises ``RuntimeError`` off the main thread; ``TypeError`` for a non-int signal or a
    ``None``/non-Context parent; ``ValueError`` for an unknown signal number, ``SIGKILL``
    or ``SIGSTOP``.

    Added in 0.1.
    """
    sigs = _validate(signals)
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError(
            "tether: signal_context() must be called from the main thread (Python runs "
            "signal handlers only there); create it in main() and pass the context to "
            "your threads"
        )
    # _derive directly (not with_cancel): the creation site recorded for leak reports
    # and LostCancelWarning is then the caller's line, not this one.
    cf = _derive(parent, "signal_context", None, False, None)
    scope = Scope((cf._ctx, cf))
    q = _acquire_helper()
    entry = _Entry(scope[0], scope[1], q)
    try:
        _register(entry, sigs)
    except BaseException:
        scope[1]()
        _release_helper()
        raise
    stop: StopFunc = object.__new__(StopFunc)
    stop._scope = scope
    stop._entry = entry
    stop._signals = sigs
    stop._stopped = False
    stop._undo_wakeup = _nothing
    return tuple.__new__(SignalScope, (scope[0], stop))


signal_context.__module__ = "tether"  # exported as tether.signal_context too


def _active_signals() -> dict[int, int]:
    """For tests: how many contexts are registered per signal."""
    return {s: len(es) for s, es in _entries.items()}
