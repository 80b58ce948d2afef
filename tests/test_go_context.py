"""Ports of the semantics of Go's own ``context`` tests (go1.21+).

Each test names the Go test it ports. Go checks ``err == Canceled``; tether checks the
type (``Canceled``/``DeadlineExceeded``) and, for causes, identity. Go's
``otherContext`` (a wrapper that is not one of the package's own types) becomes a
``with_value`` child here: a context that shares its parent's cancellation without
owning any. Deadlines run on a FakeClock (no sleeps) except in the few tests marked
``realtime``. Everything that waits runs on both runtimes (thread and asyncio).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import pytest

import tether
from tether import _context
from tether.testing import FakeClock

bg = tether.background


@pytest.fixture
def clock():
    with FakeClock(start=1000.0) as c:
        yield c


def on_runtime(runtime: Any, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` where the runtime's code runs: a fresh thread, or the event loop."""
    if runtime.name == "asyncio":

        async def call() -> Any:
            return fn()

        return runtime.call(call())
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join(10)
    assert not t.is_alive()
    return out[0]


def n_waiters(ctx: tether.Context) -> int:
    """How many wake-ups the context's owner holds (None, one waiter, or a dict)."""
    ws = (ctx._c or ctx)._waiters
    if ws is None:
        return 0
    return len(ws) if type(ws) is dict else 1


def assert_live(runtime: Any, ctx: tether.Context) -> None:
    assert ctx.err() is None
    assert not ctx.done().is_set()
    assert tether.cause(ctx) is None
    assert runtime.wait(ctx, 0.01) is False


def assert_ended(ctx: tether.Context, err: type[tether.ContextError]) -> None:
    assert type(ctx.err()) is err
    assert ctx.done().is_set()
    assert ctx.done().wait(0) is True
    with pytest.raises(err):
        ctx.check()


# --------------------------------------------------------------------------------------
# TestBackground, TestTODO


@pytest.mark.parametrize(
    ("make", "name"), [(tether.background, "background"), (tether.todo, "todo")]
)
def test_background_todo(runtime, make, name):
    c = make()
    assert_live(runtime, c)
    assert c.deadline() is None
    assert c.remaining() is None
    assert name in repr(c)


# --------------------------------------------------------------------------------------
# TestWithCancel


def test_with_cancel(runtime):
    c1, cancel = tether.with_cancel(bg())
    assert repr(c1).startswith("<tether.Context background.with_cancel")
    o = tether.with_value(c1, "k", "v")  # Go's otherContext{c1}
    c2, cancel2 = tether.with_cancel(o)
    contexts = [c1, o, c2]
    for c in contexts:
        assert_live(runtime, c)
    waiters = [runtime.waiter(c) for c in contexts]

    cancel()

    # Go sleeps to let cancellation propagate; here it has reached everyone already.
    for c in contexts:
        assert_ended(c, tether.Canceled)
    for w in waiters:
        w.result(5)
    cancel2()


# --------------------------------------------------------------------------------------
# TestParentFinishesChild


def test_parent_finishes_child(runtime):
    # parent -> cancel_child
    # parent -> value_child -> timer_child
    parent, cancel = tether.with_cancel(bg())
    cancel_child, stop1 = tether.with_cancel(parent)
    value_child = tether.with_value(parent, "key", "value")
    timer_child, stop2 = tether.with_timeout(value_child, 10000 * 3600)
    tree = [parent, cancel_child, value_child, timer_child]
    for c in tree:
        assert_live(runtime, c)

    # The parent's children are the two cancellable children (the value child owns
    # no cancellation, so timer_child registers with parent directly).
    assert parent._children == {cancel_child, timer_child}
    assert cancel_child._pnode is parent
    assert timer_child._pnode is parent
    waiters = [runtime.waiter(c) for c in tree]

    cancel()

    assert not parent._children, "cancel did not clear the parent's children"
    for c in tree:
        assert_ended(c, tether.Canceled)
    for w in waiters:
        w.result(5)

    # Deriving from a cancelled parent gives a cancelled context.
    precanceled = tether.with_value(parent, "key", "value")
    assert_ended(precanceled, tether.Canceled)
    stop1()
    stop2()


# --------------------------------------------------------------------------------------
# TestChildFinishesFirst


def test_child_finishes_first(runtime):
    cancelable, stop = tether.with_cancel(bg())
    for parent in (bg(), cancelable):
        child, cancel = tether.with_cancel(parent)
        assert_live(runtime, parent)
        assert_live(runtime, child)
        if parent is cancelable:
            assert child._pnode is cancelable
            assert cancelable._children == {child}
        else:
            assert child._pnode is None  # nothing to register with under background

        waiter = runtime.waiter(child)
        cancel()

        if parent is cancelable:
            assert not cancelable._children, "child's cancel didn't remove it from its parent"
        assert_ended(child, tether.Canceled)
        waiter.result(5)
        # The parent is not finished.
        assert_live(runtime, parent)
    stop()


# --------------------------------------------------------------------------------------
# TestDeadline, TestTimeout (fake time: exactly at the deadline, never before)


def _expect_deadline(runtime, clock, c, step):
    """``c`` is live until ``step`` more fake seconds pass, and ends exactly then."""
    w = runtime.waiter(c)
    clock.advance(step / 2)
    assert c.err() is None
    assert c.remaining() == pytest.approx(step / 2)
    clock.advance(step / 2)
    assert_ended(c, tether.DeadlineExceeded)
    assert c.remaining() <= 0
    w.result(5)


def test_deadline(runtime, clock):
    c, cancel = tether.with_deadline(bg(), clock.now() + 0.5)
    assert repr(c).startswith("<tether.Context background.with_deadline(")
    assert c.deadline() == 1000.5
    _expect_deadline(runtime, clock, c, 0.5)
    cancel()

    c, cancel = tether.with_deadline(bg(), clock.now() + 0.5)
    o = tether.with_value(c, "k", "v")
    _expect_deadline(runtime, clock, o, 0.5)
    cancel()

    # WithDeadline+otherContext+WithDeadline: the earlier parent deadline wins.
    c, cancel = tether.with_deadline(bg(), clock.now() + 0.5)
    o = tether.with_value(c, "k", "v")
    c2, cancel2 = tether.with_deadline(o, clock.now() + 4)
    assert c2.deadline() == c.deadline()
    assert c2._entry is None, "a child whose parent ends first must not arm a timer"
    assert clock.timers() == 1
    _expect_deadline(runtime, clock, c2, 0.5)
    cancel()
    cancel2()

    # In the past, and now: born ended, without a timer.
    for when in (clock.now() - 0.001, clock.now()):
        c, cancel = tether.with_deadline(bg(), when)
        assert_ended(c, tether.DeadlineExceeded)
        assert c.remaining() <= 0
        assert runtime.wait(c, 5)
        cancel()
    assert clock.timers() == 0


def test_timeout(runtime, clock):
    c, cancel = tether.with_timeout(bg(), 0.5)
    assert repr(c).startswith("<tether.Context background.with_deadline(")
    assert c.deadline() == clock.now() + 0.5
    _expect_deadline(runtime, clock, c, 0.5)
    cancel()

    c, cancel = tether.with_timeout(bg(), 0.5)
    o = tether.with_value(c, "k", "v")
    _expect_deadline(runtime, clock, o, 0.5)
    cancel()

    c, cancel = tether.with_timeout(bg(), 0.5)
    o = tether.with_value(c, "k", "v")
    c2, cancel2 = tether.with_timeout(o, 3)
    assert c2.deadline() == c.deadline()
    _expect_deadline(runtime, clock, c2, 0.5)
    cancel()
    cancel2()


@pytest.mark.realtime
def test_deadline_real_timer_fires_never_early(runtime):
    t0 = time.monotonic()
    c, cancel = tether.with_timeout(bg(), 0.05)
    w = runtime.waiter(c)
    woke = w.result(10)
    assert_ended(c, tether.DeadlineExceeded)
    assert c.remaining() <= 0
    assert woke - t0 >= 0.05
    cancel()


# --------------------------------------------------------------------------------------
# TestCanceledTimeout


def test_canceled_timeout(runtime, clock):
    c, cancel1 = tether.with_timeout(bg(), 1)
    o = tether.with_value(c, "k", "v")
    c2, cancel = tether.with_timeout(o, 2)
    w = runtime.waiter(c2)
    cancel()
    assert_ended(c2, tether.Canceled)
    w.result(5)
    assert c.err() is None, "cancelling a child must not touch its parent"
    # After the deadline passes the cancelled child stays Canceled: the first end wins.
    clock.advance(2)
    assert_ended(c2, tether.Canceled)
    assert_ended(c, tether.DeadlineExceeded)
    cancel1()


# --------------------------------------------------------------------------------------
# TestValues

K1 = tether.Key[str]("k")
K2 = tether.Key[str]("k")  # same name as K1, a different key (Go: same int, other type)
K3 = tether.Key[str]("k3")


def _check_values(c, v1, v2, v3):
    assert (c.value(K1), c.value(K2), c.value(K3)) == (v1, v2, v3)


def test_values():
    c0 = bg()
    _check_values(c0, None, None, None)

    c1 = tether.with_value(bg(), K1, "c1k1")
    _check_values(c1, "c1k1", None, None)
    assert repr(c1) == "<tether.Context background.with_value(k) [live]>"

    c2 = tether.with_value(c1, K2, "c2k2")
    _check_values(c2, "c1k1", "c2k2", None)

    c3 = tether.with_value(c2, K3, "c3k3")
    _check_values(c3, "c1k1", "c2k2", "c3k3")

    c4 = tether.with_value(c3, K1, None)  # binding None shadows too
    _check_values(c4, None, "c2k2", "c3k3")

    # Through contexts that own cancellation (Go's otherContext cases).
    o0, k0 = tether.with_cancel(bg())
    _check_values(o0, None, None, None)
    o1, k1 = tether.with_cancel(tether.with_value(bg(), K1, "c1k1"))
    _check_values(o1, "c1k1", None, None)
    o2 = tether.with_value(o1, K2, "o2k2")
    _check_values(o2, "c1k1", "o2k2", None)
    o3, k3 = tether.with_timeout(c4, 3600)
    _check_values(o3, None, "c2k2", "c3k3")
    o4 = tether.with_value(o3, K3, None)
    _check_values(o4, None, "c2k2", None)

    # Values stay readable once ended, and the parents are unchanged.
    for k in (k0, k1, k3):
        k()
    _check_values(o4, None, "c2k2", None)
    _check_values(c1, "c1k1", None, None)


def test_values_plain_keys_compare_by_equality():
    c = tether.with_value(bg(), ("tenant", 7), "acme")
    assert c.value(("tenant", 7)) == "acme"
    assert c.value(("tenant", 8)) is None
    # Two distinct Key objects never collide, whatever their names.
    assert tether.with_value(bg(), tether.Key("x"), 1).value(tether.Key("x")) is None


# --------------------------------------------------------------------------------------
# TestLayersCancel, TestLayersTimeout


def _layers(rng: random.Random, timeout: float):
    vals: list[tether.Key[object]] = []
    cancels: list[tether.CancelFunc] = []
    num_timers = 0
    ctx = bg()
    i = 0
    while i < 30 or num_timers == 0 or not cancels or not vals:
        kind = rng.randrange(3)
        if kind == 0:
            k: tether.Key[object] = tether.Key(f"v{i}")
            ctx = tether.with_value(ctx, k, k)
            vals.append(k)
        elif kind == 1:
            ctx, cancel = tether.with_cancel(ctx)
            cancels.append(cancel)
        else:
            ctx, cancel = tether.with_timeout(ctx, timeout)
            cancels.append(cancel)
            num_timers += 1
        i += 1
    return ctx, vals, cancels


def _check_layer_values(ctx, vals):
    for k in vals:
        assert ctx.value(k) is k


@pytest.mark.parametrize("seed", range(4))
def test_layers_cancel(runtime, clock, seed):
    rng = random.Random(seed)
    ctx, vals, cancels = _layers(rng, 3600)
    assert ctx.err() is None
    assert repr(ctx).startswith("<tether.Context background.")
    _check_layer_values(ctx, vals)
    w = runtime.waiter(ctx)
    rng.choice(cancels)()
    assert ctx.done().is_set(), "ctx should be canceled"
    assert type(ctx.err()) is tether.Canceled
    w.result(5)
    _check_layer_values(ctx, vals)
    for cancel in cancels:
        cancel()
    assert clock.timers() == 0


@pytest.mark.parametrize("seed", range(4))
def test_layers_timeout(runtime, clock, seed):
    rng = random.Random(seed)
    ctx, vals, cancels = _layers(rng, 1.0)
    # Every layer asks for the same deadline: only the outermost arms a timer.
    assert clock.timers() == 1
    assert ctx.err() is None
    _check_layer_values(ctx, vals)
    w = runtime.waiter(ctx)
    clock.advance(1.0)
    assert type(ctx.err()) is tether.DeadlineExceeded
    w.result(5)
    _check_layer_values(ctx, vals)
    for cancel in cancels:
        cancel()


# --------------------------------------------------------------------------------------
# TestCancelRemoves (and: nothing keeps a cancelled child alive)


def _live_real_timers() -> int:
    with _context._LOCK:
        return _context._REAL_TIMERS.live()


def test_cancel_removes():
    ctx, cancel0 = tether.with_cancel(bg())
    assert not ctx._children
    _, cancel = tether.with_cancel(ctx)
    assert len(ctx._children) == 1
    cancel()
    assert len(ctx._children) == 0

    timers = _live_real_timers()
    ctx2, cancel2 = tether.with_cancel(bg())
    child, cancel = tether.with_timeout(ctx2, 60 * 60)
    assert len(ctx2._children) == 1
    assert _live_real_timers() == timers + 1
    cancel()
    assert len(ctx2._children) == 0
    assert _live_real_timers() == timers, "a cancelled timer must leave the heap"
    assert child._entry is None
    cancel0()
    cancel2()


def test_cancel_removes_with_fake_clock(clock):
    parent, cancel_parent = tether.with_cancel(bg())
    _child, cancel = tether.with_timeout(parent, 60)
    assert clock.timers() == 1
    cancel()
    assert clock.timers() == 0
    assert not parent._children
    cancel_parent()


def test_cancelled_child_is_not_kept_alive_by_parent_or_heap():
    parent, cancel_parent = tether.with_cancel(bg())
    refs = []
    for make in (tether.with_cancel, lambda p: tether.with_timeout(p, 3600)):
        child, cancel = make(parent)
        refs.append(weakref.ref(child))
        cancel()
        del child, cancel
    import gc

    gc.collect()
    assert [r() for r in refs] == [None, None]
    assert parent.err() is None
    cancel_parent()


# --------------------------------------------------------------------------------------
# TestWithCancelCanceledParent, TestWithCancelSimultaneouslyCanceledParent


def test_with_cancel_canceled_parent(runtime):
    parent, pcancel = tether.with_cancel(bg())
    because = ValueError("Because!")
    pcancel(because)
    for make in (tether.with_cancel, lambda p: tether.with_timeout(p, 3600)):
        c, cancel = make(parent)
        assert c.done().is_set(), "child not done immediately upon construction"
        assert type(c.err()) is tether.Canceled
        assert tether.cause(c) is because
        # A born-ended child is registered nowhere.
        assert c._pnode is None
        assert c._entry is None
        assert runtime.wait(c, 5)
        cancel()


def test_with_cancel_simultaneously_canceled_parent(runtime):
    for i in range(100):
        parent, pcancel = tether.with_cancel(bg())
        because = ValueError("Because!")
        t = threading.Thread(target=pcancel, args=(because,))
        t.start()
        if i % 2:
            c, cancel = tether.with_cancel(parent)
        else:
            c, cancel = tether.with_timeout(parent, 3600)
        assert runtime.wait(c, 5)
        assert type(c.err()) is tether.Canceled
        assert tether.cause(c) is because
        t.join(5)
        cancel()


# --------------------------------------------------------------------------------------
# TestSimultaneousCancels, TestInterlockedCancels


def test_simultaneous_cancels(runtime):
    root, cancel = tether.with_cancel(bg())
    m = {root: cancel}
    q = [root]
    while q and len(m) < 100:
        parent = q.pop(0)
        for _ in range(4):
            ctx, c = tether.with_cancel(parent)
            m[ctx] = c
            q.append(ctx)
    cancels = list(m.values())
    random.shuffle(cancels)
    start = threading.Barrier(len(cancels))

    def run(c):
        start.wait(10)
        c()

    threads = [threading.Thread(target=run, args=(c,)) for c in cancels]
    for t in threads:
        t.start()
    ctxs = list(m)
    random.shuffle(ctxs)
    for ctx in ctxs:
        assert runtime.wait(ctx, 5), "timed out waiting for ctx.done()"
        assert type(ctx.err()) is tether.Canceled
    for t in threads:
        t.join(5)
        assert not t.is_alive(), "timed out waiting for cancel functions"


def test_interlocked_cancels(runtime):
    parent, cancel_parent = tether.with_cancel(bg())
    child, cancel_child = tether.with_cancel(parent)
    if runtime.name == "asyncio":

        async def watch():
            await parent.done()
            cancel_child()

        fut = asyncio.run_coroutine_threadsafe(watch(), runtime.loop)
        runtime.call(asyncio.sleep(0))
    else:
        t = threading.Thread(target=lambda: (parent.done().wait(5), cancel_child()))
        t.start()
    # And the same interlock through an after_func callback.
    tether.after_func(parent, cancel_child)
    cancel_parent()
    assert runtime.wait(child, 5), "timed out waiting for child.done()"
    if runtime.name == "asyncio":
        fut.result(5)
    else:
        t.join(5)


# --------------------------------------------------------------------------------------
# TestCause (the whole table) and TestCauseRace

FOREVER = 1e6
parent_cause = RuntimeError("parentCause")
child_cause = RuntimeError("childCause")
too_slow = RuntimeError("tooSlow")
finished_early = RuntimeError("finishedEarly")

CANCELED = object()  # "the Canceled error itself" (Go: cause == Canceled)
DEADLINE = object()  # "the DeadlineExceeded error itself"


def _background(cleanup):
    return bg()


def _todo(cleanup):
    return tether.todo()


def _with_cancel(cleanup):
    ctx, cancel = tether.with_cancel(bg())
    cancel()
    return ctx


def _with_cancel_cause(cleanup):
    ctx, cancel = tether.with_cancel(bg())
    cancel(parent_cause)
    return ctx


def _with_cancel_cause_nil(cleanup):
    ctx, cancel = tether.with_cancel(bg())
    cancel(None)
    return ctx


def _parent_cause_before_child(cleanup):
    ctx, cancel_parent = tether.with_cancel(bg())
    ctx, cancel_child = tether.with_cancel(ctx)
    cancel_parent(parent_cause)
    cancel_child(child_cause)
    return ctx


def _parent_cause_after_child(cleanup):
    ctx, cancel_parent = tether.with_cancel(bg())
    ctx, cancel_child = tether.with_cancel(ctx)
    cancel_child(child_cause)
    cancel_parent(parent_cause)
    return ctx


def _parent_cause_before_nil(cleanup):
    ctx, cancel_parent = tether.with_cancel(bg())
    ctx, cancel_child = tether.with_cancel(ctx)
    cancel_parent(parent_cause)
    cancel_child()
    return ctx


def _parent_cause_after_nil(cleanup):
    ctx, cancel_parent = tether.with_cancel(bg())
    ctx, cancel_child = tether.with_cancel(ctx)
    cancel_child()
    cancel_parent(parent_cause)
    return ctx


def _child_cause_after_nil(cleanup):
    ctx, cancel_parent = tether.with_cancel(bg())
    ctx, cancel_child = tether.with_cancel(ctx)
    cancel_parent()
    cancel_child(child_cause)
    return ctx


def _child_cause_before_nil(cleanup):
    ctx, cancel_parent = tether.with_cancel(bg())
    ctx, cancel_child = tether.with_cancel(ctx)
    cancel_child(child_cause)
    cancel_parent()
    return ctx


def _with_timeout(cleanup):
    ctx, cancel = tether.with_timeout(bg(), 0)
    cancel()
    return ctx


def _with_timeout_canceled(cleanup):
    ctx, cancel = tether.with_timeout(bg(), FOREVER)
    cancel()
    return ctx


def _with_timeout_cause(cleanup):
    ctx, cancel = tether.with_timeout(bg(), 0, too_slow)
    cancel()
    return ctx


def _with_timeout_cause_canceled(cleanup):
    ctx, cancel = tether.with_timeout(bg(), FOREVER, too_slow)
    cancel()
    return ctx


def _with_timeout_cause_stacked(cleanup):
    ctx, cancel = tether.with_cancel(bg())
    ctx, cancel2 = tether.with_timeout(ctx, 0, too_slow)
    cleanup.append(cancel2)
    cancel(finished_early)
    return ctx


def _with_timeout_cause_stacked_canceled(cleanup):
    ctx, cancel = tether.with_cancel(bg())
    ctx, cancel2 = tether.with_timeout(ctx, FOREVER, too_slow)
    cleanup.append(cancel2)
    cancel(finished_early)
    return ctx


def _without_cancel(cleanup):
    return tether.without_cancel(bg())


def _without_cancel_canceled(cleanup):
    ctx, cancel = tether.with_cancel(bg())
    ctx = tether.without_cancel(ctx)
    cancel(finished_early)
    return ctx


def _without_cancel_timeout(cleanup):
    ctx, cancel = tether.with_timeout(bg(), 0, too_slow)
    ctx = tether.without_cancel(ctx)
    cancel()
    return ctx


CAUSE_TABLE = [
    ("Background", _background, None, None),
    ("TODO", _todo, None, None),
    ("WithCancel", _with_cancel, tether.Canceled, CANCELED),
    ("WithCancelCause", _with_cancel_cause, tether.Canceled, parent_cause),
    ("WithCancelCause nil", _with_cancel_cause_nil, tether.Canceled, CANCELED),
    ("parent cause before child", _parent_cause_before_child, tether.Canceled, parent_cause),
    ("parent cause after child", _parent_cause_after_child, tether.Canceled, child_cause),
    ("parent cause before nil", _parent_cause_before_nil, tether.Canceled, parent_cause),
    ("parent cause after nil", _parent_cause_after_nil, tether.Canceled, CANCELED),
    ("child cause after nil", _child_cause_after_nil, tether.Canceled, CANCELED),
    ("child cause before nil", _child_cause_before_nil, tether.Canceled, child_cause),
    ("WithTimeout", _with_timeout, tether.DeadlineExceeded, DEADLINE),
    ("WithTimeout canceled", _with_timeout_canceled, tether.Canceled, CANCELED),
    ("WithTimeoutCause", _with_timeout_cause, tether.DeadlineExceeded, too_slow),
    ("WithTimeoutCause canceled", _with_timeout_cause_canceled, tether.Canceled, CANCELED),
    ("WithTimeoutCause stacked", _with_timeout_cause_stacked, tether.DeadlineExceeded, too_slow),
    (
        "WithTimeoutCause stacked canceled",
        _with_timeout_cause_stacked_canceled,
        tether.Canceled,
        finished_early,
    ),
    ("WithoutCancel", _without_cancel, None, None),
    ("WithoutCancel canceled", _without_cancel_canceled, None, None),
    ("WithoutCancel timeout", _without_cancel_timeout, None, None),
]


@pytest.mark.parametrize(
    ("make", "err", "want"), [t[1:] for t in CAUSE_TABLE], ids=[t[0] for t in CAUSE_TABLE]
)
def test_cause(make, err, want):
    cleanup: list[tether.CancelFunc] = []
    ctx = make(cleanup)
    got = tether.cause(ctx)
    if err is None:
        assert ctx.err() is None
        assert got is None
    else:
        assert type(ctx.err()) is err
        if want is CANCELED or want is DEADLINE:
            assert got is ctx.err()
        else:
            assert got is want
    # A descendant of an ended context reports the same error and cause.
    child = tether.with_value(ctx, "k", "v")
    assert tether.cause(child) is got
    assert child.err() is ctx.err()
    for c in cleanup:
        c()


def test_cause_of_fired_deadline_propagates(clock):
    parent, cancel_parent = tether.with_timeout(bg(), 1, too_slow)
    child, cancel_child = tether.with_cancel(parent)
    grandchild = tether.with_value(child, "k", "v")
    clock.advance(1)
    for c in (parent, child, grandchild):
        assert type(c.err()) is tether.DeadlineExceeded
        assert tether.cause(c) is too_slow
    with pytest.raises(tether.DeadlineExceeded) as info:
        grandchild.check()
    assert info.value.__cause__ is too_slow
    cancel_child(finished_early)  # too late: the first end wins
    assert tether.cause(child) is too_slow
    cancel_parent()


def test_cause_race(runtime):
    for _ in range(200):
        because = RuntimeError("TestCauseRace")
        ctx, cancel = tether.with_cancel(bg())
        t = threading.Thread(target=cancel, args=(because,))
        t.start()
        while True:
            # Poll cause(), rather than waiting for done, so that a torn read shows.
            got = tether.cause(ctx)
            if got is not None:
                assert got is because
                break
            time.sleep(0)
        t.join(5)
    # And the same race seen from the runtime: woken, the cause is already there.
    ctx, cancel = tether.with_cancel(bg())
    because = RuntimeError("woken")
    w = runtime.waiter(ctx)
    on_runtime(runtime, lambda: cancel(because))
    w.result(5)
    assert tether.cause(ctx) is because


# --------------------------------------------------------------------------------------
# TestWithoutCancel


def test_without_cancel(runtime, clock):
    key, value = "key", "value"
    parent, cancel = tether.with_timeout(tether.with_value(bg(), key, value), 1)
    ctx = tether.without_cancel(parent)
    for _ in range(2):
        assert ctx.deadline() is None
        assert ctx.remaining() is None
        assert_live(runtime, ctx)
        assert ctx.value(key) == value
        assert repr(ctx).endswith(".without_cancel [live]>")
        # A child derived from it is registered nowhere: the original parent's end does
        # not reach it.
        child, cancel_child = tether.with_cancel(ctx)
        assert child._pnode is None
        clock.advance(1)  # the first time round, this ends the parent
        assert type(parent.err()) is tether.DeadlineExceeded
        assert child.err() is None
        cancel_child()
    cancel()


# --------------------------------------------------------------------------------------
# The AfterFunc tests


def test_after_func_called_after_cancel(runtime):
    ctx, cancel = tether.with_cancel(bg())
    called = threading.Event()
    stop = tether.after_func(ctx, called.set)
    assert not called.wait(0.02), "after_func called before the context is done"
    on_runtime(runtime, cancel)
    assert called.wait(5), "after_func not called after the context is canceled"
    assert stop() is False


def test_after_func_called_after_timeout(clock):
    ctx, cancel = tether.with_timeout(bg(), 0.25)
    called = threading.Event()
    tether.after_func(ctx, called.set)
    clock.advance(0.25)
    assert called.wait(5), "after_func not called after the deadline"
    cancel()


def test_after_func_called_immediately():
    ctx, cancel = tether.with_cancel(bg())
    cancel()
    called = threading.Event()
    tether.after_func(ctx, called.set)
    assert called.wait(5), "after_func not called for an already-canceled context"


def test_after_func_not_called_after_stop():
    ctx, cancel = tether.with_cancel(bg())
    called = threading.Event()
    stop = tether.after_func(ctx, called.set)
    assert stop() is True
    cancel()
    assert not called.wait(0.05), "after_func called after stop()"
    assert stop() is False


def test_after_func_called_asynchronously(runtime):
    # cancel() must not wait for the callback: the callback blocks until cancel returned.
    ctx, cancel = tether.with_cancel(bg())
    cancel_returned = threading.Event()
    saw: list[bool] = []
    finished = threading.Event()

    def fn():
        saw.append(cancel_returned.wait(5))
        finished.set()

    stop = tether.after_func(ctx, fn)
    on_runtime(runtime, cancel)
    cancel_returned.set()
    assert finished.wait(10)
    assert saw == [True], "cancel() waited for the after_func callback"
    assert stop() is False


def test_after_func_unregisters_on_stop():
    # Go's TestCustomContextAfterFuncUnregister*: stop() leaves nothing registered.
    ctx, cancel = tether.with_cancel(bg())
    stop = tether.after_func(ctx, lambda: None)
    assert n_waiters(ctx) == 1
    assert stop() is True
    assert n_waiters(ctx) == 0
    cancel()


# --------------------------------------------------------------------------------------
# TestContextErrDoneRace (go.dev/issue/67889): err() never non-None while done is unset


def test_context_err_done_race(runtime):
    for i in range(300):
        ctx, cancel = tether.with_cancel(bg())
        t = threading.Thread(target=cancel)
        t.start()
        while ctx.err() is None:
            time.sleep(0)
        assert ctx.done().is_set(), "ctx.err() is set but ctx.done() is not"
        assert ctx.done().wait(0) is True
        if i % 30 == 0:
            assert runtime.wait(ctx, 5)
        t.join(5)
