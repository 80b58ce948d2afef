"""errgroup for threads: ``Group`` and its task ``Handle``.

What a group does with what its tasks raise (the same for ``TaskGroup``):

- an ``Exception`` is the task's *error*, Go's non-nil ``error``. With
  ``cancel_on_error=True`` the first one cancels ``g.ctx`` with itself as the cause and
  is what ``wait()`` raises, unwrapped; later ones are only on their handles. With
  ``cancel_on_error=False`` nothing is cancelled and ``wait()`` raises them all in an
  ``ExceptionGroup``, in the order they happened.
- any other ``BaseException`` (``KeyboardInterrupt``, ``SystemExit``,
  ``GeneratorExit``...) is *fatal*, Go's panic. It is never swallowed: the first one
  cancels ``g.ctx`` (in both modes, with itself as the cause), and ``wait()`` raises it
  bare, ahead of any error, so that ``except KeyboardInterrupt`` and the interpreter's
  exit still see it. It is not re-raised on the worker thread, where it would only end
  that thread and print a traceback.
- the parent's cause is never touched: cancelling ``g.ctx`` never reaches its parent.
  When the parent ends first, ``g.ctx`` ends with the parent's error and cause (first
  cancel wins, so a task error that follows does not replace it); the tasks see that
  and ``wait()`` raises what they raised (typically the ``Canceled`` or
  ``DeadlineExceeded`` of ``ctx.check()``, chained to the parent's cause).

``docs/design.md`` section 2 records why (errgroup's own history with panics included).

Locking: ``Group._lock`` guards every field marked (L) and the result fields of the
group's handles. It is a leaf lock: nothing is called while holding it but
``Lock.release``; contexts are cancelled after it is released.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from contextvars import Context as _CVContext
from contextvars import Token, copy_context
from types import CoroutineType, TracebackType
from typing import Any, Generic, NoReturn, TypeVar, TypeVarTuple, final

from ._context import CancelFunc, Context, _current, _derive, _on_loop_thread, _warn_blocking
from ._outcome import Outcome
from ._thread import _call_failed, _not_a_function, _returned_coroutine, submit

__all__ = ["Group", "Handle"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

_PENDING = 0
_DONE = 1


def _check_limit(limit: object) -> int | None:
    if limit is None:
        return None
    if type(limit) is not int:
        raise TypeError(
            f"tether: limit must be an int >= 0 or None (no limit), got {type(limit).__name__}"
        )
    if limit < 0:
        raise ValueError(f"tether: limit must be >= 0, got {limit}; pass limit=None for no limit")
    return limit


def _check_flag(value: object) -> bool:
    if type(value) is not bool:
        raise TypeError(
            f"tether: cancel_on_error must be True or False, got {type(value).__name__}"
        )
    return value


def _reraise(exc: BaseException) -> NoReturn:
    """Raise ``exc`` as it was raised in its task: keep its ``__context__``.

    Raising from ``__exit__``/``__aexit__`` (or any ``except`` block) would replace the
    task's ``__context__`` with the exception being handled there.
    """
    saved = exc.__context__
    try:
        raise exc
    finally:
        exc.__context__ = saved


def _in_chain(exc: BaseException, target: BaseException) -> bool:
    """True if ``target`` is ``exc`` or among its causes and contexts (cycle-safe)."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if e is target:
            return True
        if id(e) in seen:
            continue
        seen.add(id(e))
        todo.extend(n for n in (e.__cause__, e.__context__) if n is not None)
    return False


def _reraise_over(raised: BaseException, body: BaseException | None) -> NoReturn:
    """Raise what a group chose on leaving its block, never losing the body's exception.

    "The first error wins", but the body's own exception, when it is not the one raised,
    is chained as the ``__context__`` of what is raised (the traceback shows it first,
    as plain Python shows an exception raised while handling another), or, when that
    would overwrite the error's own context or make a cycle, named in a note.
    """
    if body is not None and body is not raised:
        if raised.__context__ is None and not _in_chain(body, raised):
            raised.__context__ = body
        elif not _in_chain(raised, body):
            note = (
                f"tether: the body of the group's block also raised {type(body).__name__}: {body}"
            )
            if note not in getattr(raised, "__notes__", ()):
                raised.add_note(note)
    _reraise(raised)


def _limit_zero() -> ValueError:
    return ValueError(
        "tether: this group's limit is 0, so go() would wait forever for a slot; "
        "use try_go(), or a limit >= 1 (None for no limit)"
    )


class _SlotWaiter:
    __slots__ = ("granted", "lock")

    def __init__(self) -> None:
        self.granted = False
        self.lock = threading.Lock()
        self.lock.acquire()


@final
class Handle(Generic[T]):
    """One task of a ``Group``: its result, when it has finished. From ``Group.go``.

    ``result()`` blocks until the task has finished and returns its value or raises
    its exception; ``done()`` polls. A handle does not own the task (the group does):
    there is no ``cancel()`` — cancel the group's context, or a context you derived for
    the task.

    Added in 0.1.
    """

    __slots__ = ("_cv", "_exc", "_fn", "_args", "_group", "_state", "_value", "_waiters")
    __module__ = "tether"

    _group: Group
    _fn: Callable[..., T] | None
    _args: tuple[Any, ...] | None
    _cv: _CVContext | None
    _state: int
    _value: T | None
    _exc: BaseException | None
    _waiters: list[threading.Lock] | None

    def __init__(self) -> None:
        raise TypeError("tether: handles come from Group.go()/try_go()")

    def done(self) -> bool:
        """True once the task has finished (returned or raised).

        Non-blocking, thread-safe, idempotent; never goes back to False. Never raises.
        Whether the group's context ended does not matter: only the task's return does.
        """
        return self._state == _DONE

    def result(self, timeout: float | None = None) -> T:
        """Block until the task finishes; return its value or re-raise its exception.

        ``timeout`` is in real seconds (``None``: wait as long as it takes). Thread-safe;
        every call returns the same value (or raises the same exception instance).
        Re-raising here does not take the error away from the group: ``wait()`` still
        reports it. Never call it from the task itself (it would wait for itself). The
        group's context having ended changes nothing: the task decides when it returns.
        Raises the task's exception (a ``KeyboardInterrupt``/``SystemExit`` included),
        ``TimeoutError`` if ``timeout`` passed first.
        """
        if self._state != _DONE:
            if timeout != 0 and _on_loop_thread():
                _warn_blocking("Handle.result()", "a tether.TaskGroup (await the handle)")
            g = self._group
            with g._lock:
                if self._state != _DONE:
                    w = threading.Lock()
                    w.acquire()
                    if self._waiters is None:
                        self._waiters = [w]
                    else:
                        self._waiters.append(w)
                else:
                    w = None
            if w is not None:
                ok = False
                try:
                    if timeout is None:
                        ok = w.acquire()
                    else:
                        ok = w.acquire(timeout=max(0.0, float(timeout)))
                finally:
                    if not ok:
                        with g._lock:
                            ws = self._waiters
                            if ws is not None and w in ws:
                                ws.remove(w)
                if not ok:
                    raise TimeoutError(f"tether: the task did not finish within {timeout}s")
        e = self._exc
        if e is not None:
            raise e
        return self._value  # type: ignore[return-value]

    # -- internals ---------------------------------------------------------------------

    def _run(self) -> None:  # the job the worker runs, once
        cv = self._cv
        assert cv is not None
        cv.run(self._body)

    def _body(self) -> None:
        g = self._group
        ctx = g._ctx
        _current.set(ctx)
        fn = self._fn
        args = self._args
        self._fn = self._args = self._cv = None
        try:
            value = fn(ctx, *args)  # type: ignore[misc]
        except BaseException as e:
            if type(e) is TypeError:
                tb = e.__traceback__
                if tb is not None and tb.tb_next is None:  # the call failed, not fn's body
                    e = _call_failed(e, fn, "Group.go")
            g._finish(self, None, e)
        else:
            if type(value) is CoroutineType:
                g._finish(self, None, _returned_coroutine(value, fn, "Group.go"))
            else:
                g._finish(self, value, None)

    def __repr__(self) -> str:
        if self._state != _DONE:
            state = "running"
        elif self._exc is not None:
            state = f"failed {type(self._exc).__name__}"
        else:
            state = "done"
        return f"<tether.Handle {state} in {self._group!r}>"


@final
class Group:
    """errgroup for threads: run functions on worker threads, wait, get the first error.

    ``g = tether.Group(ctx)`` derives ``g.ctx`` from ``ctx`` (a child that ends when
    ``ctx`` ends). ``g.go(fn, *args)`` calls ``fn(g.ctx, *args)`` on a worker thread
    and returns its ``Handle``; ``g.wait()`` blocks until every task has returned, then
    cancels ``g.ctx`` and raises the first error. As a context manager, leaving the
    ``with`` block waits (and raises) the same way::

        with tether.Group(ctx, limit=8) as g:
            for url in urls:
                g.go(fetch, url)        # fetch(ctx, url) watches ctx
        # every fetch has returned here; the first error, if any, was raised

    Semantics (errgroup's, point for point):

    - the first task to raise an ``Exception`` cancels ``g.ctx`` with that exception
      as the cause (``tether.cause(g.ctx)``); ``wait()`` raises that exception itself,
      not a wrapper. Later errors are dropped (each is on its handle).
    - ``g.ctx`` is cancelled when ``wait()`` returns, success or not (without a cause
      if there was no error): a group's context never outlives the group.
    - ``limit``: at most ``limit`` tasks run at once; ``go`` blocks until a slot is
      free; ``try_go`` returns ``None`` instead. ``None`` means no limit; ``0`` lets no
      task start (``try_go`` always returns ``None``; ``go`` raises ``ValueError``).
    - ``cancel_on_error=False``: collect-all mode, for independent work (audit sinks):
      errors do not cancel ``g.ctx``, every task runs to completion, and ``wait()``
      raises all the errors together in an ``ExceptionGroup``.
    - a ``BaseException`` that is not an ``Exception`` (``KeyboardInterrupt``,
      ``SystemExit``) is never swallowed: it cancels ``g.ctx`` in both modes and
      ``wait()`` raises it bare, ahead of any error. Why not as Go does (errgroup lets
      a panic crash the process; propagating it through ``Wait`` was tried and reverted,
      golang/go#53757, #74275, because it delays the crash until ``Wait``): in Python a
      ``BaseException`` that escapes a thread ends that thread *only* (``sys.exit()``
      in a worker does nothing), so not propagating it means losing it. The delay Go
      feared is bounded here: ``g.ctx`` is cancelled the moment it is raised.
    - the parent is never touched: its cause stays its own. When it ends first,
      ``g.ctx`` ends with its error and cause, and ``wait()`` raises what the tasks
      raised on seeing that (typically ``ctx.check()``'s, chained to that cause).
    - a body that raises counts as one more task: inside ``with``, its exception is
      recorded like a task's (so in the default mode it cancels ``g.ctx``), the block
      still waits for the tasks, and the first error is raised. The body's exception
      is never lost when another is raised: it becomes that error's ``__context__``
      (or, if the error has a context of its own, a note on it).
    - the group never interrupts a thread: a task stops when it watches ``g.ctx``
      (``check()``, ``done().wait()``, ``remaining()``).

    Like errgroup, a group may be reused after ``wait()``: ``go`` still starts tasks
    (with the ended ``g.ctx``) and ``wait()`` waits for them and raises the first error
    the group ever saw. Inside ``with``, ``tether.current()`` is ``g.ctx``; in every
    task too (each task runs in a copy of the caller's ``contextvars``).

    Tasks run on tether's shared worker threads: reused, started on demand (one per
    task that finds no idle worker, so tasks that wait for one another never
    deadlock), and stopped after 2 s idle. Use ``limit`` to bound them.

    Added in 0.1.
    """

    __slots__ = (
        "_outcome",
        "_cancel",
        "_ctx",
        "_done_waiters",
        "_limit",
        "_lock",
        "_n",
        "_slot_waiters",
        "_token",
        "__weakref__",
    )
    __module__ = "tether"

    _ctx: Context
    _cancel: CancelFunc
    _limit: int | None
    _lock: threading.Lock
    _n: int  # (L) tasks started (or holding a slot) and not finished
    _outcome: Outcome  # (L) what the tasks raised
    _done_waiters: list[threading.Lock]  # (L) released when _n drops to 0
    _slot_waiters: deque[_SlotWaiter]  # (L) go() calls waiting for a slot, FIFO
    _token: Token[Context] | None

    def __init__(
        self, ctx: Context, limit: int | None = None, cancel_on_error: bool = True
    ) -> None:
        lim = _check_limit(limit)
        coe = _check_flag(cancel_on_error)
        cf = _derive(ctx, "group", None, False, None)
        self._ctx, self._cancel = cf._ctx, cf
        self._limit = lim
        self._outcome = Outcome(coe)
        self._lock = threading.Lock()
        self._n = 0
        self._done_waiters = []
        self._slot_waiters = deque()
        self._token = None

    @property
    def ctx(self) -> Context:
        """The group's context: pass it (it is passed to every task) and watch it.

        Derived from the ``ctx`` given to ``Group``; ends when that ends, when a task
        raises (unless ``cancel_on_error=False``), and when ``wait()`` returns.
        Non-blocking, thread-safe, idempotent (the same object every time), never
        raises; once ended it stays ended, and a new group is needed for a live one.
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
        and none waiting for a slot): between ``wait()`` calls, or before the first
        ``go``. Non-blocking; idempotent (setting the same limit twice is harmless);
        thread-safe. Whether ``g.ctx`` ended does not matter. Raises ``RuntimeError``
        (``tether:``) while tasks are active, ``TypeError``/``ValueError`` for a limit
        that is not an int >= 0 or ``None``.
        """
        lim = _check_limit(limit)
        with self._lock:
            n = self._n
            if n == 0 and not self._slot_waiters:
                self._limit = lim
                return
        raise RuntimeError(
            f"tether: set_limit() while {n} task(s) of the group are active; as in "
            "errgroup, change the limit only when none is: call it before go(), or "
            "after wait() returned"
        )

    def go(self, fn: Callable[[Context, *Ts], T], *args: *Ts) -> Handle[T]:
        """Call ``fn(g.ctx, *args)`` on a worker thread; return its ``Handle``.

        Blocks only when the group has a ``limit`` and that many tasks are running:
        then it waits (first come, first served) for one to finish. Each call starts
        one task. Thread-safe: tasks may start more tasks in their own group (but a
        task that waits for a slot in its own full group waits for itself). If
        ``g.ctx`` already ended (a task failed, the parent ended, ``wait()`` returned),
        the task still runs and sees it ended, as in errgroup. Raises ``TypeError`` if
        ``fn`` is not callable (a coroutine object is closed and named as the mistake),
        ``ValueError`` if the limit is 0, and ``KeyboardInterrupt`` if interrupted while
        waiting for a slot (no task is then started). A task whose call ``fn(g.ctx,
        *args)`` itself fails (``fn`` takes no context) or that returns a coroutine
        (``fn`` is async) fails with a ``tether:`` ``TypeError`` saying so.
        """
        if not callable(fn):
            raise _not_a_function(fn, "Group.go")
        lock = self._lock
        lock.acquire()
        lim = self._limit
        if lim is None or (self._n < lim and not self._slot_waiters):
            self._n += 1
            lock.release()
        else:
            if lim == 0:
                lock.release()
                raise _limit_zero()
            w = _SlotWaiter()
            self._slot_waiters.append(w)
            lock.release()
            self._wait_slot(w)
        return self._start(fn, args)

    def try_go(self, fn: Callable[[Context, *Ts], T], *args: *Ts) -> Handle[T] | None:
        """Like ``go``, but return ``None`` at once, without starting it, if no slot is free.

        Never blocks. Each call that returns a handle starts one task. Thread-safe. If
        ``g.ctx`` already ended the task still starts (as with ``go``) when a slot is
        free. Without a limit it always starts the task; with ``limit=0`` it never
        does. Raises ``TypeError`` if ``fn`` is not callable.
        """
        if not callable(fn):
            raise _not_a_function(fn, "Group.try_go")
        lock = self._lock
        lock.acquire()
        lim = self._limit
        if lim is not None and (self._n >= lim or self._slot_waiters):
            lock.release()
            return None
        self._n += 1
        lock.release()
        return self._start(fn, args)

    def wait(self) -> None:
        """Block until every task has returned; cancel ``g.ctx``; raise the first error.

        Returns ``None`` if no task raised. Otherwise raises, in this order of
        precedence: the first ``BaseException`` that is not an ``Exception``
        (``KeyboardInterrupt``, ``SystemExit``), bare; else the first error itself
        (default mode) or an ``ExceptionGroup`` of every error (``cancel_on_error=False``).
        ``g.ctx`` is cancelled before it returns or raises, with what it raises as the
        cause (none on success). Idempotent: a second call waits for tasks started
        since and raises the same first error. Thread-safe; several threads may wait.
        Do not call it from one of the group's tasks (it would wait for itself), nor on
        an event loop's thread (it would block the loop: use ``TaskGroup``). If
        ``g.ctx`` already ended, it still waits: the tasks decide when they return. A
        ``KeyboardInterrupt`` while it waits cancels ``g.ctx`` (with it as the cause)
        and is re-raised at once, without waiting further.
        """
        if _on_loop_thread():
            _warn_blocking("Group.wait()", "a tether.TaskGroup (await g.wait())")
        self._wait_tasks()
        exc = self._conclude()
        if exc is not None:
            _reraise(exc)

    def __enter__(self) -> Group:
        """Enter the group's block: ``tether.current()`` is ``g.ctx`` inside. Returns the group.

        Non-blocking, thread-safe; a group may be entered once at a time (entering it
        twice raises ``RuntimeError``). Entering a group whose context already ended is
        allowed (the tasks will see it ended). Never raises otherwise.
        """
        if self._token is not None:
            raise RuntimeError("tether: this group is already entered; make one group per block")
        if _on_loop_thread():  # leaving the block will wait for the tasks
            _warn_blocking(
                "`with tether.Group(...)` (leaving the block waits for its tasks)",
                "`async with tether.TaskGroup(ctx) as g:`, or tether.to_thread for "
                "blocking functions",
            )
        self._token = _current.set(self._ctx)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Wait for the tasks, as ``wait()``; an exception of the body counts as a task's.

        Blocks until every task has returned. Not reentrant; thread-safe like ``wait``.
        If the body raised, that exception is recorded first (an ``Exception`` as an
        error — in the default mode it cancels ``g.ctx`` so the tasks stop — anything
        else as fatal), then the block waits and raises what ``wait()`` would; the
        body's own exception propagates unchanged when it is the one chosen; when
        another is chosen, the body's is chained as its ``__context__`` (a note when it
        has a context of its own), so the traceback shows both. If the context already
        ended, it still waits. Raises as ``wait()``.
        """
        try:
            if exc is not None:
                self._record(exc)
            self._wait_tasks()
        finally:
            token = self._token
            self._token = None
            if token is not None:
                try:
                    _current.reset(token)
                except ValueError:  # exited in another contextvars context
                    pass
        raised = self._conclude()
        if raised is not None and raised is not exc:
            _reraise_over(raised, exc)

    # -- internals ---------------------------------------------------------------------

    def _start(self, fn: Callable[..., T], args: tuple[Any, ...]) -> Handle[T]:
        h: Handle[T] = object.__new__(Handle)
        h._group = self
        h._fn = fn
        h._args = args
        h._cv = copy_context()
        h._state = _PENDING
        h._value = None
        h._exc = None
        h._waiters = None
        try:
            submit(h._run)
        except BaseException:
            self._finish(h, None, None)  # give the slot back
            raise
        return h

    def _wait_slot(self, w: _SlotWaiter) -> None:
        try:
            w.lock.acquire()
        except BaseException:
            with self._lock:
                if w.granted:  # the slot came as we were interrupted: pass it on
                    dw = self._release_slot_locked()
                else:
                    self._slot_waiters.remove(w)
                    dw = None
            for d in dw or ():
                d.release()
            raise

    def _release_slot_locked(self) -> list[threading.Lock] | None:
        """A task is gone: hand its slot to the next waiter, or free it. Holds _lock.

        Returns the done-waiters to release if the group became idle.
        """
        sw = self._slot_waiters
        if sw:
            w = sw.popleft()
            w.granted = True
            w.lock.release()
            return None
        self._n -= 1
        if self._n == 0 and self._done_waiters:
            ws = self._done_waiters
            self._done_waiters = []
            return ws
        return None

    def _record(self, e: BaseException) -> BaseException | None:
        """Record a task's (or the body's) exception. Returns the cause to cancel with."""
        with self._lock:
            cause = self._outcome.record(e)
        if cause is not None:
            self._cancel(cause)
        return cause

    def _finish(self, h: Handle[Any], value: Any, exc: BaseException | None) -> None:
        """The task of ``h`` returned ``value`` or raised ``exc``. Worker thread."""
        if exc is not None:
            self._record(exc)
        lock = self._lock
        lock.acquire()
        h._value = value
        h._exc = exc
        h._state = _DONE
        hw = h._waiters
        h._waiters = None
        dw = self._release_slot_locked()
        lock.release()
        if hw is not None:
            for w in hw:
                w.release()
        if dw is not None:
            for w in dw:
                w.release()

    def _wait_tasks(self) -> None:
        with self._lock:
            if self._n == 0:
                return
            w = threading.Lock()
            w.acquire()
            self._done_waiters.append(w)
        try:
            w.acquire()
        except BaseException as e:
            with self._lock:
                if w in self._done_waiters:
                    self._done_waiters.remove(w)
            self._record(e)
            raise

    def _conclude(self) -> BaseException | None:
        """After the tasks: cancel ``g.ctx``; return what ``wait()`` raises, or None."""
        with self._lock:
            exc = self._outcome.result()
        self._cancel(exc)
        return exc

    def __repr__(self) -> str:
        lim = "" if self._limit is None else f" limit={self._limit}"
        state = f"running={self._n}{self._outcome.describe()}"
        return f"<tether.Group {state}{lim} ctx={self._ctx!r}>"
