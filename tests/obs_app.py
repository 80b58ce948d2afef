"""A small ASGI service instrumented with tether's observability, for the e2e tests.

Plain ASGI on purpose: the boundary middleware is another module's work; here each
request derives its own context from an ``x-budget`` header (seconds), reports the
budget, watches for the client's disconnect, and answers 504 when its deadline ends.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import tether
from tether import debug
from tether.integrations import _events

LEAKED: list[tether.Scope] = []
LEAK_LINE = 0


def forgetful(ctx: tether.Context) -> None:
    """A handler that derives a context and forgets to cancel it."""
    LEAKED.append(tether.with_timeout(tether.without_cancel(ctx), 3600))


LEAK_LINE = forgetful.__code__.co_firstlineno + 2


async def respond(send: Any, status: int, body: bytes, ctype: bytes = b"text/plain") -> None:
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", ctype)]}
    )
    await send({"type": "http.response.body", "body": body})


def make_app(metrics_app: Any) -> Any:
    view = debug.asgi_app(refresh=0.25)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/debug/tether":
            return await view(scope, receive, send)
        if path == "/metrics":
            return await metrics_app(scope, receive, send)
        headers = dict(scope["headers"])
        raw = headers.get(b"x-budget")
        budget = float(raw) if raw is not None else None
        _events.inbound_budget(budget)
        rid = headers.get(b"x-request-id", b"-").decode()
        query = dict(p.split("=") for p in scope["query_string"].decode().split("&") if p)
        base = tether.with_value(tether.background(), tether.REQUEST_ID, rid)
        request = tether.with_cancel(base) if budget is None else tether.with_timeout(base, budget)
        cancel = request.cancel

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            cancel()  # the client went away

        watcher = asyncio.create_task(watch())
        status = 200
        try:
            async with request as ctx:
                if path == "/work":
                    await tether.asleep(ctx, int(query.get("ms", "0")) / 1000)
                elif path == "/fanout":  # a small tree: a task group with two calls
                    ms = int(query.get("ms", "0")) / 1000

                    async def call(c: tether.Context, limit: float) -> None:
                        async with tether.with_timeout(c, limit) as c2:
                            await tether.asleep(c2, ms)

                    async with tether.TaskGroup(ctx) as g:
                        g.go(call, ms + 20)
                        g.go(call, ms + 30)
                elif path == "/leak":
                    forgetful(ctx)
        except tether.DeadlineExceeded:
            _events.budget_exhausted("asgi")
            status = 504
        except tether.Canceled:
            _events.client_disconnected("asgi")
            status = 499  # nobody to answer
        finally:
            watcher.cancel()
        if status != 499:
            await respond(send, status, b"ok" if status == 200 else b"deadline")

    return app


class Server:
    """uvicorn on a free loopback port, in a thread, for one test."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="test-uvicorn")
        self.url = ""

    def __enter__(self) -> Server:
        self.thread.start()
        end = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > end or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(20)
