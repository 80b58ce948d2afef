"""The Supervisor: run a service's components, and stop them gracefully.

One event loop in the calling (main) thread runs the coroutine components as tasks and
the supervisor's own control flow; each plain-function component runs in a daemon
thread of its own, started by the loop and reported back to it. All waiting is done on
tether contexts, so the drain and close deadlines run on tether's clock (a
``FakeClock`` drives them in tests).

Contexts, from the parent down::

    parent ─ signal_context ─ trigger       ends: signal, failure, shutdown(), parent
           ─ without_cancel ─ root          ends: at the drain deadline at the latest
                              └ one per component, ends: in stop_after order
           ─ without_cancel ─ drain         ends: drain deadline (their in-flight work)
           ─ without_cancel ─ with_timeout  one per closer, made when it runs

Shutdown, in order: readiness off → lame duck (optional) → cancel each component's
context (cause: what triggered it) once those it stops after returned → wait for
components until the drain deadline → cancel the rest and the drain (cause
``DrainTimeout``) and wait up to ``close_timeout`` more, cancelling the tasks still
running ``min(0.5, close_timeout / 2)`` before its end → closers in reverse order of
registration, each with a fresh ``close_timeout`` context → exit code. Every wait is
on a tether context, so a ``FakeClock`` drives all of them.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NoReturn

from .._context import (
    CancelFunc,
    Context,
    Scope,
    background,
    cause,
    with_cancel,
    with_timeout,
    with_value,
    without_cancel,
)
from ._common import (
    LOG,
    WORKER,
    ComponentExited,
    ComponentFailed,
    DrainTimeout,
    ShutdownRequested,
    call_async,
    check_callable,
    check_name,
    is_async,
    is_fatal,
    non_negative_seconds,
    positive_seconds,
    thread_future,
    unwrap,
    wait_until,
    with_drain,
)
from ._signals import SignalScope, _nothing, signal_context, wake_loop_on_signals

__all__ = ["ShutdownReport", "Supervisor"]

_FORCE_WAIT = 0.5  # seconds of close_timeout kept for cancelled tasks to unwind

ComponentFunc = Callable[[Context], object] | Callable[[Context], Awaitable[object]]

_NEW, _STARTING, _RUNNING, _STOPPING, _STOPPED = (
    "new",
    "starting",
    "running",
    "stopping",
    "stopped",
)


@dataclass(frozen=True)
class ShutdownReport:
    """How a supervised run ended (``Supervisor.report``).

    ``exit_code`` is 0 for a clean shutdown, 1 if a component failed, a component or
    closer did not finish in time, or a closer raised. ``cause`` is what started the
    shutdown (``SignalReceived``, ``ComponentFailed``, ``ComponentExited``,
    ``ShutdownRequested``, or the parent context's cause). ``failed`` maps components
    that raised to their exception; ``unfinished`` names the components still running at
    the drain deadline; ``close_failed``/``close_unfinished`` the same for closers.

    Added in 0.1.
    """

    __module__ = "tether.lifecycle"

    exit_code: int
    cause: BaseException | None
    failed: dict[str, BaseException] = field(default_factory=dict)
    unfinished: tuple[str, ...] = ()
    close_failed: dict[str, BaseException] = field(default_factory=dict)
    close_unfinished: tuple[str, ...] = ()


class _Component:
    __slots__ = ("cancel", "done", "fn", "is_async", "name", "stop_after", "task")

    def __init__(self, name: str, fn: ComponentFunc, stop_after: tuple[_Component, ...]) -> None:
        self.name = name
        self.fn = fn
        self.is_async = is_async(fn)
        self.stop_after = stop_after  # stopped once these returned (or at the drain deadline)
        self.done: asyncio.Future[Any] | None = None
        self.task: asyncio.Task[Any] | None = None
        self.cancel: CancelFunc | None = None  # ends this component's ctx


class _Closer:
    __slots__ = ("fn", "is_async", "name", "timeout")

    def __init__(self, name: str, fn: ComponentFunc, timeout: float) -> None:
        self.name = name
        self.fn = fn
        self.timeout = timeout
        self.is_async = is_async(fn)


class Supervisor:
    """Runs named components under one lifecycle; stops them gracefully; an exit code.

    A component is ``fn(ctx)``, a plain function (run in a thread of its own) or a
    coroutine function (run as a task on the supervisor's event loop, in the thread that
    called ``run``), that serves until ``ctx`` ends and then returns — an ASGI server, a
    consumer, ``Scheduler.arun``, ``WorkerPool.run``. Its ``ctx`` carries ``WORKER``
    (the component's name) and the drain context (see ``drain_scope``).

    ``run()`` starts them all, flips ``ready()`` on, and waits. Shutdown starts on the
    first of: one of ``signals`` (default SIGINT, SIGTERM; a second one exits at once),
    a component raising (exit code 1) or returning early, ``shutdown()``, or the parent
    context ending. Then, in order: ``ready()`` turns off and no new component starts;
    after ``lame_duck`` seconds (time for load balancers to notice) the components'
    ``ctx`` are cancelled, with the trigger as cause — each one once the components
    it was added ``stop_after`` returned (all at once if none); components get
    ``drain_timeout``
    seconds to finish their in-flight work and return; then their drain context ends
    (cause ``DrainTimeout``); the coroutine components still running
    ``close_timeout - min(0.5, close_timeout / 2)`` seconds later are cancelled, and
    what still runs at ``close_timeout`` is logged and left behind; finally the
    closers registered with ``on_close`` run in reverse order, each with a fresh context
    (``without_cancel`` + its own timeout). What did not finish is logged; the exit code
    is 0 only if everything stopped cleanly. Worst-case time from trigger to return:
    ``lame_duck + drain_timeout + close_timeout + sum of closer timeouts``.

    Added in 0.1.
    """

    __module__ = "tether.lifecycle"

    def __init__(
        self,
        *,
        drain_timeout: float = 30.0,
        close_timeout: float = 5.0,
        lame_duck: float = 0.0,
        signals: Iterable[int] = (signal.SIGINT, signal.SIGTERM),
        name: str = "service",
        logger: logging.Logger | None = None,
    ) -> None:
        dt = positive_seconds(drain_timeout, "drain_timeout")
        ct = positive_seconds(close_timeout, "close_timeout")
        assert dt is not None
        assert ct is not None
        self._drain_timeout = dt
        self._close_timeout = ct
        self._lame_duck = non_negative_seconds(lame_duck, "lame_duck")
        if isinstance(signals, int):
            raise TypeError("tether: signals must be a sequence, e.g. (signal.SIGTERM,)")
        self._signals = tuple(signals)
        self._name = check_name(name, "supervisor")
        self._log = logger if logger is not None else LOG
        self._lock = threading.Lock()
        # _lock protects the following.
        self._state = _NEW
        self._ready = False
        self._components: dict[str, _Component] = {}
        self._closers: list[_Closer] = []
        self._fire: CancelFunc | None = None  # ends the trigger context while running
        self._pending: BaseException | None = None  # a shutdown() that came before run()
        self._report: ShutdownReport | None = None
        self._failed: dict[str, BaseException] = {}

    # -- configuration -------------------------------------------------------------------

    def add(self, name: str, fn: ComponentFunc, *, stop_after: str | Iterable[str] = ()) -> None:
        """Register component ``name``: ``fn(ctx)``, a plain or a coroutine function.

        ``stop_after`` names components added before this one whose shutdown comes
        first: this component's ``ctx`` is cancelled only once each of them returned
        (or at the drain deadline, whichever comes first). Use it for the consumers of
        another component's work: ``sup.add("api", serve)``, then ``sup.add("pool",
        pool.run, stop_after="api")`` — the pool keeps accepting while the API drains
        its in-flight requests. Naming only earlier components keeps the order free of
        cycles.

        Non-blocking, thread-safe; not idempotent (a name can be added once). Only before
        ``run()``: components all start together. No context is involved, so none can
        have already ended. Raises ``TypeError`` for a non-callable or a bad name,
        ``ValueError`` for a duplicate name or a ``stop_after`` name not added yet,
        ``RuntimeError`` once ``run()`` started.

        Added in 0.1. Changed: ``stop_after``.
        """
        check_name(name, "component")
        check_callable(fn, "a component")
        after = (stop_after,) if isinstance(stop_after, str) else tuple(stop_after)
        for a in after:
            check_name(a, "stop_after component")
        with self._lock:
            if self._state != _NEW:
                raise RuntimeError(
                    "tether: components are added before run(); start work from inside a "
                    "component instead"
                )
            if name in self._components:
                raise ValueError(f"tether: a component named {name!r} exists already")
            missing = [a for a in after if a not in self._components]
            if missing:
                raise ValueError(
                    f"tether: stop_after names {', '.join(map(repr, missing))}, not added "
                    "yet; add the components that must stop first before this one"
                )
            deps = tuple(self._components[a] for a in after)
            self._components[name] = _Component(name, fn, deps)

    def on_close(self, name: str, fn: ComponentFunc, *, timeout: float | None = None) -> None:
        """Register closer ``name``: ``fn(ctx)`` runs at the end of shutdown.

        Closers run after the components stopped, one at a time, in reverse order of
        registration (register a resource's closer right after opening it), each with a
        fresh context: the parent's values, not cancelled by the shutdown, ending after
        ``timeout`` seconds (default ``close_timeout``). A plain function runs in a
        thread, a coroutine function on the loop; it runs even if the context it would
        have been derived from already ended. Non-blocking, thread-safe, not
        idempotent (each call adds one); allowed before ``run()`` and until it returns (a
        component may register what it opened; one registered during the close phase
        runs after the others). Raises ``RuntimeError`` once ``run()`` returned (close
        it yourself then), ``TypeError``/``ValueError`` for bad arguments.

        Added in 0.1.
        """
        check_name(name, "closer")
        check_callable(fn, "a closer")
        t = positive_seconds(timeout, "timeout", allow_none=True)
        with self._lock:
            if self._state == _STOPPED:
                raise RuntimeError(
                    "tether: the supervisor already closed its resources; close this one yourself"
                )
            self._closers.append(_Closer(name, fn, self._close_timeout if t is None else t))

    # -- state ---------------------------------------------------------------------------

    def ready(self) -> bool:
        """True while the service should receive traffic: started and not shutting down.

        For a readiness probe: ``200 if sup.ready() else 503``. Non-blocking,
        thread-safe, idempotent; ``False`` before ``run()`` started every component and
        from the moment shutdown starts (already-ended parent included). Raises nothing.

        Added in 0.1.
        """
        return self._ready

    @property
    def state(self) -> str:
        """``"new"``, ``"starting"``, ``"running"``, ``"stopping"`` or ``"stopped"``.

        Non-blocking, thread-safe, idempotent; raises nothing. A supervisor whose
        context already ended reads ``"stopping"`` until ``run()`` returns.

        Added in 0.1.
        """
        return self._state

    @property
    def report(self) -> ShutdownReport | None:
        """The ``ShutdownReport`` once ``run()`` returned, else ``None``.

        Non-blocking, thread-safe, idempotent (the same object every time); raises
        nothing. Valid however the run ended, whether or not a context already ended.

        Added in 0.1.
        """
        return self._report

    def shutdown(self, cause: BaseException | None = None) -> None:
        """Start a graceful shutdown (cause: ``cause`` or ``ShutdownRequested()``).

        Non-blocking: returns at once, ``run()`` does the work. Idempotent (the first
        trigger wins, as with ``cancel``) and thread-safe: call it from a component, a
        thread, a signal-free test. Before ``run()``, it makes ``run()`` start nothing
        and go straight to the close phase; after shutdown already started or the run
        ended, it does nothing. Raises ``TypeError`` if ``cause`` is not an exception.

        Added in 0.1.
        """
        if cause is not None and not isinstance(cause, BaseException):
            raise TypeError(
                f"tether: cause must be an exception or None, got {type(cause).__name__}"
            )
        c = cause if cause is not None else ShutdownRequested()
        with self._lock:
            fire = self._fire
            if fire is None:
                if self._state == _NEW and self._pending is None:
                    self._pending = c
                return
        fire(c)

    # -- running -------------------------------------------------------------------------

    def main(self, parent: Context = background()) -> NoReturn:  # noqa: B008
        """``sys.exit(self.run(parent))``: the last line of a service's ``main``.

        Blocks until the service stopped, then exits the process with the exit code
        (raises ``SystemExit``). Same thread rule (the main thread, with signals; thread-safe
        otherwise), errors and ended-parent behaviour as ``run()``; runs once, like it.

        Added in 0.1.
        """
        sys.exit(self.run(parent))

    def run(self, parent: Context = background()) -> int:  # noqa: B008
        """Run the components until shutdown, shut down gracefully, return the exit code.

        Blocks the calling thread: it runs a new event loop there for the whole life of
        the service. With ``signals`` (the default) it must be the main thread; with
        ``signals=()`` any thread that runs no event loop. If ``parent`` already ended
        (or ``shutdown()`` came first), each component is still called once, with its
        ``ctx`` already ended, so it drains or reports what it accepted before (a
        pool's queue); then the closers run. Runs once (a second call
        raises ``RuntimeError``); thread-safe. Raises ``RuntimeError`` off the main thread
        with signals or inside a running event loop (use ``arun``), ``TypeError`` for a
        non-Context parent; a ``BaseException`` that is
        not an ``Exception`` (``SystemExit`` from a component or closer, on a thread or
        on the loop) is re-raised after the whole shutdown, a ``SystemExit`` with the
        report's exit code. Component errors are not raised: they are logged and give
        exit code 1.

        Added in 0.1.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError(
                "tether: Supervisor.run() blocks and runs its own event loop; inside a "
                "running loop, use `await sup.arun()`"
            )
        self._check_thread("run")
        loop = asyncio.new_event_loop()
        try:
            main = loop.create_task(self.arun(parent), name=f"tether-supervisor-{self._name}")
            return loop.run_until_complete(main)
        finally:
            try:
                _cancel_leftovers(loop)
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    async def arun(self, parent: Context = background()) -> int:  # noqa: B008
        """``run()`` on the running event loop: for services whose ``main`` is async.

        Suspends the calling task (never blocks the loop) until shutdown completed;
        returns the exit code. Same rules as ``run()``: once only (``RuntimeError``
        after), main thread if ``signals``, an already ended parent still calls each
        component with an ended ctx. Thread-safe. If the awaiting task is cancelled (a
        sibling in a ``TaskGroup`` failed), the shutdown runs in full — drain, closers,
        report, within the same deadlines — and then ``CancelledError`` propagates.
        Raises ``TypeError`` for a non-Context parent, ``RuntimeError`` as above.

        Added in 0.1.
        """
        if type(parent) is not Context:
            raise TypeError(
                f"tether: run needs a tether.Context parent, got {type(parent).__name__}; "
                "pass tether.background()"
            )
        self._check_thread("arun")
        with self._lock:
            if self._state != _NEW:
                raise RuntimeError("tether: a Supervisor runs once; make a new one")
            self._state = _STARTING
            comps = list(self._components.values())
        loop = asyncio.get_running_loop()
        try:
            sig: SignalScope | Scope
            sig = (
                signal_context(*self._signals, parent=parent)
                if self._signals
                else with_cancel(parent)
            )
        except BaseException:
            self._state = _STOPPED
            raise
        sigctx = sig[0]
        undo_wakeup = wake_loop_on_signals(loop) if self._signals else _nothing
        trigger, fire = with_cancel(sigctx)
        root, cancel_root = with_cancel(without_cancel(parent))
        drain, cancel_drain = with_cancel(without_cancel(parent))
        cancelled = False  # the task awaiting arun() was cancelled from outside
        try:
            with self._lock:
                self._fire = fire
                pending = self._pending
            if pending is not None:
                fire(pending)
            base = with_drain(root, drain)
            # Every component is called, even when shutdown came first (a shutdown() or
            # an ended parent before run()): it then starts with its ctx already ended,
            # and drains or reports what it accepted before run() (a pool's queue).
            early = trigger.err() is not None
            for comp in comps:
                cctx, comp.cancel = with_cancel(with_value(base, WORKER, comp.name))
                if early:
                    comp.cancel(cause(trigger))
                self._start(loop, comp, cctx, fire)
            with self._lock:
                if trigger.err() is None:
                    self._state = _RUNNING
                    self._ready = True
            if comps and trigger.err() is None:
                self._log.info(
                    "%s started: %s",
                    self._name,
                    ", ".join(c.name for c in comps),
                    extra={"worker": self._name, "event": "started"},
                )
            try:
                await trigger.done()
            except asyncio.CancelledError:
                # Cancelled from outside (a sibling in a TaskGroup failed): shut down
                # all the same — drain, closers, report — then let the cancellation on.
                cancelled = True
                fire(ShutdownRequested("the task running the supervisor was cancelled"))
                _uncancel()
            shut = asyncio.ensure_future(
                self._shut_down(trigger, cancel_root, cancel_drain, comps, parent)
            )
            while True:
                try:
                    report = await asyncio.shield(shut)
                    break
                except asyncio.CancelledError:
                    if shut.cancelled():
                        raise
                    cancelled = True  # the shutdown is bounded by its deadlines: finish it
                    _uncancel()
        finally:
            with self._lock:
                self._fire = None
                self._ready = False
                self._state = _STOPPED
            cancel_root()
            cancel_drain()
            for comp in comps:
                if comp.cancel is not None:
                    comp.cancel()
            fire()
            undo_wakeup()
            sig[1]()
        if cancelled:
            raise asyncio.CancelledError()
        for exc in [*report.failed.values(), *report.close_failed.values()]:
            if isinstance(exc, SystemExit):
                # The exit code the report states: a SystemExit(0) in one component
                # never hides another one's failure.
                raise SystemExit(report.exit_code) from exc
            if is_fatal(exc):
                raise exc  # KeyboardInterrupt: never swallowed
        return report.exit_code

    def _check_thread(self, what: str) -> None:
        if self._signals and threading.current_thread() is not threading.main_thread():
            raise RuntimeError(
                f"tether: Supervisor.{what}() handles signals, which Python delivers only "
                "to the main thread; call it from the main thread, or pass signals=() to "
                "Supervisor(...) and stop it with shutdown() or by ending its parent context"
            )

    def _start(
        self, loop: asyncio.AbstractEventLoop, comp: _Component, ctx: Context, fire: CancelFunc
    ) -> None:
        if comp.is_async:
            task = loop.create_task(call_async(comp.fn, ctx), name=f"tether-component-{comp.name}")
            comp.task = task
            comp.done = task
        else:
            comp.done = thread_future(
                loop, f"component-{comp.name}", _call_sync, "component", comp.name, comp.fn, ctx
            )
        comp.done.add_done_callback(lambda f: self._component_done(comp, f, fire))

    def _component_done(self, comp: _Component, fut: asyncio.Future[Any], fire: CancelFunc) -> None:
        extra = {"worker": comp.name}
        stopping = self._state != _RUNNING
        if fut.cancelled():
            if stopping:  # forced at the end of the drain: reported as unfinished
                self._log.warning(
                    "component %s was cancelled", comp.name, extra={**extra, "event": "cancelled"}
                )
                return
            exc: BaseException | None = asyncio.CancelledError(
                f"component {comp.name!r} was cancelled from outside the supervisor"
            )
        else:
            e = fut.exception()
            exc = None if e is None else unwrap(e)
        if exc is not None:
            with self._lock:
                self._failed[comp.name] = exc
            self._log.error(
                "component %s failed: %r",
                comp.name,
                exc,
                exc_info=exc,
                extra={**extra, "event": "component_failed"},
            )
            failed = ComponentFailed(comp.name)
            failed.__cause__ = exc
            fire(failed)
        elif not stopping:
            self._log.warning(
                "component %s returned before shutdown; shutting down",
                comp.name,
                extra={**extra, "event": "component_exited"},
            )
            fire(ComponentExited(comp.name))
        else:
            self._log.info(
                "component %s stopped", comp.name, extra={**extra, "event": "component_stopped"}
            )

    async def _shut_down(
        self,
        trigger: Context,
        cancel_root: CancelFunc,
        cancel_drain: CancelFunc,
        comps: list[_Component],
        parent: Context,
    ) -> ShutdownReport:
        why = cause(trigger)
        with self._lock:
            self._state = _STOPPING
            self._ready = False
        self._log.warning(
            "%s shutting down: %s",
            self._name,
            why,
            extra={"worker": self._name, "event": "shutdown_started", "cause": str(why)},
        )
        if self._lame_duck > 0:
            with with_timeout(background(), self._lame_duck) as lame:
                await lame.done()
        futs = [c.done for c in comps if c.done is not None]
        with with_timeout(background(), self._drain_timeout) as deadline:
            # Stop the components in order: each once those it stops after returned.
            while True:
                for c in comps:
                    if c.cancel is not None and all(_finished(d) for d in c.stop_after):
                        c.cancel(why)
                left = [f for f in futs if not f.done()]
                if not left or deadline.err() is not None:
                    break
                await wait_until(left, deadline, first=True)
        cancel_root(why)  # the drain deadline passed: the rest stop now, in any order
        late = [c for c in comps if c.done is not None and not c.done.done()]
        if late:
            cancel_drain(DrainTimeout(f"the drain deadline ({self._drain_timeout:g}s) passed"))
            for c in late:
                self._log.error(
                    "component %s did not finish within the drain deadline (%gs)",
                    c.name,
                    self._drain_timeout,
                    extra={"worker": c.name, "event": "drain_timeout"},
                )
            # close_timeout is the whole grace: the last part of it (at most _FORCE_WAIT)
            # is kept for the coroutines cancelled at its end to unwind.
            force = min(_FORCE_WAIT, self._close_timeout / 2)
            with with_timeout(background(), self._close_timeout) as grace:
                with with_timeout(grace, self._close_timeout - force) as soft:
                    await wait_until(futs, soft)
                tasks = [c.task for c in late if c.task is not None and not c.task.done()]
                for t in tasks:  # coroutines can be forced; threads cannot
                    t.cancel()
                if tasks:
                    await wait_until(list(tasks), grace)
            for c in late:
                if c.done is not None and not c.done.done():
                    self._log.error(
                        "component %s still running: abandoned",
                        c.name,
                        extra={"worker": c.name, "event": "component_abandoned"},
                    )
        close_failed, close_unfinished = await self._close(parent)
        with self._lock:
            failed = dict(self._failed)
        unfinished = tuple(c.name for c in late)
        code = _exit_code(
            [*failed.values(), *close_failed.values()], bool(unfinished or close_unfinished)
        )
        report = ShutdownReport(
            exit_code=code,
            cause=why,
            failed=failed,
            unfinished=unfinished,
            close_failed=close_failed,
            close_unfinished=close_unfinished,
        )
        self._report = report
        log = self._log.info if code == 0 else self._log.error
        log(
            "%s stopped (exit code %d)%s%s%s",
            self._name,
            code,
            f"; failed: {', '.join(failed)}" if failed else "",
            f"; did not finish: {', '.join(unfinished + close_unfinished)}"
            if unfinished or close_unfinished
            else "",
            f"; close failed: {', '.join(close_failed)}" if close_failed else "",
            extra={
                "worker": self._name,
                "event": "stopped",
                "exit_code": code,
                "failed": sorted(failed),
                "unfinished": list(unfinished + close_unfinished),
            },
        )
        return report

    async def _close(self, parent: Context) -> tuple[dict[str, BaseException], tuple[str, ...]]:
        loop = asyncio.get_running_loop()
        failed: dict[str, BaseException] = {}
        unfinished: list[str] = []
        with self._lock:
            closers = list(reversed(self._closers))
        done_names: set[int] = set()
        while closers:
            for cl in closers:
                done_names.add(id(cl))
                base = with_value(without_cancel(parent), WORKER, cl.name)
                with with_timeout(base, cl.timeout) as cctx:
                    fut: asyncio.Future[Any]
                    if cl.is_async:
                        fut = loop.create_task(
                            call_async(cl.fn, cctx), name=f"tether-close-{cl.name}"
                        )
                    else:
                        fut = thread_future(
                            loop, f"close-{cl.name}", _call_sync, "closer", cl.name, cl.fn, cctx
                        )
                    await wait_until([fut], cctx)
                extra = {"worker": cl.name}
                if not fut.done():
                    fut.cancel()
                    unfinished.append(cl.name)
                    self._log.error(
                        "closer %s did not finish within %gs",
                        cl.name,
                        cl.timeout,
                        extra={**extra, "event": "close_timeout"},
                    )
                elif (exc := fut.exception()) is not None:
                    exc = unwrap(exc)
                    failed[cl.name] = exc
                    self._log.error(
                        "closer %s failed: %r",
                        cl.name,
                        exc,
                        exc_info=exc,
                        extra={**extra, "event": "close_failed"},
                    )
                else:
                    self._log.info("closed %s", cl.name, extra={**extra, "event": "closed"})
            # A closer (or a late component) may have registered more: close those too.
            with self._lock:
                closers = [c for c in reversed(self._closers) if id(c) not in done_names]
        return failed, tuple(unfinished)

    def __repr__(self) -> str:
        with self._lock:
            names = ", ".join(self._components)
        return f"<tether.lifecycle.Supervisor {self._name!r} {self._state} [{names}]>"


def _call_sync(what: str, name: str, fn: Callable[[Context], Any], ctx: Context) -> object:
    r = fn(ctx)
    if asyncio.iscoroutine(r):
        r.close()
        raise TypeError(
            f"tether: {what} {name!r} returned a coroutine; make it an `async def` "
            "function so the supervisor runs it on its event loop"
        )
    return r


def _finished(c: _Component) -> bool:
    return c.done is None or c.done.done()


def _exit_code(failed: list[BaseException], other_trouble: bool) -> int:
    """0 only if nothing went wrong; a component's ``SystemExit(n)`` sets a code n != 0.

    A ``SystemExit`` with a success code (0, ``None``) is a component asking the
    service to stop, not a failure; it never turns a run in which something else
    failed into exit code 0.
    """
    codes = []
    trouble = other_trouble
    for exc in failed:
        if isinstance(exc, SystemExit):
            if exc.code is None or exc.code == 0:
                continue
            codes.append(exc.code if isinstance(exc.code, int) else 1)
        trouble = True
    if not trouble:
        return 0
    return codes[0] if codes else 1


def _uncancel() -> None:
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what the shutdown abandoned, give it one turn of the loop, and no more.

    Those tasks were already given their whole grace (and reported unfinished);
    waiting for them again would stretch the documented worst case.
    """
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    if not tasks:
        return
    for t in tasks:
        t.cancel()
    loop.run_until_complete(asyncio.sleep(0))
