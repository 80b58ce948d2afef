"""httpx ContextTransport/AsyncContextTransport and the requests ContextAdapter, against a
real server on loopback."""

# ruff: noqa: PT012 - reading a streamed body under pytest.raises takes a loop

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest
import requests
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

import tether
from http_servers import serve
from tether import propagation
from tether.integrations.asgi import ContextMiddleware
from tether.integrations.httpx import AsyncContextTransport, ContextTransport
from tether.integrations.requests import ContextAdapter

pytestmark = pytest.mark.realtime

RID = tether.REQUEST_ID


class Server:
    def __init__(self) -> None:
        self.hits = 0
        self.url = ""


@pytest.fixture
def server():
    state = Server()

    async def echo(request: Request) -> JSONResponse:
        state.hits += 1
        return JSONResponse(
            {
                "rid": request.headers.get("x-request-id"),
                "timeout": request.headers.get("x-request-timeout"),
            }
        )

    async def trickle(request: Request) -> StreamingResponse:
        async def body():
            for _ in range(500):
                yield b"x" * 10
                await asyncio.sleep(0.02)

        return StreamingResponse(body())

    routes = Starlette(routes=[Route("/echo", echo), Route("/trickle", trickle)])

    async def app(scope, receive, send):
        # /sleep ignores every budget (no middleware): it answers only after the client
        # is gone, so what stops the call is the client's own deadline
        if scope["type"] == "http" and scope["path"] == "/sleep":
            state.hits += 1
            if scope["query_string"] == b"s=0":
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send({"type": "http.response.body", "body": b"{}"})
                return
            while (await receive())["type"] != "http.disconnect":
                pass
            return
        await routes(scope, receive, send)

    with serve(app) as url:
        state.url = url
        yield state


def _ctx(budget: float | None, rid: str | None = "cli-1") -> tether.Scope:
    parent = tether.background()
    if rid is not None:
        parent = tether.with_value(parent, RID, rid)
    if budget is None:
        return tether.with_cancel(parent)
    return tether.with_timeout(parent, budget)


# ---------------------------------------------------------------- httpx, sync


def test_sync_sends_request_id_and_remaining_budget(server):
    with httpx.Client(transport=ContextTransport()) as client, _ctx(2.0) as ctx:
        body = client.get(server.url + "/echo").json()
        assert body["rid"] == "cli-1"
        sent = propagation.decode_timeout(body["timeout"])
        assert 1.5 < sent < 2.0 - 0.005
        assert tether.current() is ctx
    with httpx.Client(transport=ContextTransport()) as client:
        body = client.get(server.url + "/echo").json()  # background: nothing to send
        assert body == {"rid": None, "timeout": None}


def test_sync_explicit_context_extension_wins_over_current(server):
    with httpx.Client(transport=ContextTransport()) as client, _ctx(5.0, "outer"):
        with _ctx(1.0, "explicit") as explicit:
            pass  # ended: must still not matter which one is current
        inner, cancel = tether.with_timeout(tether.with_value(tether.background(), RID, "x2"), 1)
        try:
            r = client.get(server.url + "/echo", extensions={"tether.context": inner})
        finally:
            cancel()
        body = r.json()
        assert body["rid"] == "x2"
        assert propagation.decode_timeout(body["timeout"]) <= 1.0
        with pytest.raises(TypeError, match=r"^tether: request.extensions"):
            client.get(server.url + "/echo", extensions={"tether.context": "ctx"})
        with pytest.raises(tether.Canceled):
            client.get(server.url + "/echo", extensions={"tether.context": explicit})


def test_sync_deadline_raises_deadline_exceeded_chained_to_httpx(server):
    with httpx.Client(transport=ContextTransport()) as client, _ctx(0.3):
        t0 = time.monotonic()
        with pytest.raises(tether.DeadlineExceeded) as info:
            client.get(server.url + "/sleep?s=5")
        took = time.monotonic() - t0
    assert isinstance(info.value.__cause__, httpx.TimeoutException)
    assert 0.25 < took < 1.5


def test_sync_own_shorter_timeout_stays_httpx(server):
    with httpx.Client(transport=ContextTransport(), timeout=0.2) as client, _ctx(10.0):
        with pytest.raises(httpx.ReadTimeout):
            client.get(server.url + "/sleep?s=5")


def test_sync_below_floor_and_ended_are_refused_without_sending(server):
    with httpx.Client(transport=ContextTransport()) as client:
        before = server.hits
        with _ctx(0.004):  # 4 ms - 5 ms margin < 1 ms floor
            with pytest.raises(tether.DeadlineExceeded):
                client.get(server.url + "/sleep?s=0")
        ctx, cancel = _ctx(None)
        cancel()
        with pytest.raises(tether.Canceled):
            client.get(server.url + "/sleep?s=0", extensions={"tether.context": ctx})
        assert server.hits == before


def test_sync_body_stops_between_chunks_when_the_context_ends(server):
    with httpx.Client(transport=ContextTransport()) as client, _ctx(0.3):
        t0 = time.monotonic()
        with pytest.raises(tether.DeadlineExceeded):
            with client.stream("GET", server.url + "/trickle") as r:
                for _ in r.iter_bytes():
                    pass
        assert time.monotonic() - t0 < 2


def test_transport_misuse():
    with pytest.raises(TypeError, match=r"^tether: .*AsyncContextTransport"):
        ContextTransport(httpx.AsyncHTTPTransport())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^tether: .*ContextTransport"):
        AsyncContextTransport(httpx.HTTPTransport())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^tether: policy"):
        ContextTransport(policy=1)  # type: ignore[arg-type]


# ---------------------------------------------------------------- httpx, async


def test_async_sends_headers_and_ends_the_moment_the_context_is_cancelled(server):
    async def main():
        async with httpx.AsyncClient(transport=AsyncContextTransport()) as client:
            async with _ctx(3.0, "a-1"):
                body = (await client.get(server.url + "/echo")).json()
            assert body["rid"] == "a-1"
            assert 2.5 < propagation.decode_timeout(body["timeout"]) < 3.0

            ctx, cancel = _ctx(None)
            threading.Timer(0.1, cancel, args=(RuntimeError("user left"),)).start()
            t0 = time.monotonic()
            with pytest.raises(tether.Canceled) as info:
                await client.get(server.url + "/sleep?s=5", extensions={"tether.context": ctx})
            took = time.monotonic() - t0
            assert isinstance(info.value.__cause__, RuntimeError)
            assert took < 0.6
            # the pool is still usable
            assert (await client.get(server.url + "/echo")).status_code == 200

    asyncio.run(main())


def test_async_deadline_while_waiting_and_while_streaming(server):
    async def main():
        async with httpx.AsyncClient(transport=AsyncContextTransport()) as client:
            t0 = time.monotonic()
            with pytest.raises(tether.DeadlineExceeded):
                async with _ctx(0.2):
                    await client.get(server.url + "/sleep?s=5")
            assert time.monotonic() - t0 < 1.0

            t0 = time.monotonic()
            got = 0
            with pytest.raises(tether.DeadlineExceeded):
                async with _ctx(0.3), client.stream("GET", server.url + "/trickle") as r:
                    async for chunk in r.aiter_bytes():
                        got += len(chunk)
            assert 0 < got < 5000
            assert time.monotonic() - t0 < 1.0

    asyncio.run(main())


def test_async_without_async_with_the_transport_still_ends_it(server):
    # the context is explicit and not entered: the transport alone must interrupt
    async def main():
        async with httpx.AsyncClient(transport=AsyncContextTransport()) as client:
            ctx, cancel = _ctx(0.2)
            try:
                t0 = time.monotonic()
                with pytest.raises(tether.DeadlineExceeded):
                    await client.get(server.url + "/sleep?s=5", extensions={"tether.context": ctx})
                assert time.monotonic() - t0 < 1.0
            finally:
                cancel()

    asyncio.run(main())


# ---------------------------------------------------------------- requests


@pytest.fixture
def session():
    s = requests.Session()
    adapter = ContextAdapter()
    s.mount("http://", adapter)
    yield s
    s.close()


def test_requests_sends_headers(server, session):
    with _ctx(2.0, "rq-1"):
        body = session.get(server.url + "/echo").json()
    assert body["rid"] == "rq-1"
    assert 1.5 < propagation.decode_timeout(body["timeout"]) < 2.0
    assert session.get(server.url + "/echo").json() == {"rid": None, "timeout": None}


def test_requests_deadline_and_floor(server, session):
    with _ctx(0.3):
        t0 = time.monotonic()
        with pytest.raises(tether.DeadlineExceeded) as info:
            session.get(server.url + "/sleep?s=5")
        assert isinstance(info.value.__cause__, requests.exceptions.Timeout)
        assert time.monotonic() - t0 < 1.5
    before = server.hits
    with _ctx(0.004), pytest.raises(tether.DeadlineExceeded):
        session.get(server.url + "/sleep?s=0")
    ctx, cancel = _ctx(None)
    cancel()
    with ctx_entered(ctx), pytest.raises(tether.Canceled):
        session.get(server.url + "/sleep?s=0")
    assert server.hits == before
    with _ctx(10.0), pytest.raises(requests.exceptions.ReadTimeout):
        session.get(server.url + "/sleep?s=5", timeout=0.2)  # the caller's own timeout


class ctx_entered:
    """Make an existing context current (as a server integration does)."""

    def __init__(self, ctx: tether.Context) -> None:
        self.scope = tether.with_cancel(ctx)

    def __enter__(self) -> tether.Context:
        return self.scope.__enter__()

    def __exit__(self, *exc: object) -> None:
        self.scope.__exit__(None, None, None)


def test_requests_adapter_misuse():
    with pytest.raises(TypeError, match=r"^tether: policy"):
        ContextAdapter(policy="strict")  # type: ignore[arg-type]


def test_round_trip_through_the_middleware(server):
    # client transport -> ContextMiddleware: the server's context has the client's id and
    # a budget no larger than what the client had left
    seen: dict[str, object] = {}

    async def handler(request: Request) -> JSONResponse:
        ctx = tether.current()
        seen["rid"] = ctx.value(RID)
        seen["remaining"] = ctx.remaining()
        return JSONResponse({})

    app = Starlette(routes=[Route("/", handler)])
    app.add_middleware(ContextMiddleware)
    with serve(app) as url, httpx.Client(transport=ContextTransport()) as client:
        with _ctx(1.0, "rt-1") as ctx:
            left = ctx.remaining()
            r = client.get(url + "/")
        assert r.headers["x-request-id"] == "rt-1"
    assert seen["rid"] == "rt-1"
    assert seen["remaining"] < left - 0.005


@pytest.mark.parametrize(
    ("module", "library", "extra"),
    [
        ("httpx", "httpx", "httpx"),
        ("requests", "requests", "requests"),
        ("fastapi", "fastapi", "fastapi"),
    ],
)
def test_missing_library_names_the_extra(module, library, extra):
    import subprocess
    import sys

    code = (
        "import sys\n"
        f"sys.modules[{library!r}] = None  # as if it were not installed\n"
        "try:\n"
        f"    import tether.integrations.{module}\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (
        f"tether: tether.integrations.{module} needs the '{extra}' extra: "
        f"pip install 'tether[{extra}]'"
    )


def test_asgi_and_wsgi_import_only_the_stdlib():
    from test_api import _imported_by

    for module in ("tether.integrations.asgi", "tether.integrations.wsgi"):
        out = _imported_by(f"import {module}")
        assert module in out["new"]
        assert out["outside_stdlib"] == [], module
