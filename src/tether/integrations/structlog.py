"""A structlog processor that adds the request's tags to every event.

::

    import structlog
    from tether.integrations.structlog import add_context

    structlog.configure(processors=[add_context, structlog.processors.JSONRenderer()])
    structlog.get_logger().info("charged", amount=12)
    # {"amount": 12, "event": "charged", "request_id": "a1b2", "worker": null, ...}

``add_context`` adds ``request_id`` (``tether.REQUEST_ID``), ``trace_id`` (the current
OpenTelemetry span's, when ``opentelemetry-api`` is installed) and ``worker``
(``tether.lifecycle.WORKER``) from the event's ``ctx=`` key (which it removes: a
context is not serialisable) or else ``tether.current()``. Keys the event already has
are kept. Importing this module needs structlog: ``pip install 'tether[structlog]'``.

Added in 0.1.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from .._context import Context
from ._tags import context_of, need, tags

need("structlog", "structlog", "structlog")

__all__ = ["add_context"]


def add_context(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: add ``request_id``, ``trace_id`` and ``worker`` to the event.

    The context is ``event_dict.pop("ctx")`` when that is a ``tether.Context``, else
    ``tether.current()``. Tags that are not bound are set to ``None`` (so JSON lines
    keep one shape); keys already in the event are kept. Non-blocking, thread-safe,
    idempotent (a second pass changes nothing). A context that already ended still
    tags its events. Raises nothing.

    Added in 0.1.
    """
    explicit = event_dict.get("ctx")
    if isinstance(explicit, Context):
        del event_dict["ctx"]
    rid, tid, worker = tags(context_of(explicit))
    event_dict.setdefault("request_id", rid)
    event_dict.setdefault("trace_id", tid)
    event_dict.setdefault("worker", worker)
    return event_dict
