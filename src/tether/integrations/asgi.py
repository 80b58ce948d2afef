"""Pure ASGI middleware: each request runs under a context that ends when it should.

::

    from tether.integrations.asgi import ContextMiddleware

    app.add_middleware(ContextMiddleware)            # Starlette / FastAPI
    app = ContextMiddleware(app, policy=holder)      # any other ASGI app

For every HTTP request the middleware derives the request's context from its headers
(``tether.propagation.extract``: budget, request id, identity from trusted peers), makes
it ``tether.current()`` for the handler, stores it at ``scope["state"]["tether.context"]``
(``request_context(scope)`` reads it back) and echoes ``x-request-id`` on the response.
The handler's task is interrupted when the context ends:

- the client disconnects: the context is cancelled with cause ``ClientDisconnected``,
  the handler is interrupted, and the request is logged as 499 on the ``tether.asgi``
  logger (nothing is sent: nobody is listening);
- the deadline passes before the response started: ``504 Gateway Timeout`` carrying
  ``x-request-id``; after it started, the response is aborted (the middleware returns
  without finishing it, so the server closes the connection and the client sees a
  truncated body rather than a complete-looking one);
- the handler lets the request context's own ``DeadlineExceeded`` escape: 504 as well;
- the parent context (``tether.current()`` where the server runs, e.g. a
  ``Supervisor``'s) is cancelled before the response started: ``503``.

Exceptions that are not the request context's own pass through untouched. ``lifespan``
is passed straight through. A websocket gets a context (request id, identity, and a
deadline only if the client sent one) that ends when the socket closes: when the app
receives ``websocket.disconnect``, sends ``websocket.close``, or returns.

Disconnects are noticed by reading the request ahead of the handler: the middleware
keeps up to 64 KiB of the body buffered for it, then waits for the handler to read on
(backpressure is kept). A handler that never reads a large body therefore learns of a
disconnect only when the server gives up; any request whose body fits (every ``GET``)
learns at once.

In Starlette and FastAPI add it with ``app.add_middleware(ContextMiddleware)``: user
middleware sits inside ``ServerErrorMiddleware``, so the context's ``DeadlineExceeded``
reaches this middleware (and becomes a 504) before Starlette's error handler could turn
it into a 500. Wrapping the whole Starlette app instead puts ``ServerErrorMiddleware``
inside, and such an escape would become a 500.

The ``asgi`` extra installs nothing: the middleware needs only the standard library.

Added in 0.1.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .. import propagation
from .._context import Context, current
from .._errors import Canceled, ContextError, DeadlineExceeded
from .._keys import REQUEST_ID
from ..propagation import Policy, PolicyHolder

__all__ = ["ClientDisconnected", "ContextMiddleware", "request_context"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

STATE_KEY = "tether.context"
"""Where the request's context is kept in ``scope["state"]``."""

log = logging.getLogger("tether.asgi")

_READ_AHEAD = 64 * 1024  # body bytes buffered ahead of the handler


class ClientDisconnected(ConnectionError):
    """The client went away before the response was complete.

    The cause of a request context cancelled by a disconnect:
    ``tether.cause(ctx)`` is an instance. The request is logged as 499.

    Added in 0.1.
    """


def request_context(scope: Scope | Any) -> Context:
    """The context ``ContextMiddleware`` made for this request or websocket.

    ``scope`` is the ASGI scope, or anything with a ``.scope`` (a Starlette ``Request``
    or ``WebSocket``).

    Non-blocking; returns the same context on every call for one request; thread-safe.
    Returns the context even if it already ended (check ``ctx.err()``). Raises
    ``LookupError`` when the middleware did not run for this scope.
    """
    s = getattr(scope, "scope", scope)
    try:
        ctx = s["state"][STATE_KEY]
    except (KeyError, TypeError):
        raise LookupError(
            "tether: no request context in this ASGI scope; add "
            "tether.integrations.asgi.ContextMiddleware to the app "
            "(app.add_middleware(ContextMiddleware) in Starlette/FastAPI)"
        ) from None
    if not isinstance(ctx, Context):
        raise LookupError(f"tether: scope['state'][{STATE_KEY!r}] is not a tether.Context")
    return ctx


class _Reader:
    """Reads the request ahead of the app, to hear a disconnect while the app works."""

    __slots__ = ("_buf", "_buffered", "_more", "_receive", "_room", "disconnected", "on_gone")

    def __init__(self, receive: Receive, on_gone: Callable[[], None]) -> None:
        self._receive = receive
        self.on_gone = on_gone
        self._buf: deque[Message] = deque()
        self._buffered = 0
        self._more = asyncio.Event()  # set when _buf has a message or the client left
        self._room = asyncio.Event()  # set while fewer than _READ_AHEAD bytes wait
        self._room.set()
        self.disconnected = False

    async def pump(self) -> None:
        while True:
            await self._room.wait()
            msg = await self._receive()
            if msg.get("type") == "http.disconnect":
                self.disconnected = True
                self._more.set()
                self.on_gone()
                return
            self._buf.append(msg)
            self._buffered += len(msg.get("body", b""))
            if self._buffered >= _READ_AHEAD:
                self._room.clear()
            self._more.set()

    async def __call__(self) -> Message:
        while not self._buf:
            if self.disconnected:
                return {"type": "http.disconnect"}
            self._more.clear()
            await self._more.wait()
        msg = self._buf.popleft()
        self._buffered -= len(msg.get("body", b""))
        if self._buffered < _READ_AHEAD:
            self._room.set()
        return msg


def _plain(status: int, rid: str, text: str) -> tuple[Message, Message]:
    body = text.encode()
    start = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", rid.encode()),
        ],
    }
    return start, {"type": "http.response.body", "body": body, "more_body": False}


class ContextMiddleware:
    """ASGI middleware giving every request a context (see the module docstring).

    ``policy`` is a ``propagation.Policy`` or a ``propagation.PolicyHolder`` (read once
    per request, so an update affects new requests only); default ``Policy()``.

    Added in 0.1.
    """

    __slots__ = ("_policy", "_ws_policy", "app")

    def __init__(self, app: ASGIApp, *, policy: Policy | PolicyHolder | None = None) -> None:
        """Wrap ``app``.

        Non-blocking; each call makes a new middleware; thread-safe. No context is
        involved yet, so none can have already ended. Raises ``TypeError`` for a
        ``policy`` that is neither a ``Policy``, a ``PolicyHolder`` nor ``None``.
        """
        propagation._resolve(policy)  # type check now, not on the first request
        self.app = app
        self._policy = policy
        self._ws_policy: tuple[Policy, Policy] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app for one connection.

        Blocks (awaits) until the app is done. Each call handles one new request; safe on
        any event loop and thread-safe (the middleware keeps no per-request state). If
        the parent context (``tether.current()``) already ended, the request's context
        is born ended and the client gets 503 (504 for a zero budget) without the app
        running. Raises what the app raises, except the request context's own errors
        (turned into 504/503 responses or, after a disconnect, swallowed).
        """
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        pol = propagation._resolve(self._policy)
        client = scope.get("client")
        peer = client[0] if client else None
        parent = current()
        req = propagation.extract(parent, scope.get("headers") or (), peer=peer, policy=pol)
        ctx, cancel = req
        rid: str = ctx.value(REQUEST_ID)  # type: ignore[assignment]
        rid_b = rid.encode()
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        state[STATE_KEY] = ctx

        started = False
        finished = False
        status = 0
        t0 = time.monotonic()

        def gone() -> None:
            if not finished:
                cancel(ClientDisconnected("the client disconnected"))

        reader = _Reader(receive, gone)

        async def send_(message: Message) -> None:
            nonlocal started, finished, status
            t = message["type"]
            if t == "http.response.start":
                started = True
                status = message.get("status", 0)
                headers = list(message.get("headers") or ())
                if not any(k.lower() == b"x-request-id" for k, _ in headers):
                    headers.append((b"x-request-id", rid_b))
                message = {**message, "headers": headers}
            elif t == "http.response.body" and not message.get("more_body", False):
                finished = True
            await send(message)

        if ctx.err() is not None:  # born ended (a "0n" budget, or the server stopping)
            cancel()
            await self._refuse(scope, send, ctx.err(), rid, t0)  # type: ignore[arg-type]
            return
        pump = asyncio.ensure_future(reader.pump())
        try:
            async with req:
                await self.app(scope, reader, send_)
        except ContextError as e:
            err = ctx.err()
            if err is None:
                # Not ended, but a call refused below policy.floor is the request's own
                # deadline arriving: its DeadlineExceeded is ours too.
                left = ctx.remaining()
                ours = (
                    isinstance(e, DeadlineExceeded)
                    and left is not None
                    and left <= pol.margin + pol.floor
                )
                if not ours:
                    raise
                err = DeadlineExceeded()
            elif (
                isinstance(e, DeadlineExceeded)
                and not isinstance(err, DeadlineExceeded)
                and not reader.disconnected
            ):
                raise  # the handler's own deadline while the request was cancelled
            ms = (time.monotonic() - t0) * 1e3
            method, path = scope.get("method", ""), scope.get("path", "")
            if reader.disconnected and isinstance(err, Canceled):
                log.info('%s %s 499 client disconnected after %.1f ms (request id %s)',
                         method, path, ms, rid)  # fmt: skip
                return
            if started:
                log.warning('%s %s %d aborted after %.1f ms: %s (request id %s)',
                            method, path, status, ms, err, rid)  # fmt: skip
                return
            await self._refuse(scope, send, err, rid, t0)
        finally:
            pump.cancel()
            await asyncio.wait((pump,))
            if not pump.cancelled() and pump.exception() is not None:
                # the server's receive failed: not the app's business, nor ours
                log.debug("receive failed", exc_info=pump.exception())

    @staticmethod
    async def _refuse(scope: Scope, send: Send, err: ContextError, rid: str, t0: float) -> None:
        if isinstance(err, DeadlineExceeded):
            code, text = 504, "504 Gateway Timeout: the request's deadline passed\n"
        else:
            code, text = 503, "503 Service Unavailable: the request was cancelled\n"
        ms = (time.monotonic() - t0) * 1e3
        log.info('%s %s %d after %.1f ms: %s (request id %s)', scope.get("method", ""),
                 scope.get("path", ""), code, ms, err, rid)  # fmt: skip
        start, body = _plain(code, rid, text)
        await send(start)
        await send(body)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        pol = propagation._resolve(self._policy)
        if pol.default_timeout is not None:
            # A websocket lives as long as its socket: only an explicit budget bounds it.
            cached = self._ws_policy
            if cached is None or cached[0] is not pol:
                cached = self._ws_policy = (pol, pol.replace(default_timeout=None))
            pol = cached[1]
        client = scope.get("client")
        peer = client[0] if client else None
        req = propagation.extract(current(), scope.get("headers") or (), peer=peer, policy=pol)
        ctx, cancel = req
        rid: str = ctx.value(REQUEST_ID)  # type: ignore[assignment]
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        state[STATE_KEY] = ctx

        async def receive_() -> Message:
            message = await receive()
            if message.get("type") == "websocket.disconnect":
                cancel(ClientDisconnected(f"websocket closed ({message.get('code', 1000)})"))
            return message

        async def send_(message: Message) -> None:
            t = message.get("type")
            if t == "websocket.accept":
                headers = list(message.get("headers") or ())
                if not any(k.lower() == b"x-request-id" for k, _ in headers):
                    headers.append((b"x-request-id", rid.encode()))
                message = {**message, "headers": headers}
            try:
                await send(message)
            finally:
                if t == "websocket.close":
                    cancel()

        with req:
            await self.app(scope, receive_, send_)
