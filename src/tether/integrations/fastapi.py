"""FastAPI: the request's context as a handler parameter.

::

    from fastapi import FastAPI
    from tether.integrations.asgi import ContextMiddleware
    from tether.integrations.fastapi import RequestContext

    app = FastAPI()
    app.add_middleware(ContextMiddleware)

    @app.get("/orders/{id}")
    async def order(id: int, ctx: RequestContext) -> dict:
        return await load(ctx, id)

    @app.get("/report")
    def report(ctx: RequestContext) -> str:      # runs in FastAPI's thread pool
        ctx.done().wait(2.0)                     # wakes when the request's context ends
        ctx.check()                              # -> 504 if the deadline passed
        return "done"

``RequestContext`` is ``Annotated[tether.Context, Depends(...)]``: the context that
``tether.integrations.asgi.ContextMiddleware`` made for the request (or websocket). It is
the same object in ``async def`` and plain ``def`` handlers; a ``def`` handler runs in
a worker thread and still sees the context end (``ctx.done().wait()`` wakes,
``ctx.err()`` turns non-``None``), and ``tether.current()`` is the context there too.
Without the middleware the dependency raises ``LookupError`` (a 500) naming it.

Added in 0.1.
"""

from __future__ import annotations

from typing import Annotated

try:
    from fastapi import Depends
    from starlette.requests import HTTPConnection
except ImportError as e:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "tether: tether.integrations.fastapi needs the 'fastapi' extra: "
        "pip install 'tether[fastapi]'"
    ) from e

from .._context import Context
from .asgi import request_context

__all__ = ["RequestContext", "request_context_dependency"]


async def request_context_dependency(connection: HTTPConnection) -> Context:
    """The FastAPI dependency behind ``RequestContext``: the request's context.

    ``async`` so that FastAPI runs it on the event loop, not in its thread pool.

    Non-blocking; the same context on every call for one request; thread-safe (it only
    reads the scope).
    Returns the context even if it already ended. Raises ``LookupError`` when
    ``ContextMiddleware`` did not run for the request.
    """
    return request_context(connection.scope)


RequestContext = Annotated[Context, Depends(request_context_dependency)]
"""A handler parameter ``ctx: RequestContext`` receives the request's context."""
