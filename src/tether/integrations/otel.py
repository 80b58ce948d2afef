"""OpenTelemetry for tether: spans tied to a context (Go's ``runtime/trace`` regions).

::

    from tether.integrations.otel import region

    with tether.with_timeout(ctx, 2.0) as ctx, region(ctx, "charge card") as span:
        charge(ctx, order)
    # the span ends with tether.outcome = "ok" | "deadline" | "canceled" | "error"

``region(ctx, name)`` starts a span (current inside the block, so spans and log lines
inside nest under it), records the context's budget when it starts, adds an event the
moment the context ends (from tether's callback thread, while the block may still be
running), and at the end of the block sets the outcome as the attribute
``tether.outcome`` and as the span status. Needs ``opentelemetry-api``:
``pip install 'tether[otel]'``. tether invents no trace ids: with no SDK configured the
span is OpenTelemetry's no-op span.

``TetherPropagator`` (sending tether's deadline and request id through any
OpenTelemetry-instrumented client) is re-exported here from ``_otel_propagator``.

Added in 0.1.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Any

from .._context import Context, _owner, after_func
from .._errors import Canceled, ContextError, DeadlineExceeded
from .._keys import REQUEST_ID
from ._tags import need

need("opentelemetry.trace", "otel", "otel")

from opentelemetry import context as _otel_context  # noqa: E402
from opentelemetry import trace as _trace  # noqa: E402

from ._otel_propagator import TetherPropagator  # noqa: E402

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

__all__ = ["OUTCOMES", "Region", "TetherPropagator", "region"]

OUTCOMES = ("ok", "deadline", "canceled", "error")


def outcome(ctx: Context, exc: BaseException | None) -> str:
    """How a region ended: the context's state first, then the block's exception."""
    err = ctx.err()
    if isinstance(err, DeadlineExceeded):
        return "deadline"
    if isinstance(err, Canceled):
        return "canceled"
    if isinstance(exc, DeadlineExceeded):  # a deadline of a context outside this one
        return "deadline"
    if isinstance(exc, ContextError):
        return "canceled"
    if exc is not None and not isinstance(exc, GeneratorExit):
        return "error"
    return "ok"


class Region:
    """A span tied to a context, for one ``with`` or ``async with`` block.

    Made by ``region(ctx, name)``; see there. Enter it once (a second entry raises
    ``RuntimeError``); entering does not block. Not thread-safe: enter and exit it on one
    thread or task (the context-ended event may come from any thread). A context that
    already ended gives a span with the ended outcome.

    Added in 0.1.
    """

    __slots__ = ("_ctx", "_name", "_span", "_stop", "_token", "_tracer", "_attributes")

    def __init__(
        self, ctx: Context, name: str, tracer: Tracer, attributes: dict[str, Any] | None
    ) -> None:
        """Use ``region(ctx, name)``, which validates its arguments and makes one.

        Does not block and starts no span (entering does); each call makes a new region;
        thread-safe (it only stores its arguments). A context that already ended is
        accepted: the span then records the ended outcome. Raises nothing itself.
        """
        self._ctx = ctx
        self._name = name
        self._tracer = tracer
        self._attributes = attributes
        self._span: Span | None = None
        self._token: object = None
        self._stop: Any = None

    def __enter__(self) -> Span:
        if self._span is not None:
            raise RuntimeError("tether: a region can be entered once; call region() again")
        ctx = self._ctx
        attrs: dict[str, Any] = dict(self._attributes or {})
        left = ctx.remaining()
        if left is not None:
            attrs["tether.budget_seconds"] = left
        rid = ctx.value(REQUEST_ID)
        if rid is not None:
            attrs["tether.request_id"] = rid
        span = self._tracer.start_span(self._name, attributes=attrs)
        self._span = span
        self._token = _otel_context.attach(_trace.set_span_in_context(span))

        def ended() -> None:
            err = ctx.err()
            reason = "deadline" if isinstance(err, DeadlineExceeded) else "canceled"
            span.add_event("tether.context_ended", {"tether.reason": reason})

        self._stop = after_func(ctx, ended)
        return span

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        span = self._span
        assert span is not None, "tether: region exited without being entered"
        self._stop()
        try:
            out = outcome(self._ctx, exc)
            span.set_attribute("tether.outcome", out)
            if out == "ok":
                span.set_status(_trace.Status(_trace.StatusCode.OK))
            else:
                if exc is not None and out == "error":
                    span.record_exception(exc)
                err = self._ctx.err() or exc
                span.set_status(_trace.Status(_trace.StatusCode.ERROR, f"{out}: {err}"))
        finally:
            _otel_context.detach(self._token)  # type: ignore[arg-type]
            span.end()

    async def __aenter__(self) -> Span:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


def region(
    ctx: Context,
    name: str,
    *,
    tracer: Tracer | None = None,
    attributes: dict[str, Any] | None = None,
) -> Region:
    """A span named ``name`` for the block, ended with how ``ctx`` ended.

    ``with region(ctx, name) as span:`` (or ``async with``) starts the span with
    ``tracer`` (default: ``opentelemetry.trace.get_tracer("tether")``) and makes it the
    current span in the block. Its attributes: ``attributes``, plus
    ``tether.budget_seconds`` (``ctx.remaining()`` at the start, when ``ctx`` has a
    deadline) and ``tether.request_id`` (when bound). When ``ctx`` ends while the block
    runs, the span gets an event ``tether.context_ended`` with ``tether.reason`` at that
    moment. On exit: ``tether.outcome`` is ``"deadline"`` or ``"canceled"`` if ``ctx``
    ended (or the block raised a ``tether`` error), else ``"error"`` if the block raised
    (the exception is recorded), else ``"ok"``; the status is ``OK`` for ``"ok"`` and
    ``ERROR`` otherwise. Exceptions propagate unchanged.

    Does not block. Each call makes a new region (enter it once; a second entry raises
    ``RuntimeError``). Thread-safe: use the region on one thread or task. A context that
    already ended gives a span with the ended outcome. Raises ``TypeError`` when ``ctx``
    is not a context.

    Added in 0.1.
    """
    _owner(ctx)
    if not isinstance(name, str):
        raise TypeError(f"tether: region name must be a str, got {type(name).__name__}")
    return Region(ctx, name, tracer or _trace.get_tracer("tether"), attributes)
