"""The three apps of bench_boundaries.py row B3 (uvicorn --factory MODULE:NAME).

One trivial Starlette endpoint; ``bare`` has no middleware, ``tether`` has
``ContextMiddleware``, ``correlation`` has asgi-correlation-id's middleware.
"""

from __future__ import annotations

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
