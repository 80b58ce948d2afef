"""tether.Group: errgroup's own tests restated for threads, then what Python adds.

The first block follows golang.org/x/sync/errgroup/errgroup_test.go test by test
(TestZeroGroup, TestWithContext, TestTryGo, TestGoLimit, TestCancelCause); the rest
covers BaseException handling, collect-all mode, the body of ``with``, the parent's
cause, contextvars, handles and misuse. No timing is asserted: waits are on events and
contexts, with generous timeouts.
"""

from __future__ import annotations

import contextvars
import signal
import sys
import threading
import time

import pytest
from tests.conftest import eventually

import tether

bg = tether.background

ERR1 = ValueError("errgroup_test: 1")
ERR2 = ValueError("errgroup_test: 2")
DOOM = RuntimeError("group_test: doomed")


def returning(err):
    """errgroup's ``func() error { return err }``: raise err, or return None."""

    def fn(ctx):
        if err is not None:
            raise err

    return fn


def wait_error(g):
    try:
        g.wait()
    except BaseException as e:
        return e
    return None


# -- errgroup_test.go ----------------------------------------------------------------


@pytest.mark.parametrize("errs", [[], [None], [ERR1], [ERR1, None], [ERR1, None, ERR2]], ids=repr)
def test_zero_group(errs):
    # Go and Wait alternate on one group; Wait reports the first error seen so far.
    g = tether.Group(bg())
    first = None
    for err in errs:
        g.go(returning(err))
        if first is None and err is not None:
            first = err
        assert wait_error(g) is first
    assert wait_error(g) is first


@pytest.mark.parametrize(
    ("errs", "want"),
    [([], None), ([None], None), ([DOOM], DOOM), ([DOOM, None], DOOM)],
    ids=repr,
)
def test_with_context(errs, want):
    g = tether.Group(bg())
    for err in errs:
        g.go(returning(err))
    assert wait_error(g) is want
    assert g.ctx.done().is_set(), "g.ctx must be cancelled when wait() returns"


def test_try_go():
    n = 42
    gate = threading.Semaphore(0)

    def fn(ctx):
        assert gate.acquire(timeout=10)

    g = tether.Group(bg(), limit=n)
    for i in range(n):
        assert g.try_go(fn) is not None, f"try_go should succeed, failed at call {i}"
    assert g.try_go(fn) is None, "try_go should fail with the limit reached"
    for _ in range(n):
        gate.release()
    g.wait()
    assert g.try_go(fn) is not None, "try_go should succeed once the tasks are done"
    gate.release()
    g.wait()

    g = tether.Group(bg(), limit=1)
    assert g.try_go(fn) is not None
    assert g.try_go(fn) is None
    gate.release()
    g.wait()

    g = tether.Group(bg(), limit=0)  # blocks all calls
    for _ in range(1 << 10):
        assert g.try_go(fn) is None
    g.wait()


def test_go_limit():
    limit = 10
    lock = threading.Lock()
    active = 0
    peak = 0

    def fn(ctx):
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
            n = active
        if n > limit:
            raise AssertionError(f"saw {n} active tasks; want <= {limit}")
        time.sleep(0.000001)  # give other tasks a chance to start
        with lock:
            active -= 1

    g = tether.Group(bg(), limit=limit)
    for _ in range((1 << 10) + 1):
        g.go(fn)
    g.wait()
    assert 1 <= peak <= limit


@pytest.mark.parametrize(
    ("errs", "want"),
    [([], None), ([None], None), ([DOOM], DOOM), ([DOOM, None], DOOM)],
    ids=repr,
)
def test_cancel_cause(errs, want):
    g = tether.Group(bg())
    for err in errs:
        g.try_go(returning(err))
    assert wait_error(g) is want
    cause = tether.cause(g.ctx)
    if want is None:
        assert isinstance(cause, tether.Canceled)
    else:
        assert cause is want


# -- first error, cancellation ---------------------------------------------------------


def test_first_error_wins_and_cancels_the_others():
    first = ValueError("first")
    seen = []

    def failing(ctx):
        raise first

    def watcher(ctx):
        assert ctx.done().wait(10)
        seen.append(tether.cause(ctx))
        raise KeyError("second, after the cancel")

    g = tether.Group(bg())
    h1 = g.go(watcher)
    h2 = g.go(failing)
    with pytest.raises(ValueError) as info:
        g.wait()
    assert info.value is first  # the error itself, not a group
    assert seen == [first]
    with pytest.raises(KeyError):
        h1.result()
    with pytest.raises(ValueError):
        h2.result()
    assert tether.cause(g.ctx) is first


def test_error_does_not_touch_the_parent():
    parent, cancel = tether.with_cancel(bg())
    g = tether.Group(parent)
    g.go(returning(DOOM))
    with pytest.raises(RuntimeError):
        g.wait()
    assert parent.err() is None
    cancel()


def test_parent_cancel_reaches_tasks_with_its_cause():
    parent, cancel = tether.with_cancel(bg())
    why = ConnectionError("client went away")
    started = threading.Event()

    def task(ctx):
        started.set()
        assert ctx.done().wait(10)
        ctx.check()

    g = tether.Group(parent)
    g.go(task)
    assert started.wait(10)
    cancel(why)
    with pytest.raises(tether.Canceled) as info:
        g.wait()
    assert info.value.__cause__ is why
    assert tether.cause(g.ctx) is why  # the parent's cause, not replaced by the task error


def test_parent_deadline_under_fake_clock(fake_clock):
    parent, cancel = tether.with_timeout(bg(), 5)

    def task(ctx):
        assert ctx.done().wait(10)
        ctx.check()

    g = tether.Group(parent)
    h = g.go(task)
    fake_clock.advance(5)
    with pytest.raises(tether.DeadlineExceeded):
        g.wait()
    with pytest.raises(tether.DeadlineExceeded):
        h.result()
    cancel()


# -- BaseException: never swallowed ----------------------------------------------------


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit, GeneratorExit])
@pytest.mark.parametrize("coe", [True, False])
def test_base_exception_cancels_and_is_raised_bare(exc_type, coe):
    fatal = exc_type()
    ordinary = ValueError("ordinary, first")
    fatal_may_go = threading.Event()

    def ordinary_fn(ctx):
        try:
            raise ordinary
        finally:
            fatal_may_go.set()

    def fatal_fn(ctx):
        assert fatal_may_go.wait(10)
        raise fatal

    def watcher(ctx):
        assert ctx.done().wait(10)  # cancelled by the fatal one in both modes

    g = tether.Group(bg(), cancel_on_error=coe)
    g.go(ordinary_fn)
    h = g.go(fatal_fn)
    g.go(watcher)
    with pytest.raises(exc_type) as info:
        g.wait()
    assert info.value is fatal  # bare, ahead of the earlier ordinary error
    assert tether.cause(g.ctx) is (ordinary if coe else fatal)
    with pytest.raises(exc_type):
        h.result()


def test_system_exit_in_worker_reaches_the_waiter_not_the_thread(capsys):
    g = tether.Group(bg())
    g.go(lambda ctx: exit(3))
    with pytest.raises(SystemExit) as info:
        g.wait()
    assert info.value.code == 3
    assert "Traceback" not in capsys.readouterr().err  # not printed by threading


def test_keyboard_interrupt_while_waiting_cancels_the_group():
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are delivered to the main thread")
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT is not Python's default handler here")
    started = threading.Event()

    def task(ctx):
        started.set()
        assert ctx.done().wait(30)

    def interrupter():
        assert started.wait(10)
        main = threading.main_thread().ident
        # the main thread is blocked in wait()'s lock acquire (not about to enter it)
        eventually(lambda: sys._current_frames()[main].f_code.co_name == "_wait_tasks")
        time.sleep(0.05)
        signal.pthread_kill(main, signal.SIGINT)

    g = tether.Group(bg())
    g.go(task)
    t = threading.Thread(target=interrupter)
    t.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            g.wait()
    finally:
        t.join(10)
    assert isinstance(tether.cause(g.ctx), KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        g.wait()  # waits for the task, which saw the cancel; the answer stays the same


# -- collect-all mode ------------------------------------------------------------------


def test_collect_all_runs_every_task_and_raises_all_errors():
    e1, e2 = ValueError("a"), KeyError("b")
    go_second = threading.Event()
    finished = []

    def fail1(ctx):
        try:
            raise e1
        finally:
            go_second.set()

    def fail2(ctx):
        assert go_second.wait(10)
        raise e2

    def slow_ok(ctx, i):
        assert go_second.wait(10)
        assert ctx.err() is None  # errors do not cancel in this mode
        finished.append(i)
        return i

    g = tether.Group(bg(), cancel_on_error=False)
    g.go(fail1)
    oks = [g.go(slow_ok, i) for i in range(5)]
    g.go(fail2)
    with pytest.raises(ExceptionGroup) as info:
        g.wait()
    assert info.value.exceptions[0] is e1
    assert set(map(id, info.value.exceptions)) == {id(e1), id(e2)}
    assert sorted(finished) == list(range(5))
    assert [h.result() for h in oks] == list(range(5))
    assert tether.cause(g.ctx) is info.value


def test_collect_all_without_errors_returns():
    with tether.Group(bg(), cancel_on_error=False) as g:
        hs = [g.go(lambda ctx, i: i * i, i) for i in range(20)]
    assert [h.result() for h in hs] == [i * i for i in range(20)]
    assert isinstance(tether.cause(g.ctx), tether.Canceled)


# -- the with block --------------------------------------------------------------------


def test_with_block_waits_and_raises_the_error_itself():
    g = tether.Group(bg())

    def block():
        with g:
            g.go(returning(DOOM))
            assert tether.current() is g.ctx

    with pytest.raises(RuntimeError) as info:
        block()
    assert info.value is DOOM
    assert g.ctx.done().is_set()
    assert tether.current() is bg()


def test_body_exception_cancels_tasks_and_propagates_unchanged():
    stopped = threading.Event()

    def task(ctx):
        assert ctx.done().wait(10)
        stopped.set()

    body = LookupError("body")
    g = tether.Group(bg())

    def block():
        with g:
            g.go(task)
            raise body

    with pytest.raises(LookupError) as info:
        block()
    assert info.value is body
    assert stopped.is_set()  # waited for before the exception left the block
    assert tether.cause(g.ctx) is body


def test_task_error_wins_over_the_body_error_it_caused():
    def task(ctx):
        raise DOOM

    def block():
        with tether.Group(bg()) as g:
            g.go(task)
            assert g.ctx.done().wait(10)
            g.ctx.check()  # raises Canceled: a consequence, not the first error

    with pytest.raises(RuntimeError) as info:
        block()
    assert info.value is DOOM


def test_reraised_error_keeps_its_own_context():
    def task(ctx):
        try:
            raise KeyError("inner")
        except KeyError:
            raise DOOM  # implicitly chained to the KeyError

    DOOM.__context__ = None

    def block():
        with tether.Group(bg()) as g:
            g.go(task)
            assert g.ctx.done().wait(10)
            raise tether.Canceled()

    with pytest.raises(RuntimeError) as info:
        block()
    assert isinstance(info.value.__context__, KeyError)


# -- contextvars, handles, reuse -------------------------------------------------------

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")


def test_workers_carry_contextvars_and_current():
    VAR.set("caller")

    def task(ctx):
        assert tether.current() is ctx
        value = VAR.get()
        VAR.set("task")  # stays in the task's copy
        return value

    with tether.with_cancel(bg()) as outer, tether.Group(outer) as g:
        h = g.go(task)
    assert h.result() == "caller"
    assert VAR.get() == "caller"
    assert g.ctx is not outer


def test_handle_result_blocks_times_out_and_reraises():
    gate = threading.Event()

    def task(ctx):
        assert gate.wait(10)
        raise DOOM

    g = tether.Group(bg(), cancel_on_error=False)
    h = g.go(task)
    assert not h.done()
    with pytest.raises(TimeoutError):
        h.result(timeout=0.01)
    gate.set()
    with pytest.raises(RuntimeError) as info:
        h.result()
    assert info.value is DOOM
    assert h.done()
    with pytest.raises(ExceptionGroup):
        g.wait()  # handled on the handle, still reported by the group
    assert "failed RuntimeError" in repr(h)


def test_go_after_wait_runs_with_the_ended_context():
    g = tether.Group(bg())
    g.wait()
    h = g.go(lambda ctx: ctx.err())
    g.wait()
    assert isinstance(h.result(), tether.Canceled)


def test_tasks_that_wait_for_each_other_do_not_deadlock():
    n = 40  # more than any fixed pool would give
    barrier = threading.Barrier(n, timeout=30)
    with tether.Group(bg()) as g:
        for _ in range(n):
            g.go(lambda ctx: barrier.wait())


def test_nested_go_from_a_task():
    def parent_task(ctx, g):
        return [g.go(lambda ctx, i: i, i) for i in range(5)]

    with tether.Group(bg()) as g:
        h = g.go(parent_task, g)
    assert [c.result() for c in h.result()] == list(range(5))


def test_go_waits_for_a_slot():
    gate = threading.Event()
    with tether.Group(bg(), limit=1) as g:
        g.go(lambda ctx: gate.wait(10))
        second = []
        t = threading.Thread(target=lambda: second.append(g.go(lambda ctx: 2)))
        t.start()
        time.sleep(0.05)
        assert not second  # blocked in go()
        gate.set()
        t.join(10)
    assert second[0].result() == 2


def test_born_ended_parent():
    parent, cancel = tether.with_cancel(bg())
    cancel()
    with tether.Group(parent) as g:
        h = g.go(lambda ctx: ctx.err())
    assert isinstance(h.result(), tether.Canceled)


# -- misuse ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"limit": -1}, ValueError),
        ({"limit": 1.5}, TypeError),
        ({"limit": True}, TypeError),
        ({"cancel_on_error": 1}, TypeError),
    ],
)
def test_bad_arguments(kwargs, exc):
    with pytest.raises(exc, match=r"^tether: "):
        tether.Group(bg(), **kwargs)


def test_none_parent_and_non_callable():
    with pytest.raises(TypeError, match=r"^tether: "):
        tether.Group(None)
    g = tether.Group(bg())
    with pytest.raises(TypeError, match=r"^tether: "):
        g.go(42)
    with pytest.raises(TypeError, match=r"^tether: "):
        g.try_go(None)
    g.wait()


def test_go_with_limit_zero_raises():
    g = tether.Group(bg(), limit=0)
    with pytest.raises(ValueError, match=r"^tether: .*try_go"):
        g.go(lambda ctx: None)
    g.wait()


def test_handles_are_not_constructed_directly():
    with pytest.raises(TypeError, match=r"^tether: "):
        tether.Handle()


def test_repr_shows_state():
    g = tether.Group(bg(), limit=3)
    assert "limit=3" in repr(g)
    assert "background.group" in repr(g)
    g.wait()


def test_idle_workers_are_reused_and_named_idle():
    with tether.Group(bg()) as g:
        g.go(lambda ctx: None)
    eventually(lambda: any(t.name.startswith("tether-worker-idle-") for t in threading.enumerate()))


def test_a_burst_of_short_tasks_does_not_start_a_thread_per_task():
    from tether._thread import _pool

    with tether.Group(bg()) as g:
        for _ in range(5000):
            g.go(lambda ctx: None)
    live, _, queued = _pool.workers()
    assert queued == 0
    assert live < 100  # a handful in practice; thousands with a thread per task
