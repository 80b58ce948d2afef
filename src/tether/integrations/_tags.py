"""What the logging integrations tag a record with, read from one context.

Shared by ``stdlib_logging`` and ``structlog``: the request id (``tether.REQUEST_ID``),
the worker (``tether.lifecycle.WORKER``) and the OpenTelemetry trace id of the current
span. OpenTelemetry is optional: it is imported on the first call, and when it is not
installed the trace id is always ``None`` (no error: the other tags still work).
"""

from __future__ import annotations

import importlib
from typing import Any

from .._context import Context, current
from .._keys import REQUEST_ID
from ..lifecycle._common import WORKER

__all__ = ["context_of", "need", "tags", "trace_id"]

_UNSET: Any = object()
_get_span: Any = _UNSET  # opentelemetry.trace.get_current_span, or None when absent


def need(module: str, extra: str, user: str) -> Any:
    """Import ``module`` or raise ``ImportError`` naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"tether: tether.integrations.{user} needs the '{extra}' extra: "
            f"pip install 'tether[{extra}]'"
        ) from e


def trace_id() -> str | None:
    """The current OpenTelemetry span's trace id (32 hex digits), or ``None``.

    ``None`` when OpenTelemetry is not installed or no valid span is current.
    """
    global _get_span
    get = _get_span
    if get is _UNSET:
        try:
            from opentelemetry import trace
        except ImportError:
            get = None
        else:
            get = trace.get_current_span
        _get_span = get
    if get is None:
        return None
    sc = get().get_span_context()
    if not sc.is_valid:
        return None
    return format(sc.trace_id, "032x")


def context_of(explicit: object) -> Context:
    """``explicit`` when it is a context, else ``tether.current()``."""
    return explicit if isinstance(explicit, Context) else current()


def tags(ctx: Context) -> tuple[str | None, str | None, str | None]:
    """``(request_id, trace_id, worker)`` for ``ctx``; each may be ``None``."""
    return ctx.value(REQUEST_ID), trace_id(), ctx.value(WORKER)
