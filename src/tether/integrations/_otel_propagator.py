"""``TetherPropagator``: tether's headers for OpenTelemetry-instrumented clients.

Registered on the ``opentelemetry_propagator`` entry point as ``tether``, so
``OTEL_PROPAGATORS=tracecontext,baggage,tether`` makes every instrumented client (httpx,
requests, aiohttp, grpc ...) send ``x-request-id`` and ``x-request-timeout`` beside the
trace context. Trace context and baggage stay OpenTelemetry's: this propagator reads
and writes only tether's two headers and invents no trace ids.

opentelemetry-api is imported with this module; without it, ``ImportError`` names the
extra: ``pip install 'tether[otel]'``. Re-exported as ``tether.integrations.otel``.

Added in 0.1.
"""

from __future__ import annotations

from typing import Any, Final

try:
    from opentelemetry import context as otel_context
    from opentelemetry.propagators.textmap import (
        CarrierT,
        Getter,
        Setter,
        TextMapPropagator,
        default_getter,
        default_setter,
    )
except ImportError as _e:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "tether: tether.integrations.otel needs the 'otel' extra: pip install 'tether[otel]'"
    ) from _e

from .. import propagation
from .._context import Context, current
from .._keys import REQUEST_ID

__all__ = ["REQUEST_ID_KEY", "TIMEOUT_KEY", "TetherPropagator"]

REQUEST_ID_KEY: Final = "tether.request_id"
"""The OpenTelemetry context key under which ``extract`` puts a valid inbound request id."""

TIMEOUT_KEY: Final = "tether.timeout"
"""The OpenTelemetry context key under which ``extract`` puts an inbound budget (seconds)."""


class TetherPropagator(TextMapPropagator):
    """An OpenTelemetry ``TextMapPropagator`` for tether's request id and budget.

    ``inject`` writes ``x-request-id`` (``tether.REQUEST_ID`` of ``tether.current()``,
    when valid) and ``x-request-timeout`` (its remaining budget minus
    ``policy.margin``; a context without deadline sends none). It never raises: a
    context that already ended, or whose budget is below ``policy.floor``, sends
    ``x-request-timeout: 0n`` so the server starts with an ended context instead of an
    unlimited one. (Refusing the call is the job of tether's own client integrations,
    which raise ``DeadlineExceeded``.)

    ``extract`` returns the OpenTelemetry context with ``tether.request_id`` (a valid
    id) and ``tether.timeout`` (the smallest valid budget of ``x-request-timeout`` and
    ``grpc-timeout``, seconds) set when present; malformed values are ignored. It does
    not make a tether context: tether's server middleware does that, with its policy.

    Non-blocking; stateless apart from its policy, so one instance is thread-safe and
    every call is independent (idempotent). ``policy`` is a ``propagation.Policy``,
    a ``PolicyHolder`` or ``None``; a bad one raises ``TypeError``.

    Added in 0.1.
    """

    def __init__(self, policy: propagation.Policy | propagation.PolicyHolder | None = None) -> None:
        """Non-blocking; thread-safe; raises ``TypeError`` for a bad ``policy``.

        Each call makes a new propagator; no context is read yet, so none can have
        already ended.
        """
        if policy is not None and not isinstance(
            policy, propagation.Policy | propagation.PolicyHolder
        ):
            raise TypeError(
                "tether: TetherPropagator(policy=...) takes a tether.propagation.Policy, "
                f"a PolicyHolder or None; got {type(policy).__name__}"
            )
        self._policy = policy

    def _resolve(self) -> propagation.Policy:
        p = self._policy
        if isinstance(p, propagation.PolicyHolder):
            return p.policy
        return p if p is not None else _DEFAULT

    def inject(
        self,
        carrier: CarrierT,
        context: otel_context.Context | None = None,
        setter: Setter[CarrierT] = default_setter,
    ) -> None:
        """Write tether's headers for ``tether.current()`` into ``carrier``.

        ``context`` (OpenTelemetry's) is ignored: the budget and the request id belong
        to tether's context. Non-blocking; idempotent; thread-safe. Never raises; an
        already ended context sends ``0n``.
        """
        ctx: Context = current()
        rid = ctx.value(REQUEST_ID)
        if rid is not None and propagation.parse_request_id(rid) is not None:
            setter.set(carrier, propagation.REQUEST_ID_HEADER, rid)
        remaining = ctx.remaining()
        if remaining is None and ctx.err() is None:
            return
        budget = -1.0 if remaining is None else remaining - self._resolve().margin
        if ctx.err() is not None or budget < self._resolve().floor:
            budget = 0.0
        encoded = propagation.encode_timeout(budget)
        if encoded is not None:
            setter.set(carrier, propagation.TIMEOUT_HEADER, encoded)

    def extract(
        self,
        carrier: CarrierT,
        context: otel_context.Context | None = None,
        getter: Getter[CarrierT] = default_getter,
    ) -> otel_context.Context:
        """``context`` (default: the current OpenTelemetry one) with tether's values set.

        Non-blocking; idempotent; thread-safe. Never raises on header content;
        malformed values are left out. No tether context is involved, so none can have
        already ended.
        """
        if context is None:
            context = otel_context.get_current()
        rid = _first(getter.get(carrier, propagation.REQUEST_ID_HEADER))
        rid = propagation.parse_request_id(rid) if rid is not None else None
        if rid is not None:
            context = otel_context.set_value(REQUEST_ID_KEY, rid, context)
        budget: float | None = None
        for name in (propagation.TIMEOUT_HEADER, propagation.GRPC_TIMEOUT_HEADER):
            t = propagation.decode_timeout(_first(getter.get(carrier, name)))
            if t is not None and (budget is None or t < budget):
                budget = t
        if budget is not None:
            context = otel_context.set_value(TIMEOUT_KEY, budget, context)
        return context

    @property
    def fields(self) -> set[str]:
        """The header names ``inject`` may write: the same set on every call.

        Non-blocking; thread-safe; no context involved, so none can have already ended.
        Raises nothing.
        """
        return {propagation.REQUEST_ID_HEADER, propagation.TIMEOUT_HEADER}


_DEFAULT: Final = propagation.Policy()


def _first(values: Any) -> str | None:
    if not values:
        return None
    v = values[0] if isinstance(values, list | tuple) else values
    return v if isinstance(v, str) else None
