"""The mixed chain: HTTP edge -> gRPC middle -> HTTP leaf, real servers on loopback.

The edge is a Starlette app behind the ASGI ContextMiddleware under uvicorn; it calls
the middle over ``grpc.aio`` with ``client_interceptors()``. The middle is a gRPC
server (``grpc.aio`` with its ServerInterceptor, or sync ``grpc`` with its) that calls
the leaf with httpx through tether's transport. The leaf (Starlette again) waits for
its context to end. The budget a client gives the edge shrinks hop by hop across both
protocols, the request id travels, and a client that disconnects from the edge ends
every hop's context.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import grpc.aio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import tether
from http_servers import serve as serve_http
from tether.integrations import grpc as tgrpc
from tether.integrations.asgi import ContextMiddleware, request_context
from tether.integrations.grpc import aio as tgrpc_aio
from tether.integrations.httpx import AsyncContextTransport, ContextTransport

pytestmark = pytest.mark.realtime

HOPS = ("edge", "middle", "leaf")
RELAY = "/tether.mixed.M/Relay"


class Record:
    def __init__(self) -> None:
        self.remaining: dict[str, float | None] = {}
        self.rid: dict[str, str | None] = {}
        self.ctx: dict[str, tether.Context] = {}
        self.started = {h: threading.Event() for h in HOPS}

    def enter(self, hop: str, ctx: tether.Context) -> None:
        self.remaining[hop] = ctx.remaining()
        self.rid[hop] = ctx.value(tether.REQUEST_ID)
        self.ctx[hop] = ctx
        self.started[hop].set()

    def ended(self, hop: str, timeout: float = 10.0) -> float:
        """Wait for hop's context to end; return when (monotonic)."""
        assert self.started[hop].wait(timeout), f"{hop} never started"
        ctx = self.ctx[hop]
        assert ctx.done().wait(timeout), f"{hop}'s context never ended"
        return time.monotonic()


def leaf_app(rec: Record) -> Starlette:
    async def handler(request: Request) -> Response:
        ctx = request_context(request)
        rec.enter("leaf", ctx)
        await ctx.done()
        ctx.check()
        return Response("unreachable")  # pragma: no cover

    app = Starlette(routes=[Route("/", handler)])
    app.add_middleware(ContextMiddleware)
    return app


def edge_app(rec: Record, middle: str) -> Starlette:
    async def handler(request: Request) -> Response:
        ctx = request_context(request)
        rec.enter("edge", ctx)
        interceptors = tgrpc_aio.client_interceptors()
        async with grpc.aio.insecure_channel(middle, interceptors=interceptors) as ch:
            reply = await ch.unary_unary(RELAY)(b"")
        return Response(reply)

    app = Starlette(routes=[Route("/", handler)])
    app.add_middleware(ContextMiddleware)
    return app


def relay_handlers(rec: Record, leaf: str) -> grpc.GenericRpcHandler:
    async def arelay(request: bytes, sctx: Any) -> bytes:
        rec.enter("middle", tether.current())
        async with httpx.AsyncClient(transport=AsyncContextTransport()) as c:
            r = await c.get(leaf + "/")
        if r.status_code == 504:  # the leaf's budget (ours, less a margin) ran out
            await sctx.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the leaf timed out")
        return r.content

    def relay(request: bytes, sctx: Any) -> bytes:
        rec.enter("middle", tether.current())
        with httpx.Client(transport=ContextTransport()) as c:
            r = c.get(leaf + "/")
        if r.status_code == 504:
            sctx.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the leaf timed out")
        return r.content

    return grpc.method_handlers_generic_handler(
        "tether.mixed.M",
        {
            "Relay": grpc.unary_unary_rpc_method_handler(arelay),
            "SyncRelay": grpc.unary_unary_rpc_method_handler(relay),
        },
    )


@contextlib.contextmanager
def aio_grpc_server(rec: Record, leaf: str) -> Iterator[str]:
    """A grpc.aio server with tether's interceptor, on its own loop in a thread."""
    loop = asyncio.new_event_loop()
    ready: futures.Future[str] = futures.Future()
    stop = asyncio.Event()

    async def main() -> None:
        server = grpc.aio.server(interceptors=[tgrpc_aio.ServerInterceptor()])
        server.add_generic_rpc_handlers((relay_handlers(rec, leaf),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        ready.set_result(f"127.0.0.1:{port}")
        await stop.wait()
        await server.stop(None)

    t = threading.Thread(target=loop.run_until_complete, args=(main(),), name="grpc-aio-mid")
    t.start()
    try:
        yield ready.result(10)
    finally:
        loop.call_soon_threadsafe(stop.set)
        t.join(10)
        loop.close()


@contextlib.contextmanager
def sync_grpc_server(rec: Record, leaf: str) -> Iterator[str]:
    pool = futures.ThreadPoolExecutor(4, thread_name_prefix="grpc-mid")
    server = grpc.server(
        pool, handlers=[relay_handlers(rec, leaf)], interceptors=[tgrpc.ServerInterceptor()]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None).wait()
        pool.shutdown()


@contextlib.contextmanager
def mixed_chain(middle_kind: str = "aio") -> Iterator[tuple[str, Record]]:
    rec = Record()
    with contextlib.ExitStack() as stack:
        leaf = stack.enter_context(serve_http(leaf_app(rec), "uvicorn-h11"))
        grpc_server = aio_grpc_server if middle_kind == "aio" else sync_grpc_server
        middle = stack.enter_context(grpc_server(rec, leaf))
        edge = stack.enter_context(serve_http(edge_app(rec, middle), "uvicorn-h11"))
        yield edge, rec


def test_budget_shrinks_across_http_and_grpc_and_the_edge_answers_504(capsys):
    with mixed_chain() as (edge, rec):
        with httpx.Client() as c:
            t0 = time.monotonic()
            r = c.get(edge + "/", headers={"x-request-timeout": "300m", "x-request-id": "mix-1"})
            took = time.monotonic() - t0
        assert r.status_code == 504, r.text
        assert r.headers["x-request-id"] == "mix-1"
        rem = rec.remaining
        assert rem["leaf"] < rem["middle"] < rem["edge"] <= 0.3, rem
        assert set(rec.rid.values()) == {"mix-1"}
        assert 0.28 <= took < 0.3 + 0.5, took
        rec.ended("leaf")
        assert isinstance(rec.ctx["leaf"].err(), tether.DeadlineExceeded | tether.Canceled)
        with capsys.disabled():
            print(
                f"\n[mixed chain] budgets edge {rem['edge'] * 1e3:.1f} ms -> gRPC middle "
                f"{rem['middle'] * 1e3:.1f} ms -> HTTP leaf {rem['leaf'] * 1e3:.1f} ms; "
                f"504 after {took * 1e3:.1f} ms"
            )


def test_client_disconnect_ends_every_hop_across_grpc(capsys):
    with mixed_chain() as (edge, rec):
        host, port = edge.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as s:
            s.sendall(b"GET / HTTP/1.1\r\nhost: edge\r\nx-request-id: mix-gone\r\n\r\n")
            t_sent = time.monotonic()
            assert rec.started["leaf"].wait(10)
            time.sleep(max(0.0, 0.1 - (time.monotonic() - t_sent)))
            t_close = time.monotonic()
        lat = {h: rec.ended(h) - t_close for h in HOPS}
        for h in HOPS:
            assert isinstance(rec.ctx[h].err(), tether.Canceled), h
        assert type(tether.cause(rec.ctx["middle"])).__name__ == "ClientCancelled"
        assert set(rec.rid.values()) == {"mix-gone"}
        with capsys.disabled():
            print(
                "\n[mixed chain] ended after the disconnect: "
                + ", ".join(f"{h} {lat[h] * 1e3:.1f} ms" for h in HOPS)
            )
        assert lat["leaf"] < 0.1, lat


def test_sync_grpc_middle_carries_the_budget():
    """A sync grpc middle with sync httpx: the budget crosses both protocols too."""
    rec = Record()
    with contextlib.ExitStack() as stack:
        leaf = stack.enter_context(serve_http(leaf_app(rec), "uvicorn-h11"))
        middle = stack.enter_context(sync_grpc_server(rec, leaf))
        ch = stack.enter_context(grpc.insecure_channel(middle))
        ch = grpc.intercept_channel(ch, tgrpc.ClientInterceptor())
        edge_ctx = tether.with_value(tether.background(), tether.REQUEST_ID, "mix-sync")
        with tether.with_timeout(edge_ctx, 0.3) as ctx:
            rec.enter("edge", ctx)
            with pytest.raises(tether.DeadlineExceeded):
                ch.unary_unary("/tether.mixed.M/SyncRelay")(b"")
        rec.ended("leaf")
    rem = rec.remaining
    assert rem["leaf"] < rem["middle"] < rem["edge"] <= 0.3, rem
    assert set(rec.rid.values()) == {"mix-sync"}
    assert json.dumps(rem)  # plain floats all the way
