"""The three apps of bench_boundaries.py row B3 (uvicorn --factory MODULE:NAME).

One trivial Starlette endpoint; ``bare`` has no middleware, ``tether`` has
``ContextMiddleware``, ``correlation`` has asgi-correlation-id's middleware,
``passthrough`` a middleware that only forwards the call and wraps ``send`` (B3i).
"""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


def _app() -> Starlette:
    return Starlette(routes=[Route("/", hello)])


def bare() -> Starlette:
    return _app()


def tether() -> Starlette:
    from tether.integrations.asgi import ContextMiddleware

    app = _app()
    app.add_middleware(ContextMiddleware)
    return app


def correlation() -> Starlette:
    from asgi_correlation_id import CorrelationIdMiddleware

    app = _app()
    app.add_middleware(CorrelationIdMiddleware)
    return app


class _PassThrough:
    """The least a pure ASGI middleware that sees the response can do: forward the
    call, wrapping ``send`` (B3i's reference for what any such layer costs)."""

    def __init__(self, app: Starlette) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def send_(message: Any) -> None:
            await send(message)

        await self.app(scope, receive, send_)


def passthrough() -> Starlette:
    app = _app()
    app.add_middleware(_PassThrough)
    return app
