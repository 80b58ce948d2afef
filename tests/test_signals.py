"""signal_context: Go's signal.NotifyContext, and the escalation on a second signal."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import tether
from tether import _context, lifecycle
from tether.lifecycle import _signals

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

USR1 = signal.SIGUSR1
USR2 = signal.SIGUSR2


@pytest.fixture(autouse=True)
def _clean_registry():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, USR1, USR2)}
    yield
    assert _signals._active_signals() == {}, "a test left a signal context registered"
    for s, h in before.items():
        assert signal.getsignal(s) is h, f"{signal.Signals(s).name} handler not restored"


def test_default_signals_are_sigint_and_sigterm():
    with lifecycle.signal_context() as ctx:
        assert _signals._active_signals() == {signal.SIGINT: 1, signal.SIGTERM: 1}
        assert signal.getsignal(signal.SIGINT) is _signals._handle
        assert signal.getsignal(signal.SIGTERM) is _signals._handle
        assert tether.current() is ctx
    assert ctx.err() is not None


def test_signal_cancels_with_signal_received_cause():
    ctx, stop = lifecycle.signal_context(USR1)
    try:
        assert ctx.err() is None
        signal.raise_signal(USR1)
        assert ctx.done().wait(5)
        assert isinstance(ctx.err(), tether.Canceled)
        why = tether.cause(ctx)
        assert isinstance(why, lifecycle.SignalReceived)
        assert why.signum == USR1
        assert why.name == "SIGUSR1"
        assert str(why) == "received SIGUSR1"
        with pytest.raises(tether.Canceled) as info:
            ctx.check()
        assert info.value.__cause__ is why
    finally:
        stop()


def test_signal_wakes_waiters(runtime):
    with lifecycle.signal_context(USR1) as ctx:
        fut = runtime.waiter(ctx)
        signal.raise_signal(USR1)
        fut.result(5)
        assert isinstance(tether.cause(ctx), lifecycle.SignalReceived)


def test_stop_cancels_without_signal_cause_and_restores_handlers():
    seen = []

    def mine(signum, frame):
        seen.append(signum)

    old = signal.signal(USR1, mine)
    try:
        ctx, stop = lifecycle.signal_context(USR1)
        assert signal.getsignal(USR1) is _signals._handle
        stop()
        assert signal.getsignal(USR1) is mine
        assert isinstance(ctx.err(), tether.Canceled)
        assert tether.cause(ctx) is ctx.err()
        stop()  # idempotent
        signal.raise_signal(USR1)
        assert seen == [USR1]
    finally:
        signal.signal(USR1, old)


def test_stop_after_the_signal_still_restores():
    ctx, stop = lifecycle.signal_context(USR1)
    signal.raise_signal(USR1)
    assert ctx.done().wait(5)
    assert signal.getsignal(USR1) is _signals._handle  # still ours: a second one escalates
    stop()
    assert signal.getsignal(USR1) is signal.SIG_DFL


def test_only_the_given_signals_are_touched():
    before = signal.getsignal(signal.SIGTERM)
    with lifecycle.signal_context(USR1, USR1, USR2):
        assert signal.getsignal(signal.SIGTERM) is before
        assert _signals._active_signals() == {USR1: 1, USR2: 1}


def test_several_contexts_share_a_signal_and_restore_when_the_last_stops():
    a, stop_a = lifecycle.signal_context(USR1)
    b, stop_b = lifecycle.signal_context(USR1, USR2)
    try:
        signal.raise_signal(USR1)
        assert a.done().wait(5)
        assert b.done().wait(5)
        stop_a()
        assert signal.getsignal(USR1) is _signals._handle  # b still uses it
        stop_b()
        assert signal.getsignal(USR1) is signal.SIG_DFL
        assert signal.getsignal(USR2) is signal.SIG_DFL
    finally:
        stop_a()
        stop_b()


def test_parent_values_are_kept_and_parent_cancel_propagates():
    key = tether.Key[str]("k")
    with tether.with_cancel(tether.background()) as p:
        pv = tether.with_value(p, key, "v")
        with lifecycle.signal_context(USR1, parent=pv) as ctx:
            assert ctx.value(key) == "v"
            assert ctx.err() is None
        assert ctx.err() is not None


def test_parent_already_ended_gives_a_born_ended_context():
    p, cancel = tether.with_cancel(tether.background())
    cancel(ValueError("gone"))
    with lifecycle.signal_context(USR1, parent=p) as ctx:
        assert isinstance(ctx.err(), tether.Canceled)
        assert isinstance(tether.cause(ctx), ValueError)
        assert signal.getsignal(USR1) is _signals._handle


def test_handler_takes_no_lock_so_a_signal_inside_the_tree_lock_cannot_deadlock():
    # Python runs the handler between two bytecodes of the main thread, possibly while
    # it holds the core's lock: cancelling there would deadlock. The helper thread does.
    with lifecycle.signal_context(USR1) as ctx:
        with _context._LOCK:
            signal.raise_signal(USR1)
            assert ctx.err() is None  # the helper waits for the lock
        assert ctx.done().wait(5)


def test_stop_from_another_thread_hands_the_next_signal_to_the_old_handler():
    seen = []

    def mine(signum, frame):
        seen.append(signum)

    old = signal.signal(USR1, mine)
    try:
        ctx, stop = lifecycle.signal_context(USR1)
        t = threading.Thread(target=stop)
        t.start()
        t.join()
        assert ctx.err() is not None
        assert _signals._active_signals() == {}
        assert signal.getsignal(USR1) is _signals._handle  # only the main thread may restore
        signal.raise_signal(USR1)
        assert seen == [USR1]
        assert signal.getsignal(USR1) is mine
    finally:
        signal.signal(USR1, old)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_keeps_working_signal_contexts():
    with lifecycle.signal_context(USR1) as ctx:
        pid = os.fork()
        if pid == 0:  # the child: the helper thread is gone; a new one must take over
            code = 1
            try:
                signal.raise_signal(USR1)
                if ctx.done().wait(10) and isinstance(tether.cause(ctx), lifecycle.SignalReceived):
                    with lifecycle.signal_context(USR2):  # the registry lock is free
                        code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert ctx.err() is None  # the parent's context is untouched


def test_off_the_main_thread_is_a_clear_error():
    errors = []

    def body():
        try:
            lifecycle.signal_context(USR1)
        except RuntimeError as e:
            errors.append(e)

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert len(errors) == 1
    assert str(errors[0]).startswith("tether: signal_context() must be called from the main")
    assert signal.getsignal(USR1) is signal.SIG_DFL


@pytest.mark.parametrize(
    ("args", "kwargs", "exc", "match"),
    [
        (("SIGTERM",), {}, TypeError, "signal numbers"),
        ((True,), {}, TypeError, "signal numbers"),
        ((1.5,), {}, TypeError, "signal numbers"),
        ((0,), {}, ValueError, "not a signal number"),
        ((99999,), {}, ValueError, "not a signal number"),
        ((signal.SIGKILL,), {}, ValueError, "SIGKILL cannot be caught"),
        ((signal.SIGSTOP,), {}, ValueError, "SIGSTOP cannot be caught"),
        ((USR1,), {"parent": None}, TypeError, "parent context is None"),
    ],
)
def test_bad_arguments(args, kwargs, exc, match):
    with pytest.raises(exc, match=match) as info:
        lifecycle.signal_context(*args, **kwargs)
    assert str(info.value).startswith("tether:")


def test_async_with_interrupts_the_task_in_the_main_thread_loop():
    async def main():
        async with lifecycle.signal_context(USR1):
            asyncio.get_running_loop().call_later(0.01, signal.raise_signal, USR1)
            await asyncio.sleep(30)

    with pytest.raises(tether.Canceled) as info:
        asyncio.run(main())
    assert isinstance(info.value.__cause__, lifecycle.SignalReceived)


def test_a_signal_delivered_to_another_thread_still_wakes_the_loop():
    # On Linux a process-directed signal goes to the main thread; one aimed at another
    # thread only flags the main thread, so the loop must be woken through a wakeup fd.
    # Without it, the loop below would sleep its full 30 seconds.
    def poke(ready):
        ready.wait(5)
        signal.pthread_kill(threading.get_ident(), USR1)

    async def main():
        ready = threading.Event()
        t = threading.Thread(target=poke, args=(ready,))
        try:
            async with lifecycle.signal_context(USR1):
                t.start()
                ready.set()
                await asyncio.sleep(30)
        finally:
            await asyncio.to_thread(t.join)

    start = time.monotonic()
    with pytest.raises(tether.Canceled) as info:
        asyncio.run(main())
    assert time.monotonic() - start < 20
    assert isinstance(info.value.__cause__, lifecycle.SignalReceived)
    assert signal.set_wakeup_fd(-1) == -1  # and the wakeup fd was removed


def test_repr_shows_state():
    scope = lifecycle.signal_context(USR1)
    assert "SignalScope" in repr(scope)
    assert "active for SIGUSR1" in repr(scope.stop)
    assert scope.ctx is scope[0]
    scope.stop()
    assert "stopped" in repr(scope[1])


def test_scope_is_entered_once():
    scope = lifecycle.signal_context(USR1)
    with scope:
        pass
    with pytest.raises(RuntimeError, match=r"tether: .*already entered"), scope:
        pass


def test_stop_func_cannot_be_constructed():
    with pytest.raises(TypeError, match="tether:"):
        lifecycle.StopFunc()


def test_dropping_an_unstopped_scope_warns():
    def leak():
        lifecycle.signal_context(USR1)
        gc.collect()

    with pytest.warns(tether.LostCancelWarning, match="without stop"):
        leak()
    # clean up what the leak left registered
    (entry,) = _signals._entries[USR1]
    entry.cancel()
    _signals._unregister(entry, (USR1,))
    _signals._release_helper()


ESCALATE = textwrap.dedent(
    """
    import signal, sys
    from tether import lifecycle

    sig = getattr(signal, sys.argv[1])
    with lifecycle.signal_context() as ctx:
        signal.raise_signal(sig)
        assert ctx.done().wait(5)
        print("first handled", flush=True)
        signal.raise_signal(sig)
        print("not reached", flush=True)
    """
)


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_a_second_signal_exits_at_once_killed_by_it(name):
    proc = subprocess.run(
        [sys.executable, "-c", ESCALATE, name], capture_output=True, text=True, timeout=60
    )
    assert proc.stdout == "first handled\n"
    assert proc.returncode == -getattr(signal, name)
    assert f"tether: second {name} during shutdown: exiting now" in proc.stderr
