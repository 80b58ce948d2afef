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

The middleware runs on asyncio (uvicorn; hypercorn's asyncio and uvloop workers), not
on Trio. The ``asgi`` extra installs nothing: it needs only the standard library.

Added in 0.1.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from asyncio import current_task as _current_task
from asyncio import get_running_loop as _get_running_loop
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .. import propagation
from .._context import _BACKGROUND, Context, _current, current
from .._errors import Canceled, ContextError, DeadlineExceeded
from .._keys import REQUEST_ID
from ..propagation import Policy, PolicyHolder
from . import _events

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
_WATCH_AFTER = 0.01  # seconds into a request before listening for a disconnect


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


class _Watch:
    """One event loop's requests waiting to start reading: one timer for all of them.

    A request's reader starts ``_WATCH_AFTER`` seconds after it was registered (a
    per-request ``call_later``, let alone a task, cost more than the rest of the
    middleware's bookkeeping). Requests are kept in registration order, so the oldest is
    first; the timer is armed for the oldest only, and only while there is one.
    """

    __slots__ = ("handle", "loop", "waiting")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.waiting: dict[_Exchange, float] = {}  # request -> when registered (loop time)
        self.handle: asyncio.TimerHandle | None = None

    def tick(self) -> None:
        self.handle = None
        due = self.loop.time() - _WATCH_AFTER
        waiting = self.waiting
        while waiting:
            r = next(iter(waiting))
            since = waiting[r]
            if since > due:
                self.handle = self.loop.call_at(since + _WATCH_AFTER, self.tick)
                return
            del waiting[r]
            r.start()


_watches: dict[asyncio.AbstractEventLoop, _Watch] = {}
_watches_lock = threading.Lock()  # protects _watches (several servers, several threads)


def _new_watch(loop: asyncio.AbstractEventLoop) -> _Watch:
    with _watches_lock:
        for old in [lp for lp in _watches if lp.is_closed()]:
            del _watches[old]
        w = _watches[loop] = _Watch(loop)
    return w


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


class _Exchange:
    """One HTTP request: the ``send`` and ``receive`` the app sees, and the disconnect watch.

    ``receive`` reads the request ahead of the app, to hear a disconnect while the app
    works. Reading starts ``_WATCH_AFTER`` seconds into the request (see ``_Watch``), or
    when the app first calls ``receive``, whichever is first: most requests are over
    before that and never pay for a task.
    """

    __slots__ = ("__weakref__", "_buf", "_buffered", "_more", "_receive", "_room", "_send",
                 "cancel", "cancelling", "ctx", "disconnected", "finished", "interrupted",
                 "parent", "pump", "rid", "started", "status", "t0", "task", "watch")  # fmt: skip

    def __init__(  # noqa: PLR0917 - one call site, in the hot path
        self,
        ctx: Context,
        cancel: Callable[..., None],
        receive: Receive,
        send: Send,
        parent: Context,
        watch: _Watch,
        t0: float,
    ) -> None:
        self.ctx = ctx
        self.cancel = cancel
        self._receive = receive
        self._send = send
        self.parent = parent
        self.watch = watch
        self.t0 = t0  # loop time
        self.rid: str = ctx._values[REQUEST_ID]
        self.started = self.finished = self.disconnected = self.interrupted = False
        self.status = self.cancelling = 0
        self.task: asyncio.Task[Any] | None = None  # set when gone() must interrupt it
        self.pump: asyncio.Task[None] | None = None  # reading ahead of the app

    # -- the disconnect watch -----------------------------------------------------------

    def gone(self) -> None:
        if self.finished:
            return
        self.cancel(ClientDisconnected("the client disconnected"))
        task = self.task
        if task is not None and not self.interrupted:
            self.interrupted = True
            task.cancel()

    def start(self) -> None:
        if self.pump is None:
            self.watch.waiting.pop(self, None)
            self._buf: deque[Message] = deque()
            self._buffered = 0
            self._more = asyncio.Event()  # set when _buf has a message or the client left
            self._room = asyncio.Event()  # set while fewer than _READ_AHEAD bytes wait
            self._room.set()
            # The task calls the server's receive, which may register event-loop
            # callbacks (resume_reading -> add_reader) that copy the current context:
            # start it under the server's context, not the request's (see send).
            prev = _current.get(_BACKGROUND)
            _current.set(self.parent)
            try:
                self.pump = self.watch.loop.create_task(self._read_ahead())
            finally:
                _current.set(prev)

    async def stop(self) -> None:
        """Stop reading (the response is over); wait until the task has finished."""
        task = self.pump
        assert task is not None
        task.cancel()
        await asyncio.wait((task,))
        if not task.cancelled() and task.exception() is not None:
            # the server's receive failed: not the app's business, nor ours
            log.debug("receive failed", exc_info=task.exception())

    async def _read_ahead(self) -> None:
        more, room = self._more, self._room
        while True:
            await room.wait()
            msg = await self._receive()
            if msg.get("type") == "http.disconnect":
                self.disconnected = True
                more.set()
                self.gone()
                return
            self._buf.append(msg)
            self._buffered += len(msg.get("body", b""))
            if self._buffered >= _READ_AHEAD:
                room.clear()
            more.set()

    # -- what the app calls -------------------------------------------------------------

    async def receive(self) -> Message:
        if self.pump is None:
            self.start()
        more, room = self._more, self._room
        while not self._buf:
            if self.disconnected:
                return {"type": "http.disconnect"}
            more.clear()
            await more.wait()
        msg = self._buf.popleft()
        self._buffered -= len(msg.get("body", b""))
        if self._buffered < _READ_AHEAD:
            room.set()
        return msg

    async def send(self, message: Message) -> None:
        t = message["type"]
        if t == "http.response.start":
            self.started = True
            self.status = message.get("status", 0)
            headers = list(message.get("headers") or ())
            for k, _ in headers:
                if k.lower() == b"x-request-id":
                    break
            else:
                headers.append((b"x-request-id", self.rid.encode()))
            # For the response start the servers only write or buffer (uvicorn also logs its
            # access line, which then sees the request's context): no switch needed below.
            await self._send({**message, "headers": headers})
            return
        if t == "http.response.body" and not message.get("more_body", False):
            self.finished = True
        # The server's send may start the next request of the connection (or register
        # callbacks that will): it must not run with this request as current().
        prev = _current.get(_BACKGROUND)
        _current.set(self.parent)
        try:
            await self._send(message)
        finally:
            _current.set(prev)

    def log_499(self, scope: Scope) -> None:
        _events.client_disconnected("asgi")
        ms = (self.watch.loop.time() - self.t0) * 1e3
        log.info('%s %s 499 client disconnected after %.1f ms (request id %s)',
                 scope.get("method", ""), scope.get("path", ""), ms, self.rid)  # fmt: skip


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
        policy = self._policy
        pol = policy if type(policy) is Policy else propagation._resolve(policy)
        client = scope.get("client")
        parent = _current.get(_BACKGROUND)
        req = propagation.extract(
            parent, scope.get("headers") or (), peer=client[0] if client else None, policy=pol
        )
        ctx, cancel = req
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        state[STATE_KEY] = ctx
        loop = _get_running_loop()
        w = _watches.get(loop) or _new_watch(loop)
        t0 = loop.time()
        r = _Exchange(ctx, cancel, receive, send, parent, w, t0)
        err = ctx._err
        if err is not None:  # born ended (a "0n" budget, or the server stopping)
            cancel()
            await self._refuse(scope, send, err, r)
            return
        # listen for a disconnect from _WATCH_AFTER on (_Watch.tick), unless over by then
        w.waiting[r] = t0
        if w.handle is None:
            w.handle = loop.call_at(t0 + _WATCH_AFTER, w.tick)
        try:
            if parent is _BACKGROUND and ctx._deadline is None:
                # Nothing but a disconnect can end this context while the app runs (no
                # deadline, nobody else holds its cancel): making it current is enough,
                # and r.gone() interrupts the task itself. That saves the core's
                # interrupter registration (`async with`) on the commonest request.
                task = r.task = _current_task(loop)
                assert task is not None
                r.cancelling = task.cancelling()
                _current.set(ctx)
                try:
                    await self.app(scope, r.receive, r.send)
                except asyncio.CancelledError:
                    if not r.interrupted or task.uncancel() > r.cancelling:
                        raise
                    r.interrupted = False
                    r.log_499(scope)
                finally:
                    _current.set(parent)
                    cancel()
            else:
                async with req:
                    await self.app(scope, r.receive, r.send)
        except ContextError as e:
            err = ctx._err
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
                and not r.disconnected
            ):
                raise  # the handler's own deadline while the request was cancelled
            if r.disconnected and isinstance(err, Canceled):
                r.log_499(scope)
                return
            if r.started:
                if isinstance(err, DeadlineExceeded):
                    _events.budget_exhausted("asgi_response")
                ms = (loop.time() - t0) * 1e3
                log.warning('%s %s %d aborted after %.1f ms: %s (request id %s)',
                            scope.get("method", ""), scope.get("path", ""), r.status, ms, err,
                            r.rid)  # fmt: skip
                return
            await self._refuse(scope, send, err, r)
        finally:
            if r.interrupted and r.task is not None:  # the app swallowed our interruption
                r.task.uncancel()
            if r.pump is None:
                w.waiting.pop(r, None)
            else:
                await r.stop()

    @staticmethod
    async def _refuse(scope: Scope, send: Send, err: ContextError, r: _Exchange) -> None:
        if isinstance(err, DeadlineExceeded):
            _events.budget_exhausted("asgi")
            code, text = 504, "504 Gateway Timeout: the request's deadline passed\n"
        else:
            code, text = 503, "503 Service Unavailable: the request was cancelled\n"
        ms = (r.watch.loop.time() - r.t0) * 1e3
        log.info('%s %s %d after %.1f ms: %s (request id %s)', scope.get("method", ""),
                 scope.get("path", ""), code, ms, err, r.rid)  # fmt: skip
        start, body = _plain(code, r.rid, text)
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
        parent = current()
        req = propagation.extract(parent, scope.get("headers") or (), peer=peer, policy=pol)
        ctx, cancel = req
        rid: str = ctx.value(REQUEST_ID)  # type: ignore[assignment]
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        state[STATE_KEY] = ctx

        async def receive_() -> Message:
            prev = _current.get(_BACKGROUND)
            _current.set(parent)  # see _Exchange.send
            try:
                message = await receive()
            finally:
                _current.set(prev)
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
                prev = _current.get(_BACKGROUND)
                _current.set(parent)  # see _Exchange.send
                try:
                    await send(message)
                finally:
                    _current.set(prev)
            finally:
                if t == "websocket.close":
                    cancel()

        with req:
            await self.app(scope, receive_, send_)
