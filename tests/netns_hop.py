"""One hop of the network-namespace chain (run as a script inside a namespace).

``python netns_hop.py NAME HOST PORT [NEXT_URL] MARGIN``: a Starlette app behind
ContextMiddleware; GET / answers a JSON list of what each hop saw (its name, the budget
it received, and its absolute deadline on CLOCK_MONOTONIC, which every namespace of one
kernel shares), calling NEXT_URL first if given, with a policy of margin MARGIN.

GET /ping answers at once: ``{"hop": NAME, "next_rtt": [...]}``, where ``next_rtt`` is,
with ``?n=N``, the round trip in seconds of each of N sequential GETs of the next hop's
``/ping`` over the hop's reused connection (the link's latency plus the next hop's
handling), else ``null``. It fails (500) while the next hop is not answering, so a 200 to
``/ping?n=1`` at the first hop means the whole chain is up.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import time

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tether import propagation
from tether.integrations.asgi import ContextMiddleware, request_context
from tether.integrations.httpx import AsyncContextTransport


def make(name: str, next_url: str | None, margin: float) -> Starlette:
    policy = propagation.Policy(margin=margin)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        transport = AsyncContextTransport(policy=policy)
        async with httpx.AsyncClient(transport=transport, trust_env=False) as client:
            app.state.client = client
            # A fresh process's first full collection walks every object of its startup
            # (~65 ms here): it would land in a measured call and pass for wire time.
            gc.collect()
            gc.freeze()
            yield

    async def hop(request: Request) -> JSONResponse:
        ctx = request_context(request)
        left = ctx.remaining()
        me = {
            "hop": name,
            "budget": left,
            "deadline": None if left is None else time.monotonic() + left,
        }
        if next_url is None:
            return JSONResponse([me])
        r = await request.app.state.client.get(next_url)
        return JSONResponse([me, *r.json()], status_code=r.status_code)

    async def ping(request: Request) -> JSONResponse:
        n = int(request.query_params.get("n", "0"))
        rtts: list[float] | None = None
        if next_url is not None and n > 0:
            rtts = []
            for _ in range(n):
                t0 = time.monotonic()
                r = await request.app.state.client.get(next_url + "ping")
                r.raise_for_status()
                rtts.append(time.monotonic() - t0)
        return JSONResponse({"hop": name, "next_rtt": rtts})

    app = Starlette(routes=[Route("/", hop), Route("/ping", ping)], lifespan=lifespan)
    app.add_middleware(ContextMiddleware)
    return app


if __name__ == "__main__":
    name, host, port, *rest = sys.argv[1:]
    margin = float(rest[-1])
    nxt = rest[0] if len(rest) == 2 else None
    uvicorn.run(make(name, nxt, margin), host=host, port=int(port), log_level="warning")
