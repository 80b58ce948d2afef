"""Hooks into third-party libraries: one module per library, imported lazily.

``import tether`` imports none of them, and none imports its library until a function
that needs it is called; a missing library raises ``ImportError`` naming the extra to
install (``pip install 'tether[name]'``).

- ``tether.integrations.tenacity``: tenacity stop/retry/sleep hooks that end retrying
  with a context (extra ``tenacity``).
- ``tether.integrations.stdlib_logging``: ``ContextFilter`` tags log records with the
  request id, trace id and worker (no extra).
- ``tether.integrations.structlog``: the ``add_context`` processor (extra ``structlog``).
- ``tether.integrations.prometheus``: ``instrument()``/``uninstrument()``, context and
  budget metrics (extra ``prometheus``).
- ``tether.integrations.otel``: ``region(ctx, name)``, spans ended with the context's
  outcome (extra ``otel``).
"""
