"""``grpc.aio`` interceptors: the asyncio half of ``tether.integrations.grpc``.

Server side, ``ServerInterceptor(policy=None)`` runs every ``async def`` handler (all
four arities; response streams as async generators or with ``context.write``) inside
``async with`` its call's context: the deadline is the call's (clamped by the policy),
the request id comes from ``x-request-id`` metadata, the context is ``tether.current()``
in the handler, and when it ends — deadline, client cancel (cause ``ClientCancelled``)
— the handler's task is interrupted at its next ``await``. A ``tether.DeadlineExceeded``
or ``Canceled`` that escapes the handler is answered ``DEADLINE_EXCEEDED``/``CANCELLED``,
never ``UNKNOWN``::

    server = grpc.aio.server(interceptors=[tether.integrations.grpc.aio.ServerInterceptor()])

Client side, ``grpc.aio`` registers an interceptor for one arity only, so
``client_interceptors()`` returns four (one per arity) to pass together::

    channel = grpc.aio.insecure_channel(addr, interceptors=client_interceptors())

Each call is made under ``tether.current()`` with ``timeout = min(explicit, remaining -
margin)`` (compensated for grpc-core's rounding), the request id in the metadata, and
is cancelled the moment the context ends; awaiting it (or iterating its responses) then
raises the context's error (``Canceled``/``DeadlineExceeded``), not
``asyncio.CancelledError`` or ``AioRpcError``. A cancellation of the awaiting task
itself still raises ``CancelledError``.

Plain ``def`` handlers that a ``grpc.aio`` server runs in its thread pool are passed
through untouched; serve them with ``grpc.server`` and the sync interceptor.

Added in 0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Callable, Generator
from typing import Any, Final

import grpc
import grpc.aio

from ... import propagation
from ..._context import Context, Scope, after_func, current
from ..._errors import ContextError, DeadlineExceeded
from .. import _events
from ._common import (
    LATE,
    ClientCancelled,
    check_policy,
    classify,
    ctx_error,
    outbound,
    resolve,
    server_scope,
    status_name,
)

__all__ = ["ClientCancelled", "ServerInterceptor", "client_interceptors"]

_Policy = propagation.Policy | propagation.PolicyHolder | None
_CACHE_MAX: Final = 1024
_TIMER_SLACK: Final = 0.005


# --------------------------------------------------------------------------------------
# Server


def _begin(sctx: Any, policy: _Policy) -> Scope:
    scope = server_scope(
        sctx.time_remaining(), sctx.invocation_metadata(), sctx.peer(), resolve(policy)
    )
    ctx, cancel = scope

    def rpc_done(_sctx: Any) -> None:  # on the loop, when the RPC ends
        if ctx.err() is not None:
            return
        tr = sctx.time_remaining()
        if tr is not None and tr <= 0:  # the gRPC deadline: see the sync interceptor
            r = ctx.remaining()
            if r is not None and r <= _TIMER_SLACK:
                return
            cancel(DeadlineExceeded())
        else:
            _events.client_disconnected("grpc")
            cancel(ClientCancelled())

    sctx.add_done_callback(rpc_done)
    return scope


async def _abort(sctx: Any, err: ContextError) -> None:
    try:
        await sctx.abort(grpc.StatusCode[status_name(err)], str(err))
    except grpc.aio.AbortError:
        raise
    except Exception as e:
        # UsageError: the handler called abort() itself and the context's interrupt
        # landed while it was sending that status (grpcio: "Abort already called!"). The
        # handler's status stands. ExecuteBatchError: the RPC already ended in grpc core
        # (its own deadline passed at the same moment as the context's, or the client
        # left) and no status can be sent on it; grpcio would log that as an error with
        # a traceback unless it has seen the close first. Either way grpcio accepts only
        # its own AbortError instance ("Abort error has been replaced!" otherwise), so
        # end the call as an interrupted one, which it logs at debug level.
        if type(e).__name__ not in ("UsageError", "ExecuteBatchError"):
            raise
        raise asyncio.CancelledError() from err


def _rpc_cancelled(scope: Scope, sctx: Any) -> None:
    """grpc.aio cancels the handler's task when the RPC ends early (client cancel, lost
    connection, deadline, server stop), before it runs the RPC's done callbacks and
    while ``sctx.cancelled()`` is still false: record why on the context before the
    scope's exit ends it. (An interrupt by the context itself has already ended it.)"""
    ctx, cancel = scope
    if ctx.err() is None:
        tr = sctx.time_remaining()
        cancel(DeadlineExceeded() if tr is not None and tr <= 0 else ClientCancelled())


def _unary(behavior: Any, policy: _Policy) -> Any:
    if not inspect.iscoroutinefunction(behavior):
        return behavior

    async def handle(request: Any, sctx: Any) -> Any:
        scope = _begin(sctx, policy)
        try:
            async with scope:
                try:
                    return await behavior(request, sctx)
                except asyncio.CancelledError:
                    _rpc_cancelled(scope, sctx)
                    raise
        except ContextError as e:
            await _abort(sctx, e)

    return handle


def _streaming(behavior: Any, policy: _Policy) -> Any:
    if inspect.isasyncgenfunction(behavior):
        # Written out with context.write so that one `async with` spans the handler and
        # the sending of each message: an interrupt lands wherever the task awaits.
        async def handle(request: Any, sctx: Any) -> None:
            scope = _begin(sctx, policy)
            try:
                async with scope, contextlib.aclosing(behavior(request, sctx)) as responses:
                    try:
                        async for response in responses:
                            await sctx.write(response)
                    except asyncio.CancelledError:
                        _rpc_cancelled(scope, sctx)
                        raise
            except ContextError as e:
                await _abort(sctx, e)

        return handle
    return _unary(behavior, policy)  # a coroutine that writes, or a plain function


def _wrap(handler: Any, policy: _Policy) -> Any:
    kw = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming:
        if handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(
                _streaming(handler.stream_stream, policy), **kw
            )
        return grpc.stream_unary_rpc_method_handler(_unary(handler.stream_unary, policy), **kw)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(_streaming(handler.unary_stream, policy), **kw)
    return grpc.unary_unary_rpc_method_handler(_unary(handler.unary_unary, policy), **kw)


class ServerInterceptor(grpc.aio.ServerInterceptor):
    """A ``grpc.aio.server`` interceptor giving every ``async def`` handler its context.

    ``policy`` is a ``propagation.Policy``, a ``PolicyHolder`` (read once per call) or
    ``None``. The handler runs inside ``async with`` the call's context (so it is
    ``tether.current()`` and the handler is interrupted at its next ``await`` when the
    context ends); the context ends at the call's (policy-clamped) deadline, when the
    client cancels (cause ``ClientCancelled``) and when the handler returns. A
    ``tether.ContextError`` escaping the handler is answered ``DEADLINE_EXCEEDED`` or
    ``CANCELLED``; other exceptions pass through to grpcio untouched.

    Construction is non-blocking and raises ``TypeError`` for a bad ``policy``. One
    instance may serve several servers and event loops (thread-safe; a small cache of
    wrapped handlers). A call whose deadline already passed runs with a context that
    has already ended, so the handler is interrupted at its first ``await``.

    Added in 0.1.
    """

    def __init__(self, policy: _Policy = None) -> None:
        """Non-blocking; thread-safe; raises ``TypeError`` for a bad ``policy``.

        Each call makes a new interceptor; no context is involved yet, so none can
        have already ended.
        """
        check_policy(policy)
        self._policy = policy
        self._cache: dict[int, tuple[Any, Any]] = {}

    async def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        """grpcio's hook: the method handler, wrapped (``None`` passes through).

        Awaited by grpcio once per call; does not block the loop; thread-safe;
        idempotent (the same wrapper for the same handler). Raises what
        ``continuation`` raises. Whether the call's context already ended is decided
        when the handler runs.
        """
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        hit = self._cache.get(id(handler))
        if hit is not None and hit[0] is handler:
            return hit[1]
        wrapped = _wrap(handler, self._policy)
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[id(handler)] = (handler, wrapped)
        return wrapped


# --------------------------------------------------------------------------------------
# Client


class _Watch:
    """Cancels one call when its context ends; translates how the call failed."""

    __slots__ = ("by_ctx", "call", "ctx", "gap", "loop", "stop")

    def __init__(self, call: Any, ctx: Context, gap: float | None) -> None:
        self.call = call
        self.ctx = ctx
        self.gap = gap
        self.by_ctx = False
        self.loop = asyncio.get_running_loop()
        self.stop = after_func(ctx, self._from_thread)
        call.add_done_callback(self._done)

    def _done(self, _call: Any) -> None:
        self.stop()
        # An after_func worker may hold its last callback (this watch) for a while:
        # do not let it keep the call, and through it the channel, alive.
        self.call = None

    def _from_thread(self) -> None:  # an after_func worker: hop onto the call's loop
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to cancel
            self.loop.call_soon_threadsafe(self._cancel)

    def _cancel(self) -> None:
        call = self.call
        if call is not None and not call.done():
            self.by_ctx = True
            call.cancel()

    def classify(self, e: BaseException) -> str | None:
        """``"ended"``/``"ending"`` if the context ended ``e``'s call (see ``classify``
        in ``_common``), ``None`` to re-raise ``e``."""
        if isinstance(e, asyncio.CancelledError):
            task = asyncio.current_task()
            if not self.by_ctx or (task is not None and task.cancelling()):
                return None  # the awaiting task itself is being cancelled
            return classify(self.ctx, "CANCELLED", self.gap)
        if isinstance(e, grpc.aio.AioRpcError):
            return classify(self.ctx, getattr(e.code(), "name", None), self.gap)
        return None

    async def error(self, e: BaseException) -> BaseException | None:
        """The context's error to raise instead of ``e``, or ``None`` to re-raise ``e``.

        When grpcio's deadline fired first (``"ending"``), waits the few milliseconds
        until the context's own deadline so that the error raised is the context's.
        """
        kind = self.classify(e)
        if kind is None:
            return None
        if kind == "ending":
            left = self.ctx.remaining() or 0.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ctx.done(), max(left, 0.0) + LATE)
        err = ctx_error(self.ctx)
        err.__cause__ = e
        return err


def _details(d: Any, policy: _Policy) -> tuple[grpc.aio.ClientCallDetails, Context, float | None]:
    ctx = current()
    timeout, md, gap = outbound(ctx, d.timeout, d.metadata, resolve(policy))
    metadata = grpc.aio.Metadata(*md) if md is not None else None
    return (
        grpc.aio.ClientCallDetails(d.method, timeout, metadata, d.credentials, d.wait_for_ready),
        ctx,
        gap,
    )


class _UnaryResponse(grpc.aio.UnaryUnaryCall[Any, Any], grpc.aio.StreamUnaryCall[Any, Any]):
    """A unary-response call whose ``await`` raises the context's error."""

    __slots__ = ("_call", "_watch")

    def __init__(self, call: Any, watch: _Watch) -> None:
        self._call = call
        self._watch = watch

    def __await__(self) -> Generator[Any, None, Any]:
        try:
            return (yield from self._call.__await__())
        except (asyncio.CancelledError, grpc.aio.AioRpcError) as e:
            err = yield from self._watch.error(e).__await__()
            if err is None:
                raise
            raise err from e

    def cancelled(self) -> bool:
        return bool(self._call.cancelled())

    def done(self) -> bool:
        return bool(self._call.done())

    def time_remaining(self) -> float | None:
        r: float | None = self._call.time_remaining()
        return r

    def cancel(self) -> bool:
        return bool(self._call.cancel())

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        self._call.add_done_callback(lambda _c: callback(self))

    async def initial_metadata(self) -> Any:
        return await self._call.initial_metadata()

    async def trailing_metadata(self) -> Any:
        return await self._call.trailing_metadata()

    async def code(self) -> Any:
        return await self._call.code()

    async def details(self) -> Any:
        return await self._call.details()

    async def wait_for_connection(self) -> None:
        await self._call.wait_for_connection()

    async def write(self, request: Any) -> None:
        await self._call.write(request)

    async def done_writing(self) -> None:
        await self._call.done_writing()


async def _responses(call: Any, watch: _Watch) -> AsyncIterator[Any]:
    """A response stream whose iteration raises the context's error."""
    try:
        async for response in call:
            yield response
    except (asyncio.CancelledError, grpc.aio.AioRpcError) as e:
        err = await watch.error(e)
        if err is None:
            raise
        raise err from e


class _Base:
    __slots__ = ("_policy",)

    def __init__(self, policy: _Policy) -> None:
        self._policy = policy


class _UnaryUnary(_Base, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        d, ctx, gap = _details(client_call_details, self._policy)
        call = await continuation(d, request)
        return _UnaryResponse(call, _Watch(call, ctx, gap))


class _UnaryStream(_Base, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        d, ctx, gap = _details(client_call_details, self._policy)
        call = await continuation(d, request)
        return _responses(call, _Watch(call, ctx, gap))


class _StreamUnary(_Base, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        d, ctx, gap = _details(client_call_details, self._policy)
        call = await continuation(d, request_iterator)
        return _UnaryResponse(call, _Watch(call, ctx, gap))


class _StreamStream(_Base, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        d, ctx, gap = _details(client_call_details, self._policy)
        call = await continuation(d, request_iterator)
        return _responses(call, _Watch(call, ctx, gap))


def client_interceptors(*, policy: _Policy = None) -> list[grpc.aio.ClientInterceptor]:
    """Four ``grpc.aio`` client interceptors, one per arity, to pass together.

    ``grpc.aio.insecure_channel(addr, interceptors=client_interceptors())``. Each call is
    made under ``tether.current()``: timeout clamped to the remaining budget minus
    ``policy.margin`` (and compensated for grpc-core's rounding up), ``x-request-id``
    metadata, the call cancelled the moment the context ends, and the context's error
    raised from ``await``/iteration when the context or its budget ended the call. A
    context that already ended raises its error when the call is awaited, and a budget
    below ``policy.floor`` raises ``tether.DeadlineExceeded``: nothing is sent.

    Non-blocking; each call returns four new interceptors (they hold no per-call state
    and may be shared by channels and loops: thread-safe). Raises ``TypeError`` for a
    bad ``policy``.

    Added in 0.1.
    """
    check_policy(policy)
    return [_UnaryUnary(policy), _UnaryStream(policy), _StreamUnary(policy), _StreamStream(policy)]
