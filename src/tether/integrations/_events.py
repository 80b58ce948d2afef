"""Boundary events for metrics: what callers sent, and where budgets ran out.

The server middleware and interceptors (``asgi``, ``wsgi``, ``grpc``) and outbound
clients call these two functions; ``tether.integrations.prometheus.instrument()``
turns them into ``tether_inbound_budget_seconds`` and
``tether_budget_exhausted_total{where}``. Stdlib only; with nothing instrumented each
call is one global check.

- ``inbound_budget(seconds)``: once per inbound request, with the budget the caller
  sent (``None`` when it sent none; clamped values are reported as sent, before the
  policy's clamp, so the histogram shows what callers really ask for).
- ``budget_exhausted(where)``: once per request whose budget ran out at a boundary.
  ``where`` names the place, lower case: ``"asgi"`` (a 504 before the response
  started), ``"asgi_response"`` (aborted after it started), ``"wsgi"``, ``"grpc"``,
  ``"outbound"`` (a call not sent because the budget was below ``policy.floor``).
- ``client_disconnected(where)``: once per request whose client went away before the
  answer (the 499s): ``"asgi"``, ``"websocket"``, ``"grpc"``.

All never block, are thread-safe, never raise (a failing sink is logged).
"""

from __future__ import annotations

import logging
from typing import Protocol

__all__ = ["Sink", "budget_exhausted", "client_disconnected", "inbound_budget", "set_sink"]


class Sink(Protocol):
    def inbound_budget(self, seconds: float | None) -> None: ...

    def budget_exhausted(self, where: str) -> None: ...

    def client_disconnected(self, where: str) -> None: ...


_sink: Sink | None = None
_log = logging.getLogger("tether")


def set_sink(sink: Sink | None) -> Sink | None:
    """Install ``sink`` (or none); return the previous one. Thread-safe."""
    global _sink
    old, _sink = _sink, sink
    return old


def inbound_budget(seconds: float | None) -> None:
    """Record the budget an inbound request carried (``None``: it sent none)."""
    s = _sink
    if s is not None:
        try:
            s.inbound_budget(seconds)
        except Exception:
            _log.exception("tether: a metrics sink raised in inbound_budget")


def budget_exhausted(where: str) -> None:
    """Record that a request's budget ran out at ``where`` (see the module docstring)."""
    s = _sink
    if s is not None:
        try:
            s.budget_exhausted(where)
        except Exception:
            _log.exception("tether: a metrics sink raised in budget_exhausted")


def client_disconnected(where: str) -> None:
    """Record that a request's client went away before the answer (a 499)."""
    s = _sink
    if s is not None:
        try:
            s.client_disconnected(where)
        except Exception:
            _log.exception("tether: a metrics sink raised in client_disconnected")
