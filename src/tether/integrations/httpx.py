"""httpx transports that send the context's budget and request id, and stop with it.

::

    import httpx
    from tether.integrations.httpx import AsyncContextTransport, ContextTransport

    client = httpx.AsyncClient(transport=AsyncContextTransport())
    async with tether.with_timeout(ctx, 2.0):
        r = await client.get(url)        # the context is tether.current() ...
    r = await client.get(url, extensions={"tether.context": ctx})   # ... or explicit

Each request uses ``request.extensions["tether.context"]`` if set, else
``tether.current()``, and:

- sends ``x-request-id`` and ``x-request-timeout`` (``propagation.inject``: the
  remaining budget minus ``policy.margin``); a call whose budget is below
  ``policy.floor`` is not sent: ``tether.DeadlineExceeded`` is raised locally;
- clamps each of httpx's timeouts (connect, read, write, pool) to the remaining budget;
- raises the context's error (``tether.DeadlineExceeded`` or ``tether.Canceled``,
  chained to httpx's exception when there is one), never httpx's timeout, when the
  context's deadline is what stopped the call. A shorter timeout of your own still
  raises httpx's ``TimeoutException``.

``AsyncContextTransport`` also ends the request the moment the context ends (a cancel
from any thread, or the deadline), while connecting, sending, waiting or reading the
body. The sync ``ContextTransport`` cannot interrupt a blocking read: a budget that
runs out in the middle of one is noticed when the (clamped) socket timeout fires, and
between body chunks.

Added in 0.1.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

try:
    import httpx
except ImportError as e:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "tether: tether.integrations.httpx needs the 'httpx' extra: pip install 'tether[httpx]'"
    ) from e

from .. import propagation
from .._context import Context, current, with_cancel
from .._errors import DeadlineExceeded
from ..propagation import Policy, PolicyHolder

__all__ = ["CONTEXT_EXTENSION", "AsyncContextTransport", "ContextTransport"]

CONTEXT_EXTENSION = "tether.context"
"""The ``request.extensions`` key naming the request's context explicitly."""

_LATE = 0.005  # a timeout firing this close to the deadline is the deadline's


def _context_of(request: httpx.Request) -> Context:
    ctx = request.extensions.get(CONTEXT_EXTENSION)
    if ctx is None:
        return current()
    if not isinstance(ctx, Context):
        raise TypeError(
            f"tether: request.extensions[{CONTEXT_EXTENSION!r}] must be a tether.Context, "
            f"got {type(ctx).__name__}"
        )
    return ctx


def _prepare(ctx: Context, request: httpx.Request, policy: Policy | PolicyHolder | None) -> bool:
    """Inject the headers and clamp the timeouts; True if the budget clamped one."""
    propagation.inject(ctx, request.headers, policy=policy)
    remaining = ctx.remaining()
    if remaining is None:
        return False
    timeout = request.extensions.get("timeout") or {}
    clamped = False
    new = {}
    for k in ("connect", "read", "write", "pool"):
        v = timeout.get(k)
        if v is None or v > remaining:
            v = remaining
            clamped = True
        new[k] = v
    request.extensions["timeout"] = new
    return clamped


def _translate(ctx: Context, clamped: bool, exc: httpx.TimeoutException) -> None:
    """Raise the context's error from ``exc`` if the context is why it timed out."""
    err = ctx.err()
    if err is None:
        left = ctx.remaining()
        if not clamped or left is None or left > _LATE:
            return  # a timeout of the caller's own: httpx's exception stands
        raise DeadlineExceeded() from exc
    raise type(err)() from exc


class _SyncStream(httpx.SyncByteStream):
    def __init__(self, inner: Any, ctx: Context, clamped: bool) -> None:
        self._inner = inner
        self._ctx = ctx
        self._clamped = clamped

    def __iter__(self) -> Iterator[bytes]:
        ctx = self._ctx
        try:
            for chunk in self._inner:
                yield chunk
                if ctx.err() is not None:
                    ctx.check()
        except httpx.TimeoutException as e:
            _translate(ctx, self._clamped, e)
            raise

    def close(self) -> None:
        self._inner.close()


class _AsyncStream(httpx.AsyncByteStream):
    def __init__(self, inner: Any, ctx: Context, clamped: bool) -> None:
        self._inner = inner
        self._ctx = ctx
        self._clamped = clamped

    async def __aiter__(self) -> AsyncIterator[bytes]:
        it = self._inner.__aiter__()
        while True:
            try:
                async with with_cancel(self._ctx):
                    chunk = await it.__anext__()
            except StopAsyncIteration:
                return
            except httpx.TimeoutException as e:
                _translate(self._ctx, self._clamped, e)
                raise
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class ContextTransport(httpx.BaseTransport):
    """A sync httpx transport carrying the context (see the module docstring).

    ``transport`` is the transport to wrap (default ``httpx.HTTPTransport()``);
    ``policy`` a ``propagation.Policy`` or ``PolicyHolder`` (its ``margin`` and
    ``floor`` apply), default ``Policy()``.

    Added in 0.1.
    """

    def __init__(
        self,
        transport: httpx.BaseTransport | None = None,
        *,
        policy: Policy | PolicyHolder | None = None,
    ) -> None:
        """Wrap ``transport``.

        Non-blocking; each call makes a new transport; thread-safe. No context is
        involved yet, so none can have already ended. Raises ``TypeError`` for a bad
        ``transport`` or ``policy``.
        """
        propagation._resolve(policy)
        if transport is not None and not isinstance(transport, httpx.BaseTransport):
            raise TypeError(
                "tether: ContextTransport wraps a sync httpx.BaseTransport, got "
                f"{type(transport).__name__}; for an AsyncClient use AsyncContextTransport"
            )
        self._transport = transport if transport is not None else httpx.HTTPTransport()
        self._policy = policy

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` under its context.

        Blocks until the response headers arrive (the body streams later). Each call
        sends one request; thread-safe as the wrapped transport is. If the context
        already ended, raises its error without sending. Raises
        ``tether.DeadlineExceeded`` below ``policy.floor`` or when the budget ran out,
        ``tether.Canceled`` if the context was cancelled, and httpx's own errors
        otherwise.
        """
        ctx = _context_of(request)
        clamped = _prepare(ctx, request, self._policy)
        try:
            response = self._transport.handle_request(request)
        except httpx.TimeoutException as e:
            _translate(ctx, clamped, e)
            raise
        response.stream = _SyncStream(response.stream, ctx, clamped)
        return response

    def close(self) -> None:
        """Close the wrapped transport.

        Blocks while it closes its connections; idempotent as the wrapped transport's
        ``close``; thread-safe as the wrapped transport is, but not concurrently with
        requests. No context involved, so none
        can have already ended. Raises what the wrapped transport raises.
        """
        self._transport.close()


class AsyncContextTransport(httpx.AsyncBaseTransport):
    """An async httpx transport carrying the context, ending with it.

    Like ``ContextTransport`` and, in addition, the request (connecting, sending,
    waiting for and reading the response) is interrupted the moment the context ends.
    ``transport`` defaults to ``httpx.AsyncHTTPTransport()``.

    Added in 0.1.
    """

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        policy: Policy | PolicyHolder | None = None,
    ) -> None:
        """Wrap ``transport``.

        Non-blocking; each call makes a new transport; thread-safe. No context is
        involved yet, so none can have already ended. Raises ``TypeError`` for a bad
        ``transport`` or ``policy``.
        """
        propagation._resolve(policy)
        if transport is not None and not isinstance(transport, httpx.AsyncBaseTransport):
            raise TypeError(
                "tether: AsyncContextTransport wraps an httpx.AsyncBaseTransport, got "
                f"{type(transport).__name__}; for a sync Client use ContextTransport"
            )
        self._transport = transport if transport is not None else httpx.AsyncHTTPTransport()
        self._policy = policy

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` under its context, interrupted when the context ends.

        Blocks (awaits) until the response headers arrive (the body streams later, also
        interruptible). Each call sends one new request; safe from any task of the
        client's event loop, not thread-safe beyond what httpx allows. If the context already ended,
        raises its error without sending. Raises ``tether.DeadlineExceeded`` below
        ``policy.floor`` or when the deadline passes, ``tether.Canceled`` when the
        context is cancelled, and httpx's own errors otherwise.
        """
        ctx = _context_of(request)
        clamped = _prepare(ctx, request, self._policy)
        try:
            async with with_cancel(ctx):
                response = await self._transport.handle_async_request(request)
        except httpx.TimeoutException as e:
            _translate(ctx, clamped, e)
            raise
        response.stream = _AsyncStream(response.stream, ctx, clamped)
        return response

    async def aclose(self) -> None:
        """Close the wrapped transport.

        Blocks (awaits) while its connections close; idempotent as the wrapped
        transport's ``aclose``; not thread-safe (use it from the client's event loop).
        No context involved, so none can have already ended. Raises what the wrapped
        transport raises.
        """
        await self._transport.aclose()
