"""tether.integrations.asgi: ContextMiddleware under real servers on loopback."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
import uuid

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

import tether
from http_servers import ASGI_SERVERS, serve
from tether import propagation
from tether.integrations.asgi import ClientDisconnected, ContextMiddleware, request_context

pytestmark = pytest.mark.realtime


class Seen:
    """What handlers observed, shared with the test thread (dict operations are atomic)."""

    def __init__(self) -> None:
        self.items: dict[str, object] = {}
        self.events: dict[str, threading.Event] = {}

    def put(self, key: str, value: object) -> None:
        self.items[key] = value
        self.event(key).set()

    def event(self, key: str) -> threading.Event:
        return self.events.setdefault(key, threading.Event())

    def get(self, key: str, timeout: float = 10.0) -> object:
        assert self.event(key).wait(timeout), f"handler never recorded {key!r}"
        return self.items[key]

    def clear(self) -> None:
        self.items.clear()
        self.events.clear()


def make_app(seen: Seen, policy=None) -> Starlette:
    async def info(request: Request) -> JSONResponse:
        ctx = request_context(request)
        seen.put("same", tether.current() is ctx)
        return JSONResponse(
            {"rid": ctx.value(tether.REQUEST_ID), "remaining": ctx.remaining()},
            headers={"x-seen": "1"},
        )

    async def wait(request: Request) -> PlainTextResponse:
        ctx = request_context(request)
        seen.put("wait.started", time.monotonic())
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.put("wait.interrupted", (time.monotonic(), ctx.err(), tether.cause(ctx)))
            raise
        return PlainTextResponse("slept")

    async def check(request: Request) -> PlainTextResponse:
        ctx = request_context(request)
        # a handler that does not await: it polls, and lets the context's error escape
        while True:
            ctx.check()
            time.sleep(0.005)

    async def boom(request: Request) -> PlainTextResponse:
        raise KeyError("not tether's")

    async def other_deadline(request: Request) -> PlainTextResponse:
        # a DeadlineExceeded of a context that is not the request's: not a 504
        ctx = request_context(request)
        with tether.with_timeout(ctx, 0.01) as inner:
            await asyncio.sleep(0.05)
            inner.check()
        return PlainTextResponse("unreachable")

    async def stream(request: Request) -> StreamingResponse:
        ctx = request_context(request)

        async def body():
            for i in range(1000):
                yield f"chunk {i}\n".encode()
                await asyncio.sleep(0.02)
            seen.put("stream.finished", ctx.err())

        return StreamingResponse(body(), media_type="text/plain")

    async def ws(websocket: WebSocket) -> None:
        ctx = request_context(websocket)
        seen.put("ws.ctx", ctx)
        await websocket.accept()
        await websocket.send_text(ctx.value(tether.REQUEST_ID))
        try:
            while True:
                await websocket.receive_text()
        except WebSocketDisconnect:
            seen.put("ws.after", (ctx.err(), tether.cause(ctx)))

    app = Starlette(
        routes=[
            Route("/info", info),
            Route("/wait", wait, methods=["GET", "POST"]),
            Route("/check", check),
            Route("/boom", boom),
            Route("/other-deadline", other_deadline),
            Route("/stream", stream),
            WebSocketRoute("/ws", ws),
        ]
    )
    app.add_middleware(ContextMiddleware, policy=policy)
    return app


@pytest.fixture
def seen_and_url():  # one server per test: the leak check wants its thread gone
    seen = Seen()
    with serve(make_app(seen)) as url:
        yield seen, url


@pytest.fixture
def seen(seen_and_url):
    s = seen_and_url[0]
    s.clear()
    return s


@pytest.fixture
def url(seen_and_url):
    return seen_and_url[1]


def test_request_id_generated_echoed_and_current(seen, url):
    r = httpx.get(url + "/info")
    assert r.status_code == 200
    rid = r.headers["x-request-id"]
    assert uuid.UUID(hex=rid).version == 4
    assert r.json()["rid"] == rid
    assert r.json()["remaining"] is None
    assert seen.get("same") is True

    r = httpx.get(url + "/info", headers={"X-Request-Id": "edge-42"})
    assert r.headers["x-request-id"] == "edge-42"
    assert r.json()["rid"] == "edge-42"

    for bad in ["has space", "x" * 129]:
        r = httpx.get(url + "/info", headers={"x-request-id": bad})
        assert r.headers["x-request-id"] != bad
        assert uuid.UUID(hex=r.headers["x-request-id"]).version == 4


def test_budget_reaches_the_handler(url):
    r = httpx.get(url + "/info", headers={"x-request-timeout": "2S"})
    assert 1.5 < r.json()["remaining"] <= 2.0
    r = httpx.get(url + "/info", headers={"x-request-timeout": "garbage"})
    assert r.status_code == 200
    assert r.json()["remaining"] is None


def test_deadline_before_response_start_is_504(seen, url):
    t0 = time.monotonic()
    r = httpx.get(url + "/wait", headers={"x-request-timeout": "200m", "x-request-id": "r504"})
    took = time.monotonic() - t0
    assert r.status_code == 504
    assert r.headers["x-request-id"] == "r504"
    assert 0.2 <= took < 1.5
    _, err, _ = seen.get("wait.interrupted")
    assert isinstance(err, tether.DeadlineExceeded)


def test_zero_budget_is_504_without_running_the_handler(seen, url):
    r = httpx.get(url + "/wait", headers={"x-request-timeout": "0n"})
    assert r.status_code == 504
    assert not seen.event("wait.started").is_set()


def test_context_error_escaping_a_starlette_handler_is_504_not_500(url):
    t0 = time.monotonic()
    r = httpx.get(url + "/check", headers={"x-request-timeout": "150m", "x-request-id": "c1"})
    assert r.status_code == 504
    assert r.headers["x-request-id"] == "c1"
    assert time.monotonic() - t0 < 2


def test_other_exceptions_pass_through_untouched(url):
    r = httpx.get(url + "/boom")
    assert r.status_code == 500  # Starlette's ServerErrorMiddleware saw the KeyError
    r = httpx.get(url + "/other-deadline", headers={"x-request-timeout": "5S"})
    assert r.status_code == 500  # an inner context's deadline is the app's business


@pytest.mark.parametrize(
    "budget",
    [b"", b"x-request-timeout: 30S\r\n"],
    ids=["no-deadline (the middleware interrupts)", "deadline (the core's async with)"],
)
def test_client_disconnect_cancels_the_handler_and_logs_499(seen, url, caplog, budget):
    caplog.set_level(logging.INFO, logger="tether.asgi")
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(b"GET /wait HTTP/1.1\r\nhost: x\r\n" + budget + b"x-request-id: gone-1\r\n\r\n")
        seen.get("wait.started")
        t_close = time.monotonic()
    t, err, cause = seen.get("wait.interrupted")
    assert isinstance(err, tether.Canceled)
    assert isinstance(cause, ClientDisconnected)
    assert t - t_close < 1.0
    for _ in range(100):
        if any("499" in r.getMessage() and "gone-1" in r.getMessage() for r in caplog.records):
            break
        time.sleep(0.01)
    else:
        pytest.fail(f"no 499 logged: {[r.getMessage() for r in caplog.records]}")


def test_streaming_response_is_aborted_at_the_deadline(url):
    t0 = time.monotonic()
    got = bytearray()

    def read_all() -> None:
        with httpx.stream("GET", url + "/stream", headers={"x-request-timeout": "300m"}) as r:
            assert r.status_code == 200
            for chunk in r.iter_bytes():
                got.extend(chunk)

    with pytest.raises(httpx.RemoteProtocolError):
        read_all()
    assert got.startswith(b"chunk 0\n")
    assert b"chunk 999" not in got
    assert time.monotonic() - t0 < 3


def test_websocket_context_ends_when_the_socket_closes(seen, url):
    from websockets.sync.client import connect

    with connect(
        url.replace("http", "ws") + "/ws", additional_headers={"x-request-id": "ws-1"}
    ) as c:
        assert c.response.headers["x-request-id"] == "ws-1"
        assert c.recv(timeout=5) == "ws-1"
        ctx = seen.get("ws.ctx")
        assert ctx.err() is None
        c.send("hello")
    err, cause = seen.get("ws.after")
    assert isinstance(err, tether.Canceled)
    assert isinstance(cause, ClientDisconnected)


def test_lifespan_and_unknown_scopes_pass_straight_through():
    asyncio.run(_lifespan())


async def _lifespan():
    calls = []

    async def app(scope, receive, send):
        calls.append((scope["type"], "state" in scope))
        await send({"type": "lifespan.startup.complete"})

    sent = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "lifespan.startup"}

    await ContextMiddleware(app)({"type": "lifespan"}, receive, send)
    assert calls == [("lifespan", False)]
    assert sent == [{"type": "lifespan.startup.complete"}]


def test_a_foreign_exception_reaches_the_server_as_is():
    asyncio.run(_foreign())


async def _foreign():
    class Boom(Exception):
        pass

    err = Boom("x")

    async def app(scope, receive, send):
        raise err

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        pass

    scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "client": None}
    with pytest.raises(Boom) as info:
        await ContextMiddleware(app)(scope, receive, send)
    assert info.value is err
    assert isinstance(request_context(scope).err(), tether.Canceled)  # ended with the request


def test_request_context_without_middleware_raises():
    with pytest.raises(LookupError, match="ContextMiddleware"):
        request_context({"type": "http"})
    with pytest.raises(TypeError, match=r"^tether: policy"):
        ContextMiddleware(None, policy=5)  # type: ignore[arg-type]


def test_trust_policy_over_http():
    seen = Seen()
    user = tether.Key[str]("user")
    pol = propagation.Policy(max_timeout=1, identity=(("x-user", user),))

    async def who(request: Request) -> JSONResponse:
        ctx = request_context(request)
        return JSONResponse({"remaining": ctx.remaining(), "user": ctx.value(user)})

    for trusted, want_long, want_user in [((), False, None), (("127.0.0.0/8",), True, "alice")]:
        app = Starlette(routes=[Route("/who", who)])
        app.add_middleware(ContextMiddleware, policy=pol.replace(trusted=trusted))
        with serve(app) as url:
            r = httpx.get(url + "/who", headers={"x-request-timeout": "60S", "x-user": "alice"})
            body = r.json()
            assert (body["remaining"] > 50) is want_long, body
            assert body["remaining"] <= (60 if want_long else 1)
            assert body["user"] == want_user
    del seen


def test_policy_update_affects_new_requests_only():
    holder = propagation.PolicyHolder(propagation.Policy(default_timeout=10))
    gate = threading.Event()
    seen = Seen()

    async def slow(request: Request) -> JSONResponse:
        ctx = request_context(request)
        seen.put("slow.in", True)
        while not gate.is_set():
            await asyncio.sleep(0.01)
        return JSONResponse({"remaining": ctx.remaining()})

    app = Starlette(routes=[Route("/slow", slow)])
    app.add_middleware(ContextMiddleware, policy=holder)
    with serve(app) as url:
        out: dict[str, float] = {}
        t = threading.Thread(
            target=lambda: out.update(a=httpx.get(url + "/slow").json()["remaining"])
        )
        t.start()
        seen.get("slow.in")
        holder.update(default_timeout=0.5)
        gate.set()
        b = httpx.get(url + "/slow").json()["remaining"]
        t.join()
    assert out["a"] > 5  # started under the old policy: keeps its 10 s
    assert b <= 0.5


def test_server_parent_cancelled_is_503():
    parent, cancel = tether.with_cancel(tether.background())
    seen = Seen()
    app = make_app(seen)
    try:
        with serve(app, parent=parent) as url:
            result: dict[str, httpx.Response] = {}
            t = threading.Thread(target=lambda: result.update(r=httpx.get(url + "/wait")))
            t.start()
            seen.get("wait.started")
            cancel(RuntimeError("shutting down"))
            t.join(10)
            assert result["r"].status_code == 503
            _, err, cause = seen.get("wait.interrupted")
            assert isinstance(err, tether.Canceled)
            assert isinstance(cause, RuntimeError)
    finally:
        cancel()


@pytest.mark.parametrize("kind", ASGI_SERVERS)
def test_every_server_gives_504_and_notices_disconnects(kind):
    seen = Seen()
    with serve(make_app(seen), kind) as url:
        r = httpx.get(url + "/wait", headers={"x-request-timeout": "150m"})
        assert r.status_code == 504
        seen.get("wait.interrupted")
        seen.clear()
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as s:
            s.sendall(b"GET /wait HTTP/1.1\r\nhost: x\r\n\r\n")
            seen.get("wait.started")
            t_close = time.monotonic()
        t, _, cause = seen.get("wait.interrupted")
        assert isinstance(cause, ClientDisconnected), kind
        assert t - t_close < 1.0


@pytest.mark.parametrize("kind", ASGI_SERVERS)
def test_request_bodies_pass_through_the_read_ahead_intact(kind):
    # Also a regression test: one keep-alive connection carries several requests, and a
    # large body makes the server pause and resume reading from inside the request; the
    # callbacks that registers must not carry this request's context into the next
    # request (which would then be born cancelled: a 503).
    import hashlib

    async def echo(request: Request) -> JSONResponse:
        if request.query_params.get("late"):
            await asyncio.sleep(0.1)  # the reader started at 10 ms and is 64 KiB ahead
        chunks = 0
        h = hashlib.sha256()
        async for chunk in request.stream():
            chunks += 1
            h.update(chunk)
        return JSONResponse({"sha": h.hexdigest(), "chunks": chunks})

    app = Starlette(routes=[Route("/echo", echo, methods=["POST"])])
    app.add_middleware(ContextMiddleware)
    body = bytes(range(256)) * 4096  # 1 MiB
    want = hashlib.sha256(body).hexdigest()
    with serve(app, kind) as url, httpx.Client() as client:
        for q in ("", "?late=1"):
            r = client.post(url + "/echo" + q, content=body)
            assert r.status_code == 200, r.text
            assert r.json()["sha"] == want

            def gen():
                for i in range(0, len(body), 100_000):
                    yield body[i : i + 100_000]

            r = client.post(url + "/echo" + q, content=gen())  # chunked upload
            assert r.json()["sha"] == want
        r = client.post(url + "/echo", content=b"")
        assert r.json()["sha"] == hashlib.sha256(b"").hexdigest()


def test_disconnect_while_the_app_reads_a_slow_upload(seen, url):
    host, port = url.removeprefix("http://").split(":")
    # /wait never reads; the reader reads the declared body ahead and then hears the close
    with socket.create_connection((host, int(port))) as s:
        s.sendall(b"POST /wait HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n" + b"x" * 1000)
        seen.get("wait.started")
        time.sleep(0.05)
        t_close = time.monotonic()
    t, _err, cause = seen.get("wait.interrupted")
    assert isinstance(cause, ClientDisconnected)
    assert t - t_close < 1.0


@pytest.mark.parametrize("kind", ["uvicorn-h11", "uvicorn-httptools"])
def test_uvicorn_access_line_is_tagged_with_the_request_id(kind):
    """uvicorn logs its access line from inside the app's ``send`` of the response start,
    which runs with the request's context current: ``ContextFilter`` tags it."""
    from tether.integrations.stdlib_logging import ContextFilter

    async def hello(request):
        return PlainTextResponse("hi")

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    handler.addFilter(ContextFilter(missing="-"))
    app = Starlette(routes=[Route("/", hello)])
    app.add_middleware(ContextMiddleware)
    rid = uuid.uuid4().hex
    access = logging.getLogger("uvicorn.access")
    with serve(app, kind) as url:
        level = access.level
        access.addHandler(handler)  # uvicorn checks for handlers per connection
        access.setLevel(logging.INFO)
        try:
            with httpx.Client() as client:
                first = client.get(url + "/", headers={"x-request-id": rid})
                second = client.get(url + "/")  # the same keep-alive connection
        finally:
            access.removeHandler(handler)
            access.setLevel(level)
    assert first.headers["x-request-id"] == rid
    assert [r.request_id for r in records] == [rid, second.headers["x-request-id"]]
