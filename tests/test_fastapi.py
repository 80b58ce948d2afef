"""tether.integrations.fastapi.RequestContext under uvicorn on loopback."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import httpx
import pytest
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

import tether
from http_servers import serve
from tether.integrations.asgi import ClientDisconnected, ContextMiddleware, request_context
from tether.integrations.fastapi import RequestContext

pytestmark = pytest.mark.realtime


def make_app(seen: dict, events: dict[str, threading.Event]) -> FastAPI:
    app = FastAPI()
    app.add_middleware(ContextMiddleware)

    def done(key: str, value: object) -> None:
        seen[key] = value
        events.setdefault(key, threading.Event()).set()

    @app.get("/async")
    async def async_handler(ctx: RequestContext) -> dict:
        done("async", (ctx is tether.current(), ctx.value(tether.REQUEST_ID)))
        return {"remaining": ctx.remaining()}

    @app.get("/sync-wait")
    def sync_wait(ctx: RequestContext) -> dict:
        # a plain def handler: FastAPI runs it in a worker thread
        current_ok = tether.current() is ctx
        t0 = time.monotonic()
        woke = ctx.done().wait(10)
        done("sync", (threading.current_thread() is not threading.main_thread(), current_ok,
                      woke, time.monotonic() - t0, ctx.err()))  # fmt: skip
        ctx.check()  # the deadline passed: DeadlineExceeded escapes -> 504
        return {}

    @app.get("/async-escape")
    async def async_escape(ctx: RequestContext) -> dict:
        while True:
            ctx.check()
            await asyncio.sleep(0)  # busy, but never blocking the loop for long
            time.sleep(0.002)

    @app.websocket("/ws")
    async def ws(websocket: WebSocket, ctx: RequestContext) -> None:
        await websocket.accept()
        assert ctx is request_context(websocket)
        await websocket.send_text(ctx.value(tether.REQUEST_ID))
        try:
            while True:
                await websocket.receive_text()
        except WebSocketDisconnect:
            done("ws", (ctx.err(), tether.cause(ctx)))

    return app


@pytest.fixture
def app_url():
    seen: dict = {}
    events: dict[str, threading.Event] = {}
    with serve(make_app(seen, events)) as url:
        yield url, seen, events


def _wait(events, key):
    assert events.setdefault(key, threading.Event()).wait(10), key


def test_async_handler_gets_the_request_context(app_url):
    url, seen, events = app_url
    r = httpx.get(url + "/async", headers={"x-request-timeout": "3S", "x-request-id": "fa-1"})
    assert r.status_code == 200
    assert 2.5 < r.json()["remaining"] <= 3
    _wait(events, "async")
    assert seen["async"] == (True, "fa-1")


def test_sync_handler_in_the_thread_pool_wakes_at_the_deadline(app_url):
    url, seen, events = app_url
    t0 = time.monotonic()
    r = httpx.get(url + "/sync-wait", headers={"x-request-timeout": "300m", "x-request-id": "s1"})
    took = time.monotonic() - t0
    _wait(events, "sync")
    in_worker, current_ok, woke, waited, err = seen["sync"]
    assert in_worker
    assert current_ok  # tether.current() is the request context in the worker thread
    assert woke
    assert 0.2 < waited < 1.5
    assert isinstance(err, tether.DeadlineExceeded)
    assert r.status_code == 504
    assert r.headers["x-request-id"] == "s1"
    assert took < 2.0


def test_deadline_exceeded_escaping_a_fastapi_handler_is_504(app_url):
    url, _, _ = app_url
    r = httpx.get(url + "/async-escape", headers={"x-request-timeout": "200m"})
    assert r.status_code == 504
    assert "x-request-id" in r.headers


def test_websocket_handler_gets_a_context_that_ends_on_close(app_url):
    from websockets.sync.client import connect

    url, seen, events = app_url
    with connect(url.replace("http", "ws") + "/ws", additional_headers={"x-request-id": "w9"}) as c:
        assert c.recv(timeout=5) == "w9"
    _wait(events, "ws")
    err, cause = seen["ws"]
    assert isinstance(err, tether.Canceled)
    assert isinstance(cause, ClientDisconnected)


def test_without_the_middleware_the_dependency_names_it():
    app = FastAPI()

    @app.get("/")
    async def handler(ctx: RequestContext) -> dict:
        return {}

    records: list[logging.LogRecord] = []
    handler_ = logging.Handler()
    handler_.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("uvicorn.error")
    with serve(app) as url:
        logger.addHandler(handler_)  # after uvicorn configured its logging
        try:
            r = httpx.get(url + "/")
        finally:
            logger.removeHandler(handler_)
    assert r.status_code == 500
    errors = [r.exc_info[1] for r in records if r.exc_info]
    assert any(isinstance(e, LookupError) and "ContextMiddleware" in str(e) for e in errors), errors
