"""LostCancelWarning: a cancel function garbage-collected un-called while its context is
live warns, naming the line that derived the context (Go's `go vet` lostcancel, at run
time, for real leaks only)."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import textwrap
import warnings

import pytest

import tether
from tether.testing import FakeClock

bg = tether.background


class Lost:
    """Collects LostCancelWarnings (overriding the suite's error filter) for a block."""

    def __enter__(self) -> list[warnings.WarningMessage]:
        self._cm = warnings.catch_warnings(record=True)
        self.records = self._cm.__enter__()
        warnings.simplefilter("always")
        return self.records

    def __exit__(self, *exc: object) -> None:
        gc.collect()
        self._cm.__exit__(*exc)

    @property
    def lost(self) -> list[warnings.WarningMessage]:
        return [r for r in self.records if issubclass(r.category, tether.LostCancelWarning)]


def _line() -> int:
    return sys._getframe(1).f_lineno + 1  # the line after the caller's


@pytest.mark.parametrize("cyclic", [False, True], ids=["refcount", "cycle-collector"])
def test_warns_with_the_creation_site(cyclic):
    parent, cancel_parent = tether.with_cancel(bg())
    lost = Lost()
    with lost:
        line = _line()
        ctx, cancel = tether.with_cancel(parent)
        if cyclic:  # freed by the collector: reported by the end of the pass that freed it
            cycle: list[object] = [cancel]
            cycle.append(cycle)
            del cancel, cycle
            gc.collect()
        else:
            del cancel  # dropped un-called while ctx is live
        [w] = lost.lost
    assert w.filename == __file__
    assert w.lineno == line
    msg = str(w.message)
    assert msg.startswith("tether:")
    assert f"{__file__}:{line}" in msg
    assert "cancel()" in msg  # says what to do instead
    assert ctx.err() is None
    cancel_parent()  # the lost context lived until its parent ended


@pytest.mark.parametrize("kind", ["with_timeout", "with_deadline"])
def test_warns_for_deadlines_too(kind):
    with FakeClock(start=1000.0) as clock:
        lost = Lost()
        with lost:
            line = _line()
            scope = getattr(tether, kind)(bg(), 1000 + 5 if kind == "with_deadline" else 5)
            del scope
        [w] = lost.lost
        assert (w.filename, w.lineno) == (__file__, line)
        assert clock.timers() == 1  # the real leak: still armed
        clock.advance(5)  # ...until its deadline


def test_no_warning_where_nothing_leaks():
    # A child of background() without a deadline is registered nowhere and armed
    # nowhere: dropping its cancel function leaks nothing, so a warning would be false.
    lost = Lost()
    with lost:
        tether.with_cancel(bg())  # the pair is dropped at once
        tether.with_cancel(tether.with_value(bg(), "k", 1))
    assert lost.lost == []


def test_warns_under_a_cancellable_parent():
    parent, cancel_parent = tether.with_cancel(bg())
    lost = Lost()
    with lost:
        line = _line()
        tether.with_cancel(parent)  # registered with parent until it ends: a real leak
    [w] = lost.lost
    assert w.lineno == line
    cancel_parent()


def test_warns_from_a_nested_helper_at_the_helper_line():
    parent, cancel_parent = tether.with_cancel(bg())

    def helper(p):
        return tether.with_cancel(p)[0]  # the cancel function is thrown away

    lost = Lost()
    with lost:
        helper(parent)
    [w] = lost.lost
    assert w.lineno == helper.__code__.co_firstlineno + 1
    cancel_parent()


def test_category_is_a_resource_warning():
    assert issubclass(tether.LostCancelWarning, ResourceWarning)


def _no_warning(block) -> None:
    lost = Lost()
    with lost:
        block()
    assert lost.lost == []


def test_not_emitted_when_cancelled():
    def block():
        _ctx, cancel = tether.with_cancel(bg())
        cancel()
        del cancel
        _, cancel2 = tether.with_timeout(bg(), 60)
        cancel2(ValueError("done"))

    _no_warning(block)


def test_not_emitted_when_entered():
    async def in_task():
        async with tether.with_timeout(bg(), 60):
            pass

    def block():
        with tether.with_cancel(bg()):
            pass
        asyncio.run(in_task())

    _no_warning(block)


def test_not_emitted_when_the_deadline_already_fired():
    with FakeClock(start=1000.0) as clock:

        def block():
            _, cancel = tether.with_timeout(bg(), 1)
            clock.advance(1)
            del cancel

        _no_warning(block)


def test_not_emitted_when_born_ended_or_ended_by_the_parent():
    def block():
        tether.with_timeout(bg(), 0)  # born expired
        parent, cancel_parent = tether.with_cancel(bg())
        _, cancel = tether.with_cancel(parent)
        cancel_parent()  # ends the child before its cancel function is dropped
        del cancel
        tether.with_cancel(parent)  # born ended under an ended parent

    _no_warning(block)


def _run(code: str, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *flags, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
    )


LOSE = """
import gc, tether
parent, cancel_parent = tether.with_cancel(tether.background())
def handler():
    ctx, cancel = tether.with_cancel(parent)  # line 5
handler()
gc.collect()
cancel_parent()
"""


def test_shown_by_default_unlike_other_resource_warnings():
    # Issue 8 item 5: plain `python` shows a lost cancel (tests/test_issue8_warnings.py
    # covers -W error and the user's own options winning).
    proc = _run(LOSE)
    assert proc.returncode == 0
    assert "LostCancelWarning" in proc.stderr
    assert "<string>:5" in proc.stderr


@pytest.mark.parametrize("flags", [("-X", "dev"), ("-W", "default")], ids=["dev", "default"])
def test_shown_with_warnings_enabled(flags):
    proc = _run(LOSE, *flags)
    assert proc.returncode == 0, proc.stderr
    assert "LostCancelWarning" in proc.stderr
    assert "<string>:5" in proc.stderr


def test_not_emitted_at_interpreter_exit():
    # A program-lifetime context (e.g. a module-level root) is not a leak at exit.
    code = """
    import tether
    ROOT, STOP = tether.with_cancel(tether.background())
    CHILD, STOP_CHILD = tether.with_timeout(ROOT, 3600)
    """
    proc = _run(code, "-X", "dev", "-W", "error::ResourceWarning")
    assert proc.returncode == 0, proc.stderr
    assert "LostCancelWarning" not in proc.stderr


def _cyclic_generator(parent: tether.Context, holder: list[tether.Context], early: bool) -> None:
    """A generator suspended before its `finally: cancel()`, made cyclic garbage: the
    collector runs its finalizer (which cancels) in the same pass that drops the cancel
    function, and finalizes the older object first. ``early``: the cancel function is
    made before the generator (so it is finalized first, and its context is still live
    when it is)."""

    def gen(cancel: tether.CancelFunc | None):  # type: ignore[no-untyped-def]
        if cancel is None:
            ctx, cancel = tether.with_cancel(parent)
            holder.append(ctx)
        try:
            yield
        finally:
            cancel()

    if early:
        ctx, cancel = tether.with_cancel(parent)
        holder.append(ctx)
        g = gen(cancel)
        del cancel
    else:
        g = gen(None)
    next(g)
    cycle: list[object] = [g]
    cycle.append(cycle)


def test_no_warning_when_the_same_garbage_cancels_it():
    # The cycle collector may finalize the cancel function before the generator whose
    # `finally` calls it; the verdict waits for the end of the pass (it used to warn).
    parent, cancel_parent = tether.with_cancel(bg())
    made: list[tether.Context] = []
    lost = Lost()
    with lost:
        for i in range(50):  # both finalization orders
            _cyclic_generator(parent, made, early=i % 2 == 0)
        gc.collect()
    assert lost.lost == []
    assert len(made) == 50
    assert all(isinstance(c.err(), tether.Canceled) for c in made)
    cancel_parent()


def test_dropped_inside_a_critical_section_is_judged_when_it_ends():
    # A finalizer that runs while this thread holds the tree lock (the collector, or a
    # refcount drop in tether's own bookkeeping) has its cancel() deferred until the
    # section ends; a cancel function dropped there is judged after that, not before.
    from tether import _context

    parent, cancel_parent = tether.with_cancel(bg())
    lost = Lost()
    with lost:
        saved, cancel_saved = tether.with_cancel(parent)  # cancelled, late but surely
        line = _line()
        leaked, cancel_leaked = tether.with_cancel(parent)  # never cancelled
        _context._LOCK.acquire()
        try:
            keep = cancel_saved
            del cancel_saved, cancel_leaked  # (refcount: __del__ inside the section)
            keep()  # re-entered: deferred until the section ends
            del keep
            assert lost.lost == []  # no verdict yet
            assert saved.err() is None
        finally:
            _context._LOCK.release()
        _context._run_deferred()  # what the section's owner does on leaving it
        [w] = lost.lost
    assert w.lineno == line
    assert isinstance(saved.err(), tether.Canceled)
    assert leaked.err() is None
    cancel_parent()
