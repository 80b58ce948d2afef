"""tether.debug: the registry of live contexts, leak suspects and the ASGI view."""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import weakref

import pytest

import tether
from tether import _observe, debug
from tether.testing import FakeClock

KEEP: list[tether.Scope] = []


@pytest.fixture
def enabled():
    debug.enable(limit=50, keep_ended=5.0)
    yield
    debug.disable()
    for scope in KEEP:
        scope.cancel()
    KEEP.clear()
    assert not _observe.observers()


def line_after() -> int:
    return sys._getframe(1).f_lineno + 1


def test_disabled_by_default_and_costs_no_observer():
    assert not debug.is_enabled()
    assert not _observe.observers()
    assert debug.snapshot() == {
        "enabled": False,
        "limit": 0,
        "tracked": 0,
        "overflow": 0,
        "contexts": [],
    }
    assert debug.leaks(0) == []


def test_snapshot_is_the_tree_with_sites_budgets_and_request_ids(enabled):
    with FakeClock() as clock:
        req = tether.with_value(tether.background(), tether.REQUEST_ID, "r-1")
        line = line_after()
        with tether.with_timeout(req, 10) as top:
            clock.advance(1)
            with tether.with_cancel(top):
                clock.advance(0.5)
                snap = debug.snapshot()
    assert snap["enabled"] is True
    assert (snap["limit"], snap["tracked"], snap["overflow"]) == (50, 2, 0)
    a, b = snap["contexts"]
    assert a["parent"] is None
    assert b["parent"] == a["id"]
    assert (a["kind"], b["kind"]) == ("with_deadline", "with_cancel")
    assert a["state"] == b["state"] == "live"
    assert a["request_id"] == b["request_id"] == "r-1"
    assert a["site"] == f"{__file__}:{line}"
    assert b["site"] == f"{__file__}:{line + 2}"
    assert a["age"] == pytest.approx(1.5)
    assert a["deadline_in"] == pytest.approx(8.5)
    assert b["deadline_in"] == pytest.approx(8.5)  # inherits the parent's deadline
    assert "with_deadline" in a["repr"]
    json.dumps(snap)  # JSON-serialisable as it is


def test_ended_contexts_fade_out_after_keep_ended(enabled):
    with FakeClock() as clock:
        with tether.with_timeout(tether.background(), 1) as parent:
            child, _ = tether.with_cancel(parent)
            clock.advance(1)
        rows = debug.snapshot()["contexts"]
        assert [(r["state"], r["reason"]) for r in rows] == [
            ("ended", "deadline"),
            ("ended", "parent"),
        ]
        assert rows[0]["age"] == pytest.approx(1)
        clock.advance(4.9)
        assert len(debug.snapshot()["contexts"]) == 2
        clock.advance(0.2)
        assert debug.snapshot()["contexts"] == []
    del child


def forgetful_handler() -> int:
    line = line_after()
    KEEP.append(tether.with_timeout(tether.background(), 3600))  # forgets cancel()
    return line


def test_a_handler_that_forgets_cancel_shows_in_leaks_with_its_line(enabled):
    with FakeClock() as clock:
        line = forgetful_handler()
        clock.advance(301)
        with tether.with_cancel(tether.background()):
            assert debug.leaks(older_than=400) == []
            (suspect,) = debug.leaks()  # default: 300 s; the `with` one is younger
        assert suspect["site"] == f"{__file__}:{line}"
        assert suspect["stack"][0] == f"{__file__}:{line} in forgetful_handler"
        assert suspect["stack"][1].startswith(f"{__file__}:")
        assert suspect["stack"][1].endswith(
            "in test_a_handler_that_forgets_cancel_shows_in_leaks_with_its_line"
        )
        assert suspect["age"] == pytest.approx(301)
        KEEP[0].cancel()  # cancelled: no longer a suspect
        assert debug.leaks(0) == []


def test_weak_references_only(enabled):
    ctx, cancel = tether.with_cancel(tether.background())
    ref = weakref.ref(ctx)
    assert debug.snapshot()["tracked"] == 1
    del ctx, cancel
    gc.collect()
    assert ref() is None  # the registry did not keep it alive
    assert debug.snapshot()["tracked"] == 0
    assert debug.leaks(0) == []


def test_bounded_with_counted_overflow(enabled):
    scopes = [tether.with_cancel(tether.background()) for _ in range(60)]
    snap = debug.snapshot()
    assert (snap["tracked"], snap["overflow"]) == (50, 10)
    for s in scopes:
        s.cancel()
    assert debug.snapshot()["tracked"] == 0


def test_enable_is_idempotent_and_validates():
    debug.enable(limit=5)
    try:
        debug.enable(limit=7)
        assert len(_observe.observers()) == 1
        assert debug.snapshot()["limit"] == 5
    finally:
        debug.disable()
        debug.disable()
    assert not debug.is_enabled()
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match=r"^tether: debug.enable\(limit=...\)"):
            debug.enable(limit=bad)
    with pytest.raises(ValueError, match=r"^tether: debug.enable\(keep_ended=...\)"):
        debug.enable(keep_ended=float("nan"))
    with pytest.raises(ValueError, match=r"^tether: leaks\(older_than=...\)"):
        debug.leaks(-1)
    assert not debug.is_enabled()


# --------------------------------------------------------------------------- the ASGI app


def call(app, path="/", query=b"", client=("127.0.0.1", 5000), method="GET"):
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(msg):
        sent.append(msg)

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": query,
        "headers": [],
        "client": client,
    }
    asyncio.run(app(scope, receive, send))
    start, body = sent
    headers = dict(start["headers"])
    return start["status"], headers[b"content-type"].decode(), body["body"]


def test_asgi_json_matches_snapshot(enabled):
    app = debug.asgi_app()
    with FakeClock(), tether.with_timeout(tether.background(), 5):
        status, ctype, body = call(app, query=b"format=json")
        assert (status, ctype) == (200, "application/json")
        assert json.loads(body) == debug.snapshot()
        status, _, body = call(app, query=b"format=leaks&older_than=0")
        assert status == 200
        (leak,) = json.loads(body)
        assert leak["site"].startswith(__file__)
        assert call(app, query=b"format=leaks&older_than=x")[0] == 400


def test_snapshot_of_one_request(enabled):
    a = tether.with_value(tether.background(), tether.REQUEST_ID, "a b/ü")
    b = tether.with_value(tether.background(), tether.REQUEST_ID, "other")
    with FakeClock(), tether.with_cancel(a), tether.with_cancel(b), tether.with_cancel(a):
        rows = debug.snapshot(request_id="a b/ü")["contexts"]
        assert [r["request_id"] for r in rows] == ["a b/ü", "a b/ü"]
        assert debug.snapshot(request_id="none")["contexts"] == []
        assert debug.snapshot(request_id="none")["tracked"] == 3
        status, _, body = call(debug.asgi_app(), query=b"format=json&request_id=a+b%2F%C3%BC")
        assert status == 200
        assert json.loads(body)["contexts"] == rows
    with pytest.raises(TypeError, match=r"^tether: snapshot\(request_id=...\) takes a str"):
        debug.snapshot(request_id=1)  # type: ignore[arg-type]


def test_asgi_html_page(enabled):
    status, ctype, body = call(debug.asgi_app(refresh=0.5))
    assert (status, ctype) == (200, "text/html; charset=utf-8")
    assert b"const REFRESH = 500;" in body
    assert b"location.pathname + q" in body


def test_asgi_refuses_non_loopback_unless_allowed(enabled):
    app = debug.asgi_app()
    status, _, body = call(app, client=("10.1.2.3", 4000), query=b"format=json")
    assert status == 403
    assert body.startswith(b"tether: the debug view serves loopback clients only")
    assert call(app, client=("::1", 4000))[0] == 200
    assert call(app, client=None)[0] == 403  # a Unix socket: no address
    assert call(app, method="POST")[0] == 405
    wide = debug.asgi_app(allow=["10.0.0.0/8", "unix"])
    assert call(wide, client=("10.1.2.3", 4000))[0] == 200
    assert call(wide, client=None)[0] == 200
    assert call(wide, client=("127.0.0.1", 1))[0] == 403  # only what is listed
    with pytest.raises(ValueError, match=r"^tether: asgi_app\(allow=...\) takes CIDRs"):
        debug.asgi_app(allow=["localhost"])
    with pytest.raises(ValueError, match=r"^tether: asgi_app\(refresh=...\)"):
        debug.asgi_app(refresh=0)


def test_asgi_lifespan_and_websocket():
    app = debug.asgi_app()
    inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    out: list[dict] = []

    async def receive():
        return inbox.pop(0)

    async def send(msg):
        out.append(msg)

    asyncio.run(app({"type": "lifespan"}, receive, send))
    asyncio.run(app({"type": "websocket"}, receive, send))
    assert [m["type"] for m in out] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
        "websocket.close",
    ]


def test_contexts_born_ended_show_as_ended(enabled):
    parent, cancel = tether.with_cancel(tether.background())
    cancel()
    a = tether.with_cancel(parent)
    b = tether.with_timeout(tether.background(), -1)
    rows = debug.snapshot()["contexts"]
    assert [(r["kind"], r["state"], r["reason"]) for r in rows] == [
        ("with_cancel", "ended", "canceled"),
        ("with_cancel", "ended", "parent"),
        ("with_deadline", "ended", "deadline"),
    ]
    # links go to live tracked owners only: an ended parent is no longer one
    assert rows[1]["parent"] is None
    assert debug.snapshot()["tracked"] == 0
    del a, b
