"""Hooks into third-party libraries: one module per library, imported lazily.

``import tether`` imports none of them, and none imports its library until a function
that needs it is called; a missing library raises ``ImportError`` naming the extra to
install (``pip install 'tether[name]'``).

- ``tether.integrations.tenacity``: tenacity stop/retry/sleep hooks that end retrying
  with a context (extra ``tenacity``).
- ``tether.integrations.sqlite3``, ``.psycopg``, ``.asyncpg``, ``.redis``: ``bind(ctx,
  conn)`` stops a query or a blocking command (on the server where there is one) when
  the context ends, and raises the context's error (extras of the same names; see
  docs/io.md).
- ``tether.integrations.asgi``: ``ContextMiddleware`` for any ASGI app (extra ``asgi``,
  standard library only).
- ``tether.integrations.fastapi``: the ``RequestContext`` dependency (extra ``fastapi``).
- ``tether.integrations.wsgi``: ``ContextMiddleware`` and ``init_flask`` for WSGI apps
  (extra ``wsgi``, standard library only).
- ``tether.integrations.httpx``: ``ContextTransport``/``AsyncContextTransport``
  (extra ``httpx``).
- ``tether.integrations.requests``: ``ContextAdapter`` (extra ``requests``).
- ``tether.integrations.grpc`` and ``.grpc.aio``: server and client interceptors that
  carry deadlines, cancellation and request ids over gRPC (extra ``grpc``).
- ``tether.integrations.otel``: ``TetherPropagator``, tether's headers for
  OpenTelemetry-instrumented clients (extra ``otel``).
- ``tether.integrations.stdlib_logging``: ``ContextFilter`` tags log records with the
  request id, trace id and worker (no extra).
- ``tether.integrations.structlog``: the ``add_context`` processor (extra ``structlog``).
- ``tether.integrations.prometheus``: ``instrument()``/``uninstrument()``, context and
  budget metrics (extra ``prometheus``).
- ``tether.integrations.otel``: ``region(ctx, name)``, spans ended with the context's
  outcome (extra ``otel``).
- ``tether.integrations.uvicorn`` / ``tether.integrations.hypercorn``: ``Server(app,
  host=, port=).serve``, an ASGI server as a ``Supervisor`` component that leaves
  signals to tether, stops accepting on shutdown and drains within the supervisor's
  deadline (extras ``uvicorn``, ``hypercorn``).
- ``tether.integrations.redis_streams``, ``.nats``, ``.kafka``: sources for
  ``tether.lifecycle.Consumer`` (extras ``redis``, ``nats``, ``kafka``).
"""
