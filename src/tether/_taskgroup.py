"""errgroup for asyncio: ``TaskGroup`` and its ``TaskHandle``.

The same contract as ``Group`` (see ``_group``'s docstring for what happens to errors,
fatal exceptions and the parent's cause), plus what asyncio makes possible: tasks *can*
be interrupted, so when ``g.ctx`` ends every running task of the group is cancelled, as
if each ran inside ``async with g.ctx``: a task interrupted that way (and that lets the
``CancelledError`` out) finishes with ``g.ctx``'s error (``Canceled`` or
``DeadlineExceeded``, chained to the cause) — not with ``CancelledError``. The body of
``async with`` is interrupted the same way, as ``asyncio.TaskGroup`` does.

One waiter watches ``g.ctx`` for the whole group (not one per task): when it ends, from
whatever thread, the group's ``_abort`` is posted to the loop through the loop's batched
waker, and cancels what is still running. Everything else runs on the loop's thread, so
a ``TaskGroup`` needs no lock; its methods check that they are called there.

This module imports asyncio lazily (on the first ``go``/``async with``), so that
``import tether`` does not.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Coroutine, Generator
from contextvars import Context as _CVContext
from contextvars import Token, copy_context
from types import CoroutineType, TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar, TypeVarTuple, final

from . import _context
from ._context import CancelFunc, Context, _current, _derive, _fresh_error
from ._errors import ContextError
from ._group import _check_flag, _check_limit, _limit_zero, _reraise, _reraise_over
from ._outcome import Outcome
from ._thread import _call_failed, _not_a_function

if TYPE_CHECKING:
    from asyncio import AbstractEventLoop, Future, Task

    from ._aio import _Waker

__all__ = ["TaskGroup", "TaskHandle"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

# Bound on first use (TaskGroup._bind), so that importing this module imports no asyncio.
_new = object.__new__
_get_running_loop: Callable[[], AbstractEventLoop | None] | None = None
_CancelledError: type[BaseException] = BaseException  # replaced by asyncio's on first use


def _load_asyncio() -> Callable[[], AbstractEventLoop | None]:
    global _get_running_loop, _CancelledError
    from asyncio import CancelledError
    from asyncio.events import _get_running_loop as grl

    _CancelledError = CancelledError
    _get_running_loop = grl
    return grl


@final
class TaskHandle(Generic[T]):
    """One task of a ``TaskGroup``: await it for its result. From ``TaskGroup.go``.

    ``await handle`` returns the task's value or raises its exception (a task that
    ``g.ctx``'s end interrupted raises ``g.ctx``'s error); ``done()`` polls;
    ``result()`` reads the outcome without waiting. The group owns the task: there is
    no ``cancel()`` (cancel the group's context), and cancelling a coroutine that
    awaits the handle does not cancel the task.

    Added in 0.1.
    """

    # Hot fields are slots; the rarely set ones live in a lazily made __dict__ and read
    # their class defaults until set (one allocation less per task: go() is hot).
    __slots__ = ("__dict__", "_done", "_exc", "_group", "_task", "_value")
    __module__ = "tether"

    _group: TaskGroup
    _task: Task[T] | None
    _done: bool
    _value: T | None  # set when done
    _exc: BaseException | None  # set when done
    _pending: tuple[Coroutine[Any, Any, T], _CVContext | None] | None = None  # queued
    _waiters: list[Future[None]] | None = None  # awaiting before it finished
    _interrupted: bool = False  # the group cancelled the task because g.ctx ended

    def __init__(self) -> None:
        raise TypeError("tether: task handles come from TaskGroup.go()/try_go()/ago()")

    def done(self) -> bool:
        """True once the task has finished (returned, raised or was cancelled).

        Non-blocking, idempotent (never goes back to False), never raises. Thread-safe
        to call from any thread, but the answer is only stable on the group's loop. A
        handle still queued for a slot is not done; whether ``g.ctx`` already ended does
        not matter.
        """
        return self._done

    def result(self) -> T:
        """The task's value, or raise its exception; the task must have finished.

        Non-blocking: it never waits (``await`` the handle to wait). Idempotent: every
        call returns the same value or raises the same exception instance. Call it on
        the group's loop (not thread-safe). A task that ``g.ctx``'s end interrupted
        (it had already ended, or ended while the task ran) raises ``g.ctx``'s error.
        Raises the task's exception, ``CancelledError`` if something other than the
        group cancelled it, and ``asyncio.InvalidStateError`` if it has not finished.
        """
        if not self._done:
            from asyncio import InvalidStateError

            raise InvalidStateError("tether: the task has not finished; await the handle")
        e = self._exc
        if e is not None:
            raise e
        return self._value  # type: ignore[return-value]

    def __await__(self) -> Generator[Any, None, T]:
        """Suspend until the task finishes; return its value or raise its exception.

        Blocks (suspends) only the awaiting coroutine, on the group's loop (not
        thread-safe: await it on that loop). Idempotent: it can be awaited any number
        of times, by any number of coroutines, and gives the same outcome. Cancelling
        the awaiting coroutine does not cancel the task. A task interrupted because
        ``g.ctx`` already ended or ended while it ran raises ``g.ctx``'s error. Raises
        what ``result()`` raises.
        """
        if not self._done:
            loop = self._group._loop
            assert loop is not None
            fut: Future[None] = loop.create_future()
            ws = self._waiters
            if ws is None:
                self._waiters = [fut]
            else:
                ws.append(fut)
            try:
                yield from fut.__await__()
            finally:
                ws = self._waiters
                if ws is not None and fut in ws:
                    ws.remove(fut)
        e = self._exc
        if e is not None:
            raise e
        return self._value  # type: ignore[return-value]

    # -- internals (loop thread) -------------------------------------------------------

    def _interrupt(self) -> None:
        t = self._task
        if t is not None and not self._interrupted and not t.done():
            self._interrupted = True
            from . import _aio  # loaded: the group runs on a loop

            d = _aio.group_cancels  # a scope inside answers it with its error
            d[t] = d.get(t, 0) + 1
            t.cancel()

    def __repr__(self) -> str:
        if not self._done:
            state = "queued" if self._pending is not None else "running"
        elif self._exc is not None:
            state = f"failed {type(self._exc).__name__}"
        else:
            state = "done"
        return f"<tether.TaskHandle {state} in {self._group!r}>"


@final
class TaskGroup:
    """errgroup for asyncio: run coroutines as tasks, wait, get the first error.

    ``g = tether.TaskGroup(ctx)`` derives ``g.ctx`` from ``ctx``. ``g.go(fn, *args)``
    is a plain (non-async) call: it starts ``fn(g.ctx, *args)`` as a task and returns
    its ``TaskHandle`` (await it for the result). ``await g.wait()`` waits for every
    task, cancels ``g.ctx`` and raises the first error; leaving ``async with`` does the
    same::

        async with tether.TaskGroup(ctx, limit=8) as g:
            handles = [g.go(fetch, url) for url in urls]
        pages = [h.result() for h in handles]

    Semantics are ``Group``'s (errgroup's): the first ``Exception`` cancels ``g.ctx``
    with itself as the cause and is what ``wait()`` and the block raise, itself (not an
    ``ExceptionGroup``); ``g.ctx`` is cancelled when ``wait()`` returns, success or
    not; ``cancel_on_error=False`` runs every task to completion and raises all errors
    in an ``ExceptionGroup``; ``KeyboardInterrupt``/``SystemExit`` are never swallowed
    (they cancel ``g.ctx`` and are raised bare, first: see ``Group`` for why); the
    parent is never touched.
    A group may be reused after ``wait()``, as errgroup (the new tasks see the ended
    context).

    What asyncio adds:

    - when ``g.ctx`` ends (first error, parent cancelled or past its deadline), every
      running task is cancelled, and one started afterwards is cancelled at its first
      suspension; such a task finishes with ``g.ctx``'s error (``Canceled`` /
      ``DeadlineExceeded``), which is what its handle raises. A task cancelled by
      someone else finishes with ``CancelledError``, which is not an error of the group.
    - the body of ``async with`` is interrupted too (as ``asyncio.TaskGroup`` does);
      the block then raises the first error, or ``g.ctx``'s error if no task failed.
      A cancellation of the body from elsewhere cancels ``g.ctx`` (with the
      ``CancelledError`` as cause), the block still waits for the tasks, then re-raises
      ``CancelledError`` unless a task failed. ``task.cancelling()`` is restored.
    - ``limit``: ``go`` cannot block (it is not async), so a task over the limit is
      queued, first come first served, and started when a slot frees; ``await g.ago(...)``
      waits for the slot instead (back-pressure for producers); ``try_go`` returns
      ``None``.

    Each task runs in a copy of the caller's ``contextvars`` with ``tether.current()``
    set to ``g.ctx``; so does the body of ``async with``. A group belongs to the event
    loop of its first ``go`` or ``async with``; call its methods on that loop.

    Added in 0.1.
    """

    __slots__ = (
        "_outcome",
        "_body_active",
        "_body_interrupted",
        "_caller_cancelled",
        "_cancel",
        "_ctx",
        "_entry_cancelling",
        "_limit",
        "_loop",
        "_parent_task",
        "_queue",
        "_running",
        "_tasks",
        "_done_cb",
        "_token",
        "_waiters",
        "_waker",
        "_watch",
        "__weakref__",
    )
    __module__ = "tether"

    _ctx: Context
    _cancel: CancelFunc
    _limit: int | None
    _loop: AbstractEventLoop | None
    _waker: _Waker | None
    _watch: Callable[[], None] | None  # registered on g.ctx's owner while bound
    _running: int  # tasks started (or slots granted to ago) and not finished
    _queue: deque[TaskHandle[Any] | Future[None]]  # waiting for a slot, FIFO
    _tasks: dict[Task[Any], TaskHandle[Any]]  # running tasks and their handles
    _done_cb: Callable[[Task[Any]], None]  # self._on_task_done, bound once
    _outcome: Outcome
    _waiters: list[Future[None]]  # wait() calls, resolved when nothing runs
    _parent_task: Task[Any] | None
    _body_active: bool
    _body_interrupted: bool
    _entry_cancelling: int
    _caller_cancelled: bool  # the body or a wait() was cancelled from outside
    _token: Token[Context] | None

    def __init__(
        self, ctx: Context, limit: int | None = None, cancel_on_error: bool = True
    ) -> None:
        lim = _check_limit(limit)
        coe = _check_flag(cancel_on_error)
        cf = _derive(ctx, "task_group", None, False, None)
        self._ctx, self._cancel = cf._ctx, cf
        self._limit = lim
        self._outcome = Outcome(coe)
        self._loop = None
        self._waker = None
        self._watch = None
        self._running = 0
        self._queue = deque()
        self._tasks = {}
        self._done_cb = self._on_task_done
        self._waiters = []
        self._parent_task = None
        self._body_active = False
        self._body_interrupted = False
        self._entry_cancelling = 0
        self._caller_cancelled = False
        self._token = None

    @property
    def ctx(self) -> Context:
        """The group's context, passed to every task: watch it.

        Derived from the ``ctx`` given to ``TaskGroup``; ends when that ends, when a
        task raises (unless ``cancel_on_error=False``), and when ``wait()`` returns.
        Non-blocking, thread-safe, idempotent (the same object every time), never
        raises; once ended it stays ended.
        """
        return self._ctx

    @property
    def limit(self) -> int | None:
        """The most tasks that may run at once, or ``None`` for no limit.

        Set at construction, changed by ``set_limit``. Non-blocking, thread-safe,
        idempotent, never raises; unaffected by the context having ended.
        """
        return self._limit

    def set_limit(self, limit: int | None) -> None:
        """Change the most tasks that may run at once (``None``: no limit). errgroup's ``SetLimit``.

        As in errgroup, the limit may only change while no task is active (none running
        and none queued): before the first ``go``, or once the block or ``wait()`` is
        done. Non-blocking; idempotent; call it on the group's loop, or before the group
        is used (not thread-safe). Whether ``g.ctx`` ended does not matter. Raises
        ``RuntimeError`` (``tether:``) while tasks are active, ``TypeError``/``ValueError``
        for a limit that is not an int >= 0 or ``None``.
        """
        lim = _check_limit(limit)
        if self._running or self._queue:
            raise RuntimeError(
                f"tether: set_limit() while {self._running} task(s) of the group are "
                "active; as in errgroup, change the limit only when none is: call it "
                "before go(), or after the block (or wait()) is done"
            )
        self._limit = lim

    def go(self, fn: Callable[[Context, *Ts], Coroutine[Any, Any, T]], *args: *Ts) -> TaskHandle[T]:
        """Start ``fn(g.ctx, *args)`` as a task of the group; return its ``TaskHandle``.

        A plain call: it never blocks or suspends. With a ``limit`` reached, the task is
        queued and started when a slot frees (first come, first served); use
        ``await g.ago(...)`` to wait for the slot instead. Each call starts one task.
        Call it on the group's event loop (not thread-safe; from another thread use
        ``loop.call_soon_threadsafe``); tasks may start tasks in their own group. If
        ``g.ctx`` already ended, the task still starts (as in errgroup) and is
        interrupted at its first suspension. ``fn`` is called at once, to make the
        coroutine. Raises ``TypeError`` if ``fn`` does not return a coroutine, is a
        coroutine object itself (``g.go(fetch(ctx))``: it is closed, and the message
        says to pass ``g.go(fetch, ...)``) or does not take the context first;
        ``ValueError`` if the limit is 0, ``RuntimeError`` off the group's loop.
        """
        loop = self._loop
        if loop is None or _get_running_loop() is not loop:  # type: ignore[misc]
            loop = self._bind()
        ctx = self._ctx
        try:
            coro = fn(ctx, *args) if args else fn(ctx)  # type: ignore[call-arg]
        except TypeError as e:
            err = _go_failed(e, fn, "TaskGroup.go")
            if err is e:
                raise
            raise err from err.__cause__
        # Inside the block (or a task of the group) g.ctx is already current: create_task
        # copies the caller's contextvars itself. Elsewhere, copy them and set it.
        cv: _CVContext | None = None
        if _current.get(None) is not ctx:
            cv = copy_context()
            cv.run(_current.set, ctx)
        h: TaskHandle[T] = _new(TaskHandle)
        h._group = self
        h._done = False
        lim = self._limit
        if lim is not None and (self._running >= lim or self._queue):
            if type(coro) is not CoroutineType:
                _check_coroutine(coro, fn)
            if lim == 0:
                coro.close()
                raise _limit_zero()
            h._task = None
            h._pending = (coro, cv)
            self._queue.append(h)
            return h
        self._running += 1
        try:  # _start, inlined: this is the hot path
            t = loop.create_task(coro, context=cv)
        except BaseException:
            self._release_slot()
            if type(coro) is not CoroutineType:
                _check_coroutine(coro, fn)
            coro.close()
            raise
        h._task = t
        self._tasks[t] = h
        t.add_done_callback(self._done_cb)
        if (ctx._c or ctx)._err is not None:
            loop.call_soon(h._interrupt)  # born ended: interrupt at its first suspension
        return h

    def try_go(
        self, fn: Callable[[Context, *Ts], Coroutine[Any, Any, T]], *args: *Ts
    ) -> TaskHandle[T] | None:
        """Like ``go``, but return ``None`` (and not call ``fn``) if no slot is free now.

        Never blocks or suspends. Each call that returns a handle starts one task.
        Call it on the group's loop (not thread-safe). Without a limit it always starts
        the task; with ``limit=0`` it never does. If ``g.ctx`` already ended, the task
        still starts when a slot is free, and is interrupted at its first suspension.
        Raises as ``go``.
        """
        loop = self._loop
        if loop is None or _get_running_loop() is not loop:  # type: ignore[misc]
            loop = self._bind()
        lim = self._limit
        if lim is not None and (self._running >= lim or self._queue):
            return None
        return self.go(fn, *args)

    async def ago(
        self, fn: Callable[[Context, *Ts], Coroutine[Any, Any, T]], *args: *Ts
    ) -> TaskHandle[T]:
        """Wait for a free slot, then start ``fn(g.ctx, *args)`` as ``go`` does.

        The async form of ``Group.go``'s blocking: suspends the caller (not the loop)
        while the group has ``limit`` tasks running, first come first served with
        queued ``go`` calls; gives back-pressure to a producer. Without a limit it is
        ``go``. Each call starts one task; ``fn`` is called only once the slot is held.
        Call it on the group's loop (not thread-safe). If ``g.ctx`` already ended, it
        still waits and starts the task (interrupted at its first suspension); to stop
        waiting when a context ends, cancel the caller (``async with`` a scope).
        Raises ``CancelledError`` if the caller is cancelled while waiting (no task is
        started), else as ``go``.
        """
        loop = self._loop
        if loop is None or _get_running_loop() is not loop:  # type: ignore[misc]
            loop = self._bind()
        lim = self._limit
        if lim is None or (self._running < lim and not self._queue):
            return self.go(fn, *args)
        if lim == 0:
            raise _limit_zero()
        fut: Future[None] = loop.create_future()
        self._queue.append(fut)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():  # granted as we were cancelled
                self._release_slot()
            else:
                try:
                    self._queue.remove(fut)
                except ValueError:
                    pass
            raise
        # The slot is ours (counted in _running): start the task in it.
        ctx = self._ctx
        try:
            coro = fn(ctx, *args)
        except BaseException as e:
            self._release_slot()
            if type(e) is TypeError:
                err = _go_failed(e, fn, "TaskGroup.ago")
                if err is not e:
                    raise err from err.__cause__
            raise
        cv: _CVContext | None = None
        if _current.get(None) is not ctx:
            cv = copy_context()
            cv.run(_current.set, ctx)
        h: TaskHandle[T] = _new_handle(self)
        self._start(h, coro, cv, fn)
        return h

    async def wait(self) -> None:
        """Wait for every task (queued ones included); cancel ``g.ctx``; raise the first error.

        Blocks (suspends) the caller until the group is idle. Returns ``None`` if no
        task failed; otherwise raises, in order of precedence: the first
        ``BaseException`` that is not an ``Exception``, bare; else the first error
        itself (default mode) or an ``ExceptionGroup`` of all errors
        (``cancel_on_error=False``). ``g.ctx`` is cancelled before it returns, with
        what it raises as the cause. If the caller is cancelled while waiting,
        ``g.ctx`` is cancelled (the tasks are interrupted), it keeps waiting for them,
        then re-raises ``CancelledError`` (unless a task failed). Idempotent: a second
        call waits for tasks started since and raises the same first error. Call it on
        the group's loop (not thread-safe). If ``g.ctx`` already ended, it still waits
        for the (interrupted) tasks to finish. Raises ``RuntimeError`` off the loop.
        """
        self._bind()
        propagate = await self._wait_all()
        exc = self._conclude()
        if exc is not None:
            _reraise(exc)
        if propagate is not None:
            raise propagate

    async def __aenter__(self) -> TaskGroup:
        """Enter the group's block; ``tether.current()`` is ``g.ctx`` inside. Returns the group.

        Non-blocking (returns at once). Enter a group once (a second entry raises
        ``RuntimeError``). Call it from a task on the group's loop (not thread-safe).
        If ``g.ctx`` already ended, the body is interrupted at its first suspension, as
        ``asyncio.timeout(0)`` does. Raises ``RuntimeError`` outside a task or off the
        group's loop.
        """
        from asyncio import current_task

        self._bind()
        task = current_task()
        if task is None:
            raise RuntimeError("tether: `async with TaskGroup` must run inside an asyncio task")
        if self._parent_task is not None:
            raise RuntimeError("tether: this TaskGroup was already entered; make one per block")
        self._parent_task = task
        self._entry_cancelling = task.cancelling()
        self._body_active = True
        self._body_interrupted = False
        self._token = _current.set(self._ctx)
        if (self._ctx._c or self._ctx)._err is not None:
            assert self._waker is not None
            self._waker.post(self._abort)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Wait for the tasks as ``wait()`` does; the body's exception counts as a task's.

        Blocks (suspends) until every task has finished. Not reentrant; call it on the
        group's loop (not thread-safe). If the group interrupted the body (``g.ctx``
        ended), that ``CancelledError`` is absorbed and the block raises the first error
        or, if none, ``g.ctx``'s error (fresh, chained to the cause). If the body raised,
        that is recorded as a task's exception would be, and if another error is
        raised, the body's is chained as its ``__context__`` (a note when it has a
        context of its own): never lost. If the context already ended, it still waits
        for the tasks. Raises as ``wait()``.
        """
        self._body_active = False
        task = self._parent_task
        assert task is not None
        ours = False
        if (
            self._body_interrupted
            and task.uncancel() <= self._entry_cancelling
            and isinstance(exc, _CancelledError)
        ):
            ours = True
        external: BaseException | None = None
        if exc is not None and not ours:
            if isinstance(exc, _CancelledError):
                external = exc
                self._caller_cancelled = True
                self._cancel(exc)
            else:
                self._record(exc)
        try:
            propagate = await self._wait_all()
        finally:
            token = self._token
            self._token = None
            if token is not None:
                try:
                    _current.reset(token)
                except ValueError:  # pragma: no cover - exited in another context
                    pass
        self._parent_task = None
        raised = self._conclude()
        if raised is None:
            raised = external if external is not None else propagate
        if raised is None:
            if ours:
                err = _fresh_error(self._ctx._c or self._ctx)
                if err.__cause__ is None:
                    raise err from exc
                raise err
            return
        if raised is exc:
            return  # the body's own exception propagates unchanged
        _reraise_over(raised, None if ours else exc)

    # -- internals (loop thread) -------------------------------------------------------

    def _bind(self) -> AbstractEventLoop:
        grl = _get_running_loop or _load_asyncio()
        loop = grl()
        if loop is None:
            raise RuntimeError(
                "tether: a TaskGroup is used from a coroutine running on an event loop; "
                "in a thread with no running loop, use tether.Group"
            )
        if self._loop is None:
            from ._aio import waker_for

            self._waker = waker_for(loop)
            self._loop = loop
            c = self._ctx._c or self._ctx
            self._watch = w = self._on_ctx_end
            if not _context._add_waiter(c, w):
                self._watch = None
        elif self._loop is not loop:
            raise RuntimeError(
                "tether: this TaskGroup belongs to another event loop (another thread?); "
                "call its methods on the loop that ran its first go() or async with"
            )
        return loop

    def _on_ctx_end(self) -> None:  # any thread: g.ctx ended
        waker = self._waker
        assert waker is not None
        waker.post(self._abort)

    def _abort(self) -> None:
        for h in list(self._tasks.values()):
            h._interrupt()
        if self._body_active and not self._body_interrupted:
            task = self._parent_task
            assert task is not None
            self._body_interrupted = True
            task.cancel()

    def _start(
        self,
        h: TaskHandle[Any],
        coro: Coroutine[Any, Any, Any],
        cv: _CVContext | None,
        fn: object = None,
    ) -> None:
        """Start ``h``'s task in a slot already counted in ``_running``."""
        loop = self._loop
        assert loop is not None
        try:
            t = loop.create_task(coro, context=cv)
        except BaseException:
            self._release_slot()
            if type(coro) is not CoroutineType:
                _check_coroutine(coro, fn)
            coro.close()
            raise
        h._task = t
        self._tasks[t] = h
        t.add_done_callback(self._done_cb)
        if (self._ctx._c or self._ctx)._err is not None:
            loop.call_soon(h._interrupt)  # born ended: interrupt at its first suspension

    def _on_task_done(self, task: Task[Any]) -> None:
        h = self._tasks.pop(task)
        if h._interrupted:
            from . import _aio

            _aio.group_cancels.pop(task, None)
        if not task.cancelled() and task.exception() is None:  # the common case, inlined
            h._value = task.result()
            h._exc = None
            h._done = True
            if h._waiters is None and not self._queue:
                self._running = r = self._running - 1
                if r == 0 and self._waiters:
                    self._wake_waiters()
                return
            self._finish(h, h._value, None, False)
            return
        value: Any = None
        exc: BaseException | None
        interrupted = False
        if task.cancelled():
            try:
                task.result()
                raise AssertionError("unreachable")  # pragma: no cover
            except _CancelledError as ce:
                if h._interrupted:
                    exc = _fresh_error(self._ctx._c or self._ctx)
                    exc.__context__ = ce
                    interrupted = True
                else:
                    exc = ce
        else:
            exc = task.exception()
            if exc is None:
                value = task.result()
            elif h._interrupted and isinstance(exc, ContextError):
                # a tether scope inside answered the group's interruption with its
                # context's error (DeadlineExceeded): the same as a CancelledError
                interrupted = True
        self._finish(h, value, exc, interrupted)

    def _record(self, e: BaseException) -> None:
        cause = self._outcome.record(e)
        if cause is not None:
            self._cancel(cause)

    def _finish(
        self, h: TaskHandle[Any], value: Any, exc: BaseException | None, interrupted: bool
    ) -> None:
        if exc is not None:
            if interrupted:
                # Interrupted because g.ctx ended: an error of the group (the work did not
                # complete), unless g.ctx ended because the caller itself was cancelled:
                # then the CancelledError is the answer, and this is only its echo.
                if not self._caller_cancelled:
                    self._record(exc)
            elif not isinstance(exc, _CancelledError):  # cancelled by someone else: not ours
                self._record(exc)
        h._value = value
        h._exc = exc
        h._done = True
        h._task = None
        ws = h._waiters
        if ws is not None:
            h._waiters = None
            for f in ws:
                if not f.done():
                    f.set_result(None)
        self._release_slot()

    def _release_slot(self) -> None:
        """A slot is free: give it to the next in the queue, or count it free."""
        q = self._queue
        while q:
            nxt = q.popleft()
            if type(nxt) is TaskHandle:
                pending = nxt._pending
                assert pending is not None
                nxt._pending = None
                self._start(nxt, pending[0], pending[1])
                return
            if not nxt.done():
                nxt.set_result(None)
                return
        self._running -= 1
        if self._running == 0 and self._waiters:
            self._wake_waiters()

    def _wake_waiters(self) -> None:
        ws = self._waiters
        self._waiters = []
        for f in ws:
            if not f.done():
                f.set_result(None)

    async def _wait_all(self) -> BaseException | None:
        """Wait until nothing runs or queues; absorb (and return) the caller's cancel."""
        loop = self._loop
        assert loop is not None
        propagate: BaseException | None = None
        while self._running or self._queue:
            fut: Future[None] = loop.create_future()
            self._waiters.append(fut)
            try:
                await fut
            except _CancelledError as e:
                if propagate is None:
                    propagate = e
                    self._caller_cancelled = True
                    self._cancel(e)
            finally:
                if fut in self._waiters:
                    self._waiters.remove(fut)
        return propagate

    def _conclude(self) -> BaseException | None:
        exc = self._outcome.result()
        w = self._watch
        if w is not None:
            self._watch = None
            _context._remove_waiter((self._ctx._c or self._ctx), w)
        self._cancel(exc)
        return exc

    def __repr__(self) -> str:
        lim = "" if self._limit is None else f" limit={self._limit}"
        state = f"running={self._running}"
        if self._queue:
            state += f" queued={len(self._queue)}"
        state += self._outcome.describe()
        return f"<tether.TaskGroup {state}{lim} ctx={self._ctx!r}>"


def _new_handle(g: TaskGroup) -> TaskHandle[Any]:
    h: TaskHandle[Any] = _new(TaskHandle)
    h._group = g
    h._task = None
    h._done = False
    return h


def _go_failed(e: TypeError, fn: object, where: str) -> TypeError:
    """``fn(ctx, *args)`` raised ``e``: explain a misuse, else give ``e`` back unchanged.

    A coroutine object for ``fn`` (``g.go(fetch(ctx))``) is closed (no never-awaited
    warning); a call that failed at the call itself (arity) says that tether passes
    ``ctx`` first; an error raised inside ``fn`` is returned as it is.
    """
    if not callable(fn):
        return _not_a_function(fn, where)
    tb = e.__traceback__
    if tb is not None and tb.tb_next is None:
        return _call_failed(e, fn, where)
    return e


def _check_coroutine(coro: object, fn: object) -> None:
    from asyncio import iscoroutine

    if not iscoroutine(coro):
        raise TypeError(
            f"tether: TaskGroup.go needs an async function (one returning a coroutine); "
            f"{getattr(fn, '__qualname__', fn)!r} returned {type(coro).__name__}. "
            "For a plain function use tether.Group, or tether.to_thread inside a task"
        )
