"""tether.integrations.sqlite3.bind: statements stop when the context ends."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

import tether
from tether import _clock
from tether.integrations import sqlite3 as tsqlite

# A recursive CTE that would count for minutes (10**10 rows).
FOREVER = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
    "SELECT count(*) FROM (SELECT x FROM c LIMIT 10000000000)"
)


@pytest.fixture
def conn():
    c = sqlite3.connect(":memory:", check_same_thread=False)
    c.execute("CREATE TABLE t (x INTEGER)")
    c.commit()
    try:
        yield c
    finally:
        c.close()


def usable(conn: sqlite3.Connection) -> None:
    assert conn.execute("SELECT 41 + 1").fetchone() == (42,)
    assert not conn.in_transaction


@pytest.mark.realtime
def test_deadline_interrupts_a_statement_that_would_run_for_minutes(conn):
    with tether.with_timeout(tether.background(), 0.1) as ctx:
        t0 = time.monotonic()
        with pytest.raises(tether.DeadlineExceeded) as ei, tsqlite.bind(ctx, conn):
            conn.execute(FOREVER).fetchall()
        lag = time.monotonic() - ctx.deadline()  # type: ignore[operator]
    assert isinstance(ei.value.__cause__, sqlite3.OperationalError)
    assert str(ei.value.__cause__) == "interrupted"
    assert time.monotonic() - t0 < 5
    assert lag < 1.0, lag
    usable(conn)


@pytest.mark.realtime
def test_cancel_from_another_thread_interrupts(conn):
    ctx, cancel = tether.with_cancel(tether.background())
    timer = threading.Timer(0.05, cancel, args=(ValueError("client went away"),))
    timer.start()
    try:
        with pytest.raises(tether.Canceled) as ei, tsqlite.bind(ctx, conn):
            conn.execute(FOREVER).fetchall()
    finally:
        timer.join()
        cancel()
    assert isinstance(ei.value.__cause__, sqlite3.OperationalError)
    # the context's own cause is still said
    assert any("client went away" in n for n in getattr(ei.value, "__notes__", []))
    assert tether.cause(ctx).args == ("client went away",)
    usable(conn)


def test_ended_context_raises_on_entry_and_touches_nothing(conn):
    ctx, cancel = tether.with_cancel(tether.background())
    cancel()
    seen: list[str] = []
    conn.set_trace_callback(seen.append)
    ran = []

    def body() -> None:
        with tsqlite.bind(ctx, conn):
            ran.append(1)
            conn.execute("SELECT 1")

    with pytest.raises(tether.Canceled):
        body()
    conn.set_trace_callback(None)
    assert not ran
    assert seen == []


def test_passed_deadline_raises_on_entry_even_before_the_timer_fired(conn, monkeypatch):
    with tether.with_timeout(tether.background(), 60) as ctx:
        real = _clock.now
        monkeypatch.setattr(_clock, "now", lambda: real() + 120)
        with pytest.raises(tether.DeadlineExceeded), tsqlite.bind(ctx, conn):
            pytest.fail("the block ran")
        monkeypatch.setattr(_clock, "now", real)


def test_progress_handler_stops_a_statement_when_the_timer_is_late(conn, monkeypatch):
    # The deadline is 60 s away for the timer thread; the progress handler reads a clock
    # that says it passed, as it would if the timer thread were starved.
    with tether.with_timeout(tether.background(), 60) as ctx:
        real = _clock.now
        t0 = time.monotonic()

        def body() -> None:
            with tsqlite.bind(ctx, conn):
                monkeypatch.setattr(_clock, "now", lambda: real() + 120)
                conn.execute(FOREVER).fetchall()

        with pytest.raises(tether.DeadlineExceeded) as ei:
            body()
        monkeypatch.setattr(_clock, "now", real)
        assert ctx.err() is None  # the timer did not fire: the handler did it
    assert time.monotonic() - t0 < 5
    assert isinstance(ei.value.__cause__, sqlite3.OperationalError)
    usable(conn)


def test_a_statement_started_after_the_interrupt_still_stops(conn):
    # sqlite3_interrupt() is forgotten when no statement runs; the progress handler is
    # what stops the next statement.
    ctx, cancel = tether.with_cancel(tether.background())

    def body() -> None:
        with tsqlite.bind(ctx, conn):
            conn.execute("SELECT 1").fetchall()
            cancel()
            time.sleep(0.05)  # the after_func worker calls conn.interrupt() between statements
            conn.execute(FOREVER).fetchall()

    with pytest.raises(tether.Canceled):
        body()
    usable(conn)


def test_a_transaction_begun_in_the_block_is_rolled_back(conn):
    ctx, cancel = tether.with_cancel(tether.background())
    threading.Timer(0.05, cancel).start()

    def body() -> None:
        with tsqlite.bind(ctx, conn):
            conn.execute("INSERT INTO t VALUES (1)")
            assert conn.in_transaction
            conn.execute(FOREVER).fetchall()

    with pytest.raises(tether.Canceled):
        body()
    cancel()
    assert not conn.in_transaction
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)


def test_a_transaction_open_on_entry_is_left_to_the_caller(conn):
    conn.execute("INSERT INTO t VALUES (1)")
    assert conn.in_transaction
    ctx, cancel = tether.with_cancel(tether.background())
    cancel()
    with pytest.raises(tether.Canceled), tsqlite.bind(ctx, conn):
        pass
    assert conn.in_transaction
    conn.commit()
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (1,)


def test_unrelated_errors_pass_through_untouched(conn):
    with tether.with_timeout(tether.background(), 60) as ctx:
        with pytest.raises(sqlite3.OperationalError, match="no such table"):
            with tsqlite.bind(ctx, conn):
                conn.execute("SELECT * FROM missing")
        with pytest.raises(KeyError), tsqlite.bind(ctx, conn):
            raise KeyError("x")
        # an "interrupted" while the context lives is not the context's
        with pytest.raises(sqlite3.OperationalError, match="interrupted"):
            with tsqlite.bind(ctx, conn, previous=(lambda: 1, 100)):
                conn.execute(FOREVER).fetchall()
    usable(conn)


def test_results_inside_a_live_context_are_unchanged(conn):
    with tether.with_timeout(tether.background(), 60) as ctx, tsqlite.bind(ctx, conn) as c:
        assert c is conn
        assert c.execute("SELECT 2").fetchone() == (2,)


def test_previous_progress_handler_is_chained_and_restored(conn):
    calls = []

    def mine() -> int:
        calls.append(1)
        return 0

    conn.set_progress_handler(mine, 100)
    with tether.with_timeout(tether.background(), 60) as ctx:
        with tsqlite.bind(ctx, conn, previous=(mine, 100)):
            conn.execute("SELECT count(*) FROM (SELECT 1 UNION ALL SELECT 2)").fetchall()
            n = len(calls)
            conn.execute(FOREVER.replace("10000000000", "20000")).fetchall()
            assert len(calls) > n  # chained
        calls.clear()
        conn.execute(FOREVER.replace("10000000000", "20000")).fetchall()
        assert calls  # restored


def test_progress_handler_is_removed_on_exit(conn):
    ctx, cancel = tether.with_cancel(tether.background())
    with tsqlite.bind(ctx, conn):
        pass
    cancel()  # the binding no longer watches: nothing interrupts later statements
    time.sleep(0.02)
    assert conn.execute(FOREVER.replace("10000000000", "200000")).fetchone() == (200000,)


def test_nested_binds_restore_the_outer_one(conn):
    outer_ctx, cancel_outer = tether.with_cancel(tether.background())
    with tsqlite.bind(outer_ctx, conn):
        with tether.with_timeout(outer_ctx, 60) as inner_ctx, tsqlite.bind(inner_ctx, conn):
            conn.execute("SELECT 1")
        cancel_outer()
        with pytest.raises(sqlite3.OperationalError):  # raised by the outer handler
            conn.execute(FOREVER).fetchall()
        assert tsqlite._installed  # the outer bind is still registered
    assert not tsqlite._installed


def test_misuse():
    conn = sqlite3.connect(":memory:")
    try:
        with pytest.raises(TypeError, match=r"^tether: parent context is None"):
            tsqlite.bind(None, conn)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"^tether: every must be"):
            tsqlite.bind(tether.background(), conn, every=0)
        with pytest.raises(TypeError, match=r"^tether: bind\(ctx, conn\) needs a sqlite3"):
            tsqlite.bind(tether.background(), "app.db")  # type: ignore[arg-type]
    finally:
        conn.close()


@pytest.mark.parametrize(
    "make",
    [tether.background, tether.todo, lambda: tether.without_cancel(tether.background())],
)
def test_a_context_that_cannot_end_installs_nothing(conn, make):
    calls = []
    conn.set_progress_handler(lambda: calls.append(1) or 0, 10)
    with tsqlite.bind(make(), conn):
        assert not tsqlite._installed
        assert conn.execute(FOREVER.replace("10000000000", "1000")).fetchone() == (1000,)
    assert calls  # the caller's handler was neither replaced nor removed


def test_a_closed_connection_raises_sqlites_error_and_registers_nothing():
    conn = sqlite3.connect(":memory:")
    conn.close()
    with tether.with_timeout(tether.background(), 60) as ctx:
        with pytest.raises(sqlite3.ProgrammingError), tsqlite.bind(ctx, conn):
            pass
    assert not tsqlite._installed


def test_a_connection_closed_in_the_block():
    conn = sqlite3.connect(":memory:")
    with tether.with_timeout(tether.background(), 60) as ctx:

        def body() -> None:
            with tsqlite.bind(ctx, conn):
                conn.close()
                raise ValueError("mine")  # not masked by the restore on a closed connection

        with pytest.raises(ValueError, match="mine"):
            body()
        with pytest.raises(sqlite3.ProgrammingError), tsqlite.bind(ctx, conn):
            pass
    assert not tsqlite._installed
