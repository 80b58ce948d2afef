"""tether.integrations.wsgi: ContextMiddleware and init_flask under waitress on loopback."""

from __future__ import annotations

import threading
import time
import uuid

import httpx
import pytest
from flask import Flask, Response, request

import tether
from http_servers import serve
from tether import propagation
from tether.integrations.wsgi import ContextMiddleware, init_flask, request_context

pytestmark = pytest.mark.realtime


def make_flask(seen: dict, events: dict[str, threading.Event], **kw) -> Flask:
    app = Flask(__name__)
    init_flask(app, **kw)

    def done(key: str, value: object) -> None:
        seen[key] = value
        events.setdefault(key, threading.Event()).set()

    @app.get("/info")
    def info():
        ctx = tether.current()
        done("info", ctx is request_context(request))
        return {"rid": ctx.value(tether.REQUEST_ID), "remaining": ctx.remaining()}

    @app.get("/wait")
    def wait():
        ctx = request_context(request)
        t0 = time.monotonic()
        woke = ctx.done().wait(10)
        done("wait", (woke, time.monotonic() - t0, ctx.err()))
        ctx.check()  # the request's own DeadlineExceeded -> 504 (init_flask's handler)
        return "unreachable"

    @app.get("/inner-deadline")
    def inner_deadline():
        with tether.with_timeout(tether.current(), 0.01) as inner:
            time.sleep(0.03)
            inner.check()  # not the request's deadline: Flask's 500
        return "unreachable"

    @app.get("/stream")
    def stream():
        ctx = tether.current()

        def gen():
            for i in range(5):
                # each chunk is produced with the request's context current
                yield f"{i}:{tether.current() is ctx}\n"

        return Response(gen(), mimetype="text/plain")

    return app


@pytest.fixture
def flask_url():
    seen: dict = {}
    events: dict[str, threading.Event] = {}
    with serve(make_flask(seen, events), "waitress") as url:
        yield url, seen, events


def test_flask_request_id_budget_and_current(flask_url):
    url, seen, events = flask_url
    r = httpx.get(url + "/info", headers={"x-request-timeout": "2S", "x-request-id": "fl-1"})
    assert r.status_code == 200
    assert r.headers["x-request-id"] == "fl-1"
    assert r.json()["rid"] == "fl-1"
    assert 1.5 < r.json()["remaining"] <= 2
    assert events["info"].wait(5)
    assert seen["info"] is True
    r = httpx.get(url + "/info", headers={"x-request-id": "bad id!"})
    assert uuid.UUID(hex=r.headers["x-request-id"]).version == 4


def test_flask_handler_blocked_in_done_wait_wakes_at_the_deadline(flask_url):
    url, seen, events = flask_url
    t0 = time.monotonic()
    r = httpx.get(url + "/wait", headers={"x-request-timeout": "300m", "x-request-id": "w-1"})
    took = time.monotonic() - t0
    assert events["wait"].wait(5)
    woke, waited, err = seen["wait"]
    assert woke
    assert 0.25 < waited < 1.5
    assert isinstance(err, tether.DeadlineExceeded)
    assert r.status_code == 504
    assert r.headers["x-request-id"] == "w-1"
    assert took < 2


def test_flask_other_errors_stay_500(flask_url):
    url, _, _ = flask_url
    r = httpx.get(url + "/inner-deadline", headers={"x-request-timeout": "5S"})
    assert r.status_code == 500


def test_flask_streamed_chunks_see_the_context(flask_url):
    url, _, _ = flask_url
    r = httpx.get(url + "/stream")
    assert r.text.splitlines() == [f"{i}:True" for i in range(5)]


def test_plain_wsgi_app_gets_504_and_its_context_ends_with_the_response():
    contexts = []

    def app(environ, start_response):
        ctx = environ["tether.context"]
        contexts.append(ctx)
        if environ["PATH_INFO"] == "/late":
            ctx.done().wait(5)
            ctx.check()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    holder = propagation.PolicyHolder(propagation.Policy(default_timeout=10))
    with serve(ContextMiddleware(app, policy=holder), "waitress") as url:
        r = httpx.get(url + "/")
        assert r.text == "ok"
        assert 9 < contexts[-1].remaining() or contexts[-1].err() is not None
        for _ in range(100):  # the server closes the response right after sending it
            if contexts[-1].err() is not None:
                break
            time.sleep(0.01)
        assert isinstance(contexts[-1].err(), tether.Canceled)

        holder.update(default_timeout=0.2)
        t0 = time.monotonic()
        r = httpx.get(url + "/late")
        assert r.status_code == 504
        assert "x-request-id" in r.headers
        assert time.monotonic() - t0 < 2

        r = httpx.get(url + "/late", headers={"x-request-timeout": "0n"})
        assert r.status_code == 504


def test_plain_wsgi_foreign_exception_passes_through():
    class Boom(Exception):
        pass

    def app(environ, start_response):
        raise Boom

    captured = {}

    def start_response(status, headers, exc_info=None):
        captured["status"] = status
        return lambda b: None

    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "REMOTE_ADDR": "127.0.0.1"}
    with pytest.raises(Boom):
        ContextMiddleware(app)(environ, start_response)
    assert isinstance(environ["tether.context"].err(), tether.Canceled)
    assert captured == {}


def test_wsgi_misuse():
    with pytest.raises(LookupError, match="ContextMiddleware"):
        request_context({})
    with pytest.raises(TypeError, match=r"^tether: policy"):
        ContextMiddleware(lambda e, s: [], policy=0.5)  # type: ignore[arg-type]
