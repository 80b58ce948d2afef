"""The three-hop chain edge -> middle -> leaf of real ASGI apps on loopback.

Each hop is a Starlette app behind ContextMiddleware that calls the next hop with httpx
through AsyncContextTransport; the leaf waits for its context to end. Run under uvicorn
(h11 and httptools) and hypercorn: a 300 ms budget shrinks hop by hop and ends in a 504
from the edge; a client that disconnects cancels every hop.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import tether
from http_servers import ASGI_SERVERS, serve
from tether.integrations.asgi import ContextMiddleware, request_context
from tether.integrations.httpx import AsyncContextTransport

pytestmark = pytest.mark.realtime

HOPS = ("edge", "middle", "leaf")
# Made once: httpx builds an SSL context per client otherwise (tens of ms of CPU, which
# would show up as transit time between hops).
SSL = ssl.create_default_context()


def client() -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=AsyncContextTransport(httpx.AsyncHTTPTransport(verify=SSL)))


class Record:
    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.events: dict[str, threading.Event] = {h: threading.Event() for h in HOPS}
        self.started = {h: threading.Event() for h in HOPS}

    def reset(self) -> None:
        self.data.clear()
        for e in (*self.events.values(), *self.started.values()):
            e.clear()

    def wait(self, hop: str, timeout: float = 10.0) -> dict[str, Any]:
        assert self.events[hop].wait(timeout), f"{hop} never saw its context end"
        return self.data[hop]


def hop_app(name: str, rec: Record, next_url: list[str]) -> Starlette:
    async def handler(request: Request) -> Response:
        ctx = request_context(request)
        rec.data[name + ".remaining"] = ctx.remaining()
        rec.data[name + ".rid"] = ctx.value(tether.REQUEST_ID)
        rec.started[name].set()
        try:
            if next_url:
                async with client() as c:
                    r = await c.get(next_url[0] + "/")
                return Response(r.content, status_code=r.status_code)
            await ctx.done()
            ctx.check()
            return Response("unreachable")
        finally:
            if ctx.err() is not None and name not in rec.data:
                rec.data[name] = {
                    "t": time.monotonic(),
                    "err": ctx.err(),
                    "cause": tether.cause(ctx),
                }
                rec.events[name].set()

    app = Starlette(routes=[Route("/", handler)])
    app.add_middleware(ContextMiddleware)
    return app


@contextlib.contextmanager
def chain(kind: str) -> Iterator[tuple[str, Record]]:
    rec = Record()
    with contextlib.ExitStack() as stack:
        leaf = stack.enter_context(serve(hop_app("leaf", rec, []), kind))
        middle = stack.enter_context(serve(hop_app("middle", rec, [leaf]), kind))
        edge = stack.enter_context(serve(hop_app("edge", rec, [middle]), kind))
        yield edge, rec


@pytest.mark.parametrize("kind", ASGI_SERVERS)
def test_budget_shrinks_hop_by_hop_and_the_edge_answers_504(kind):
    with chain(kind) as (edge, rec):
        with httpx.Client(verify=SSL) as c:
            t0 = time.monotonic()
            r = c.get(edge + "/", headers={"x-request-timeout": "300m", "x-request-id": "chain-1"})
            took = time.monotonic() - t0
        assert r.status_code == 504, r.text
        assert r.headers["x-request-id"] == "chain-1"
        rem = {h: rec.data[h + ".remaining"] for h in HOPS}
        assert rem["leaf"] < rem["middle"] < rem["edge"] <= 0.3, rem
        assert {rec.data[h + ".rid"] for h in HOPS} == {"chain-1"}
        assert 0.28 <= took < 0.3 + 0.5, took
        # The leaf's context ended: by its own deadline, or (when a hop took longer
        # than policy.margin to reach it, which a loaded machine does) by the middle
        # hop giving up first and disconnecting.
        leaf = rec.wait("leaf")
        assert isinstance(leaf["err"], tether.DeadlineExceeded | tether.Canceled)
        print(
            f"\n{kind}: budgets edge {rem['edge'] * 1e3:.1f} ms, middle "
            f"{rem['middle'] * 1e3:.1f} ms, leaf {rem['leaf'] * 1e3:.1f} ms; 504 after "
            f"{took * 1e3:.1f} ms; the leaf ended by {type(leaf['err']).__name__}"
        )


@pytest.mark.parametrize("kind", ASGI_SERVERS)
def test_client_disconnect_cancels_every_hop(kind):
    with chain(kind) as (edge, rec):
        host, port = edge.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as s:
            s.sendall(b"GET / HTTP/1.1\r\nhost: edge\r\nx-request-id: gone-2\r\n\r\n")
            t_sent = time.monotonic()
            assert rec.started["leaf"].wait(10)
            time.sleep(max(0.0, 0.1 - (time.monotonic() - t_sent)))
            t_close = time.monotonic()
        lat = {}
        for h in HOPS:
            got = rec.wait(h)
            assert isinstance(got["err"], tether.Canceled), (h, got)
            lat[h] = got["t"] - t_close
        print(
            f"\n{kind}: cancelled after the disconnect: "
            + ", ".join(f"{h} {lat[h] * 1e3:.1f} ms" for h in HOPS)
        )
        assert max(lat.values()) < 0.5, lat
