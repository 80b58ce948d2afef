"""gRPC (grpcio) interceptors that carry deadlines, cancellation and request ids.

Server side, ``ServerInterceptor(policy=None)`` gives every handler (all four arities)
a context: its deadline is the call's (``time_remaining()``, clamped by the policy like
an HTTP budget), its ``tether.REQUEST_ID`` the caller's ``x-request-id`` metadata (a
fresh one when absent or invalid), it is ``tether.current()`` inside the handler, and it
ends when the RPC ends — at the deadline, when the client cancels (cause
``ClientCancelled``) or when the handler finishes — so a sync handler blocked on
``ctx.done().wait()`` wakes. A ``tether.DeadlineExceeded``/``Canceled`` that escapes a
handler is answered ``DEADLINE_EXCEEDED``/``CANCELLED``, never ``UNKNOWN``::

    server = grpc.server(pool, interceptors=[tether.integrations.grpc.ServerInterceptor()])

    def handler(request, context):
        ctx = tether.current()          # the call's context
        ...

Client side, ``ClientInterceptor()`` (one object, all four arities) makes every call
under ``tether.current()``: ``timeout = min(explicit, remaining - policy.margin)``
(compensated for grpc-core rounding ``grpc-timeout`` up, so the server never sees more
than the caller had left), the request id in the metadata, a call whose budget is below
``policy.floor`` refused locally with ``DeadlineExceeded``, futures and streams
cancelled the moment the context ends, and the context's error raised instead of
grpc's ``RpcError`` when the budget or the context ended the call::

    channel = grpc.intercept_channel(grpc.insecure_channel(addr),
                                     tether.integrations.grpc.ClientInterceptor())

A blocking unary call (``stub.Method(req)``, ``with_call``) cannot be cancelled by
grpcio before it returns: it ends at the context's deadline, not at an earlier
``cancel()``. Use ``stub.Method.future(req).result()`` where a cancel must stop it.

The asyncio versions are in ``tether.integrations.grpc.aio``. grpcio is imported with
this module; without it, ``ImportError`` names the extra: ``pip install 'tether[grpc]'``.

Added in 0.1.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from typing import Any, Final

try:
    import grpc
except ImportError as _e:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "tether: tether.integrations.grpc needs the 'grpc' extra: pip install 'tether[grpc]'"
    ) from _e

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
    wire_timeout,
)

__all__ = ["ClientCancelled", "ClientInterceptor", "ServerInterceptor", "wire_timeout"]

_Policy = propagation.Policy | propagation.PolicyHolder | None
_CACHE_MAX: Final = 1024
_TIMER_SLACK: Final = 0.005


# --------------------------------------------------------------------------------------
# Server


def _begin(sctx: Any, policy: _Policy) -> Scope:
    """The call's context, tied to the RPC's end by a grpcio termination callback."""
    scope = server_scope(
        sctx.time_remaining(), sctx.invocation_metadata(), sctx.peer(), resolve(policy)
    )
    ctx, cancel = scope

    def rpc_ended() -> None:  # on a grpcio thread, when the RPC terminates
        if ctx.err() is not None:  # the handler finished first: the usual case
            return
        if sctx.time_remaining() <= 0:
            # The gRPC deadline: ctx's own deadline is the same instant (its timer ends
            # it as DeadlineExceeded); only if the policy raised it (min_timeout) or it
            # is far off does the RPC's end cancel it now.
            r = ctx.remaining()
            if r is not None and r <= _TIMER_SLACK:
                return
            cancel(DeadlineExceeded())
        else:
            _events.client_disconnected("grpc")
            cancel(ClientCancelled())

    if not sctx.add_callback(rpc_ended):
        cancel(ClientCancelled())
    return scope


def _abort(sctx: Any, err: ContextError) -> None:
    """Answer the call with the status for ``err`` (raises, as grpcio's abort does)."""
    sctx.abort(grpc.StatusCode[status_name(err)], str(err))


def _unary_response(behavior: Callable[[Any, Any], Any], policy: _Policy) -> Any:
    def handle(request: Any, sctx: Any) -> Any:
        scope = _begin(sctx, policy)
        try:
            with scope:
                return behavior(request, sctx)
        except ContextError as e:
            _abort(sctx, e)
            raise  # pragma: no cover - abort raised

    return handle


class _Responses:
    """A response stream run with the call's context current, ending it when done.

    Each ``next()`` runs in one ``contextvars`` copy in which the scope was entered,
    so ``tether.current()`` is the call's context inside the handler's generator and
    nothing leaks into the serving thread.
    """

    __slots__ = ("_cv", "_it", "_scope", "_sctx")

    def __init__(self, scope: Scope, sctx: Any, start: Callable[[], Any]) -> None:
        self._scope = scope
        self._sctx = sctx
        self._cv = contextvars.copy_context()
        self._it: Iterator[Any] | None = None
        try:
            self._it = self._cv.run(self._start, start)
        except ContextError as e:
            self._close()
            _abort(sctx, e)
        except BaseException:
            self._close()
            raise

    def _start(self, start: Callable[[], Any]) -> Iterator[Any]:
        self._scope.__enter__()
        return iter(start())

    def _close(self) -> None:
        self._cv.run(self._scope.__exit__, None, None, None)

    def __iter__(self) -> _Responses:
        return self

    def __next__(self) -> Any:
        it = self._it
        if it is None:
            raise StopIteration
        try:
            return self._cv.run(next, it)
        except StopIteration:
            self._it = None
            self._close()
            raise
        except ContextError as e:
            self._it = None
            self._close()
            _abort(self._sctx, e)
            raise  # pragma: no cover - abort raised
        except BaseException:
            self._it = None
            self._close()
            raise


def _stream_response(behavior: Callable[[Any, Any], Any], policy: _Policy) -> Any:
    def handle(request: Any, sctx: Any) -> Any:
        return _Responses(_begin(sctx, policy), sctx, lambda: behavior(request, sctx))

    return handle


def _wrap(handler: Any, policy: _Policy) -> Any:
    kw = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming:
        if handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(
                _stream_response(handler.stream_stream, policy), **kw
            )
        return grpc.stream_unary_rpc_method_handler(
            _unary_response(handler.stream_unary, policy), **kw
        )
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(
            _stream_response(handler.unary_stream, policy), **kw
        )
    return grpc.unary_unary_rpc_method_handler(_unary_response(handler.unary_unary, policy), **kw)


class ServerInterceptor(grpc.ServerInterceptor):
    """A ``grpc.server`` interceptor giving every handler its call's context.

    ``policy`` (a ``propagation.Policy``, a ``PolicyHolder`` read once per call, or
    ``None`` for the defaults) clamps the call's deadline as ``propagation.extract``
    does for HTTP. In the handler, ``tether.current()`` is the call's context; it ends
    when the call ends (deadline, client cancel with cause ``ClientCancelled``, or the
    handler's return / the end of its response stream). A ``tether.ContextError``
    escaping the handler becomes ``DEADLINE_EXCEEDED`` (for ``DeadlineExceeded``) or
    ``CANCELLED``, with the error's text as details; other exceptions pass through to
    grpcio untouched.

    Construction is non-blocking and raises ``TypeError`` for a bad ``policy``. One
    instance serves any number of servers and threads (thread-safe; it keeps a small
    cache of wrapped handlers). A call that arrives with its deadline already passed,
    or whose client already left, runs with a context that has already ended.

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

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        """grpcio's hook: the method handler, wrapped (``None`` passes through).

        Called by grpcio once per call; non-blocking; thread-safe; idempotent (the
        same wrapper for the same handler). Raises what ``continuation`` raises.
        Whether the call's context already ended is decided when the handler runs.
        """
        handler = continuation(handler_call_details)
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


class _Details(grpc.ClientCallDetails):
    __slots__ = ("compression", "credentials", "metadata", "method", "timeout", "wait_for_ready")

    def __init__(self, d: Any, timeout: float | None, metadata: Any) -> None:
        self.method = d.method
        self.timeout = timeout
        self.metadata = metadata
        self.credentials = d.credentials
        self.wait_for_ready = getattr(d, "wait_for_ready", None)
        self.compression = getattr(d, "compression", None)


def _code_name(e: BaseException) -> str | None:
    code = getattr(e, "code", None)
    if not callable(code):
        return None
    try:
        c = code()
    except Exception:  # pragma: no cover - a broken RpcError
        return None
    return getattr(c, "name", None)


class _Call(grpc.Call, grpc.Future):  # type: ignore[type-arg]
    """A call watched by its context: cancelled when it ends, its errors translated.

    Delegates everything to grpcio's call; ``result``, ``exception`` and iteration
    raise the context's error instead of grpcio's when the context or its budget ended
    the call.
    """

    __slots__ = ("_call", "_ctx", "_gap", "_stop")

    def __init__(self, call: Any, ctx: Context, gap: float | None) -> None:
        self._call = call
        self._ctx = ctx
        self._gap = gap
        self._stop: Callable[[], bool] | None = None
        if not call.done():
            # An after_func worker may hold its last callback for a while: give it a
            # box that is emptied when the call ends, not the call (and its channel).
            box = [call]

            def cancel_call() -> None:
                if box:
                    box[0].cancel()

            stop = after_func(ctx, cancel_call)
            self._stop = stop

            def ended(_f: Any) -> None:
                stop()
                box.clear()

            call.add_done_callback(ended)

    def _translated(self, e: BaseException) -> BaseException:
        kind = classify(self._ctx, _code_name(e), self._gap)
        if kind is None:
            return e
        if kind == "ending":  # grpcio's deadline fired first; the context's is next
            left = self._ctx.remaining() or 0.0
            self._ctx.done().wait(max(left, 0.0) + LATE)
        err = ctx_error(self._ctx)
        err.__cause__ = e
        return err

    def _cancelled_by_ctx(self, e: BaseException) -> BaseException:
        # grpcio raises FutureCancelledError, not an RpcError, for a cancelled future
        if self._ctx.err() is None:
            return e
        try:
            self._ctx.check()
        except ContextError as err:
            err.__cause__ = e
            return err
        return e  # pragma: no cover - check() raised

    def result(self, timeout: float | None = None) -> Any:
        try:
            return self._call.result(timeout)
        except grpc.RpcError as e:
            err = self._translated(e)
            if err is e:
                raise
            raise err from e
        except grpc.FutureCancelledError as e:
            err = self._cancelled_by_ctx(e)
            if err is e:
                raise
            raise err from e

    def exception(self, timeout: float | None = None) -> Any:
        try:
            e = self._call.exception(timeout)
        except grpc.FutureCancelledError as c:
            err = self._cancelled_by_ctx(c)
            if err is c:
                raise
            return err
        return None if e is None else self._translated(e)

    def traceback(self, timeout: float | None = None) -> Any:
        return self._call.traceback(timeout)

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        self._call.add_done_callback(lambda _f: fn(self))

    def cancel(self) -> bool:
        return bool(self._call.cancel())

    def cancelled(self) -> bool:
        return bool(self._call.cancelled())

    def running(self) -> bool:
        return bool(self._call.running())

    def done(self) -> bool:
        return bool(self._call.done())

    # RpcContext / Call
    def is_active(self) -> bool:
        return bool(self._call.is_active())

    def time_remaining(self) -> Any:
        return self._call.time_remaining()

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return bool(self._call.add_callback(callback))

    def initial_metadata(self) -> Any:
        return self._call.initial_metadata()

    def trailing_metadata(self) -> Any:
        return self._call.trailing_metadata()

    def code(self) -> Any:
        return self._call.code()

    def details(self) -> Any:
        return self._call.details()

    # response streams
    def __iter__(self) -> _Call:
        return self

    def __next__(self) -> Any:
        try:
            return next(self._call)
        except grpc.RpcError as e:
            err = self._translated(e)
            if err is e:
                raise
            raise err from e

    def next(self) -> Any:
        return self.__next__()


class ClientInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """One ``grpc.intercept_channel`` interceptor for all four arities.

    Every call is made under ``tether.current()``: its timeout becomes
    ``min(explicit, remaining - policy.margin)``, rounded down so that grpc-core's
    rounding up of ``grpc-timeout`` never gives the server more than the caller had
    left (``wire_timeout``); ``x-request-id`` metadata carries ``tether.REQUEST_ID``
    unless the caller set one. If the context already ended, its error is raised and
    nothing is sent; if its budget after the margin is below ``policy.floor``,
    ``tether.DeadlineExceeded`` is raised and nothing is sent. Futures and streaming
    calls are cancelled the moment the context ends. When the context (or its budget)
    ended the call, ``result()``, iteration and the blocking call raise the context's
    error (``Canceled``/``DeadlineExceeded``, chained to grpcio's ``RpcError``); other
    failures raise grpcio's ``RpcError`` untouched.

    ``policy``: a ``propagation.Policy``, a ``PolicyHolder`` (read once per call) or
    ``None`` (defaults: 5 ms margin, 1 ms floor). Construction is non-blocking and
    raises ``TypeError`` for a bad ``policy``; the object is thread-safe and holds no
    per-call state. A blocking unary call is not cancelled by ``cancel()`` before its
    deadline (grpcio exposes no handle to it): use ``.future()`` for that.

    Added in 0.1.
    """

    def __init__(self, *, policy: _Policy = None) -> None:
        """Non-blocking; thread-safe; raises ``TypeError`` for a bad ``policy``.

        Each call makes a new interceptor; no context is read until a call is made, so
        none can have already ended here.
        """
        check_policy(policy)
        self._policy = policy

    def _details(self, d: Any) -> tuple[_Details, Context, float | None]:
        ctx = current()
        timeout, md, gap = outbound(ctx, d.timeout, d.metadata, resolve(self._policy))
        return _Details(d, timeout, md), ctx, gap

    def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        """grpcio's hook for unary-unary calls: see the class.

        Blocks as long as a blocking call does; thread-safe; each call is intercepted
        once. Raises the context's error (ended, or below ``policy.floor``) before
        sending.
        """
        d, ctx, gap = self._details(client_call_details)
        return _Call(continuation(d, request), ctx, gap)

    def intercept_unary_stream(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        """grpcio's hook for unary-stream calls: see the class.

        Non-blocking; thread-safe; each call is intercepted once. Raises the context's
        error (ended, or below ``policy.floor``) before sending.
        """
        d, ctx, gap = self._details(client_call_details)
        return _Call(continuation(d, request), ctx, gap)

    def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        """grpcio's hook for stream-unary calls: see the class.

        Blocks as long as a blocking call does; thread-safe; each call is intercepted
        once. Raises the context's error (ended, or below ``policy.floor``) before
        sending.
        """
        d, ctx, gap = self._details(client_call_details)
        return _Call(continuation(d, request_iterator), ctx, gap)

    def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        """grpcio's hook for stream-stream calls: see the class.

        Non-blocking; thread-safe; each call is intercepted once. Raises the context's
        error (ended, or below ``policy.floor``) before sending.
        """
        d, ctx, gap = self._details(client_call_details)
        return _Call(continuation(d, request_iterator), ctx, gap)
