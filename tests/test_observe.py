"""The core's hook point (tether._observe): what observers are told, and when."""

from __future__ import annotations

import logging
import threading

import pytest

import tether
from tether import _observe
from tether.testing import FakeClock


class Recorder:
    def __init__(self) -> None:
        self.created: list[tuple[tether.Context, tether.Context, str]] = []
        self.ended: list[tuple[tether.Context, str]] = []

    def on_create(self, ctx, parent, kind):
        self.created.append((ctx, parent, kind))

    def on_end(self, ctx, reason):
        self.ended.append((ctx, reason))


@pytest.fixture
def rec():
    r = Recorder()
    _observe.add_observer(r)
    yield r
    _observe.remove_observer(r)
    assert tether._context._observer is None


def test_create_and_end_reasons(rec):
    bg = tether.background()
    parent, cancel_parent = tether.with_cancel(bg)
    child, cancel_child = tether.with_cancel(parent)
    tether.with_value(child, "k", 1)  # not an owner: not reported
    tether.without_cancel(child)
    assert [(c, p, k) for c, p, k in rec.created] == [
        (parent, bg, "with_cancel"),
        (child, parent, "with_cancel"),
    ]
    cancel_parent()
    cancel_child()  # already ended: not reported twice
    assert rec.ended == [(parent, "canceled"), (child, "parent")]


def test_deadlines_report_deadline_on_fake_and_real_clocks(rec):
    with FakeClock(start=100.0) as clock:
        scope = tether.with_timeout(tether.background(), 1)
        clock.advance(1)
        assert rec.ended == [(scope.ctx, "deadline")]
        scope.cancel()
    done = threading.Event()

    class Waker:
        def on_create(self, ctx, parent, kind):
            pass

        def on_end(self, ctx, reason):
            done.set()

    w = Waker()
    _observe.add_observer(w)
    try:
        ctx, cancel = tether.with_timeout(tether.background(), 0.01)
        assert done.wait(5)
        assert rec.ended[-1] == (ctx, "deadline")
        cancel()
    finally:
        _observe.remove_observer(w)


def test_creation_site_is_the_derive_line(rec):
    ctx, cancel = tether.with_cancel(tether.background())
    line = test_creation_site_is_the_derive_line.__code__.co_firstlineno + 1
    assert _observe.creation_site(ctx) == (__file__, line)
    assert _observe.creation_site(tether.with_value(ctx, "k", 1)) == (__file__, line)
    cancel()


def test_creation_site_unknown_when_made_without_observer():
    ctx, cancel = tether.with_cancel(tether.background())
    assert _observe.creation_site(ctx) is None
    assert _observe.creation_site(tether.background()) is None
    cancel()


def test_add_is_idempotent_and_remove_unknown_is_harmless(rec):
    _observe.add_observer(rec)
    assert _observe.observers() == (rec,)
    _observe.remove_observer(Recorder())
    _ctx, cancel = tether.with_cancel(tether.background())
    cancel()
    assert len(rec.created) == 1
    assert len(rec.ended) == 1


def test_bad_observer_is_a_type_error():
    with pytest.raises(TypeError, match=r"^tether: an observer needs"):
        _observe.add_observer(object())  # type: ignore[arg-type]


def test_a_raising_observer_is_logged_and_the_others_still_told(rec, caplog):
    class Bad:
        def on_create(self, ctx, parent, kind):
            raise RuntimeError("boom create")

        def on_end(self, ctx, reason):
            raise RuntimeError("boom end")

    bad = Bad()
    _observe.add_observer(bad)
    try:
        with caplog.at_level(logging.ERROR, logger="tether"):
            ctx, cancel = tether.with_cancel(tether.background())
            cancel()
    finally:
        _observe.remove_observer(bad)
    assert ctx.err() is not None
    assert rec.ended == [(ctx, "canceled")]
    messages = [r.getMessage() for r in caplog.records]
    assert any("on_create raised" in m for m in messages)
    assert any("on_end raised" in m for m in messages)


def test_observer_may_use_tether_itself(rec):
    # on_end runs outside the core's lock: deriving and cancelling there must not hang.
    seen: list[str] = []

    class Reentrant:
        def on_create(self, ctx, parent, kind):
            pass

        def on_end(self, ctx, reason):
            if reason == "canceled" and not seen:
                seen.append(reason)
                with tether.with_timeout(tether.background(), 5):
                    pass

    r = Reentrant()
    _observe.add_observer(r)
    try:
        _ctx, cancel = tether.with_cancel(tether.background())
        cancel()
    finally:
        _observe.remove_observer(r)
    assert seen == ["canceled"]


def test_contexts_born_ended_are_reported_ended(rec):
    parent, cancel_parent = tether.with_cancel(tether.background())
    cancel_parent()
    child, cancel_child = tether.with_cancel(parent)  # born ended under an ended parent
    expired, cancel_expired = tether.with_timeout(tether.background(), 0)  # born expired
    assert (child, "parent") in rec.ended
    assert (expired, "deadline") in rec.ended
    assert len(rec.ended) == 3
    cancel_child()
    cancel_expired()
