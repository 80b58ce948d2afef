"""Tag stdlib ``logging`` records with the request they belong to.

::

    import logging
    from tether.integrations.stdlib_logging import ContextFilter

    handler = logging.StreamHandler()
    handler.addFilter(ContextFilter())
    handler.setFormatter(logging.Formatter("%(request_id)s %(worker)s %(message)s"))
    logging.getLogger().addHandler(handler)

Every record that reaches the handler gets three attributes, read from the record's
context: ``request_id`` (``tether.REQUEST_ID``), ``worker`` (``tether.lifecycle.WORKER``)
and ``trace_id`` (the current OpenTelemetry span's trace id, as 32 hex digits, when
``opentelemetry-api`` is installed and a span is recording). The record's context is
``extra={"ctx": ctx}`` when the call passes one, else ``tether.current()`` — which
``tether.Group`` workers, ``tether.to_thread`` functions and asyncio tasks inherit from
the code that started them, so work fanned out from a request logs the request's id.

Attach the filter to a *handler* (it then sees records from every logger that
propagates to it); a filter on a logger sees only that logger's own records. This
module needs no extra: ``logging`` is the standard library.

Added in 0.1.
"""

from __future__ import annotations

import logging

from ._tags import context_of, tags

__all__ = ["ContextFilter"]


class ContextFilter(logging.Filter):
    """A ``logging.Filter`` that adds ``request_id``, ``trace_id`` and ``worker``.

    ``missing`` is the value of a tag that is not bound (default ``None``; ``"-"`` suits
    a ``%``-format). A tag the call already set (``extra={"request_id": ...}``) is kept.
    The filter never drops a record. ``name`` is ``logging.Filter``'s logger-name prefix.

    ``filter()`` does not block (dictionary lookups, plus OpenTelemetry's current span),
    is thread-safe and has no state of its own, so calling it again on the same record
    is idempotent. A context that already ended still tags its records (its values stay
    readable). It raises nothing; a ``ctx`` extra that is not a ``tether.Context`` is
    ignored in favour of ``tether.current()``.

    Added in 0.1.
    """

    def __init__(self, name: str = "", *, missing: str | None = None) -> None:
        super().__init__(name)
        self.missing = missing

    def filter(self, record: logging.LogRecord) -> bool:
        """Tag ``record`` and return ``True`` (or ``False`` if ``name`` excludes it).

        Non-blocking, thread-safe, idempotent; a context that already ended still tags
        the record; raises nothing (see the class).
        """
        if not super().filter(record):
            return False
        rid, tid, worker = tags(context_of(getattr(record, "ctx", None)))
        d = record.__dict__
        m = self.missing
        if "request_id" not in d:
            d["request_id"] = m if rid is None else rid
        if "trace_id" not in d:
            d["trace_id"] = m if tid is None else tid
        if "worker" not in d:
            d["worker"] = m if worker is None else worker
        return True
