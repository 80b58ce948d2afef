"""WSGI middleware (Flask, Django, any WSGI app): a context for every request.

::

    from tether.integrations.wsgi import ContextMiddleware, init_flask

    application = ContextMiddleware(application, policy=holder)   # any WSGI app
    init_flask(flask_app)                                         # Flask, with 504s

For each request the middleware derives the request's context from its headers
(``tether.propagation.extract``: budget, request id, identity from trusted peers; the
peer is ``REMOTE_ADDR``), stores it at ``environ["tether.context"]``, makes it
``tether.current()`` while the app runs (and while each chunk of its response is
produced), echoes ``X-Request-Id`` on the response, and cancels it when the response is
closed.

A WSGI handler runs in a thread, which nothing can interrupt: it watches the context
(``ctx.done().wait(t)`` wakes at the deadline, ``ctx.check()`` raises). When the
request context's own ``DeadlineExceeded`` escapes the app before the response started,
the client gets ``504`` (``503`` for a cancellation); after it started, the error is
re-raised so that the server aborts the response. Other exceptions pass through
untouched. Frameworks that turn every exception into a 500 page themselves (Flask does)
need their error handler told: ``init_flask(app)`` installs the middleware and the
handlers.

The ``wsgi`` extra installs nothing: the middleware needs only the standard library.

Added in 0.1.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any

from .. import propagation
from .._context import _BACKGROUND, CancelFunc, Context, _current, current
from .._errors import Canceled, ContextError, DeadlineExceeded
from .._keys import REQUEST_ID
from ..propagation import Policy, PolicyHolder
from . import _events

__all__ = ["ENVIRON_KEY", "ContextMiddleware", "init_flask", "request_context"]

ENVIRON_KEY = "tether.context"
"""Where the request's context is kept in the WSGI ``environ``."""

log = logging.getLogger("tether.wsgi")

_ExcInfo = tuple[type[BaseException], BaseException, TracebackType]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def request_context(environ: dict[str, Any] | Any) -> Context:
    """The context ``ContextMiddleware`` made for this request.

    ``environ`` is the WSGI environ, or anything with an ``.environ`` (a Flask or
    Werkzeug ``Request``).

    Non-blocking; the same context on every call for one request; thread-safe. Returns
    the context even if it already ended. Raises ``LookupError`` when the middleware did
    not run for this request.
    """
    env = getattr(environ, "environ", environ)
    try:
        ctx = env[ENVIRON_KEY]
    except (KeyError, TypeError):
        raise LookupError(
            "tether: no request context in this WSGI environ; wrap the app in "
            "tether.integrations.wsgi.ContextMiddleware (Flask: init_flask(app))"
        ) from None
    if not isinstance(ctx, Context):
        raise LookupError(f"tether: environ[{ENVIRON_KEY!r}] is not a tether.Context")
    return ctx


def _ours(err: BaseException, ctx: Context, pol: Policy) -> ContextError | None:
    """The request's own error that ``err`` stands for, or None if it is not ours."""
    if not isinstance(err, ContextError):
        return None
    ended = ctx.err()
    if ended is None:
        left = ctx.remaining()
        if (
            isinstance(err, DeadlineExceeded)
            and left is not None
            and left <= pol.margin + pol.floor
        ):
            return DeadlineExceeded()
        return None
    if isinstance(err, DeadlineExceeded) and not isinstance(ended, DeadlineExceeded):
        return None
    return ended


def _refusal(err: ContextError) -> tuple[str, bytes]:
    if isinstance(err, DeadlineExceeded):
        _events.budget_exhausted("wsgi")
        return "504 Gateway Timeout", b"504 Gateway Timeout: the request's deadline passed\n"
    return "503 Service Unavailable", b"503 Service Unavailable: the request was cancelled\n"


class _Response:
    """The app's response iterable, run with the context current, ending it on close."""

    def __init__(self, mw: _Request, result: Iterable[bytes]) -> None:
        self._mw = mw
        self._result = result

    def __iter__(self) -> Iterator[bytes]:
        mw = self._mw
        it = iter(self._result)
        while True:
            prev = _current.get(_BACKGROUND)
            _current.set(mw.ctx)
            try:
                chunk = next(it)
            except StopIteration:
                return
            except ContextError as e:
                err = _ours(e, mw.ctx, mw.pol)
                if err is None or mw.started:
                    if err is not None:
                        mw.log_end(err, aborted=True)
                    raise
                yield mw.refuse(err, sys.exc_info())  # type: ignore[arg-type]
                return
            finally:
                _current.set(prev)
            yield chunk

    def close(self) -> None:
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        finally:
            self._mw.cancel()


class _Request:
    __slots__ = ("cancel", "ctx", "method", "path", "pol", "rid", "start_response", "started",
                 "t0")  # fmt: skip

    def __init__(self, ctx: Context, cancel: CancelFunc, pol: Policy,
                 environ: dict[str, Any], start_response: StartResponse) -> None:  # fmt: skip
        self.ctx = ctx
        self.cancel = cancel
        self.pol = pol
        rid: str = ctx.value(REQUEST_ID)  # type: ignore[assignment]
        self.rid = rid
        self.start_response = start_response
        self.started = False
        self.t0 = time.monotonic()
        self.method = environ.get("REQUEST_METHOD", "")
        self.path = environ.get("PATH_INFO", "")

    def sr(
        self, status: str, headers: list[tuple[str, str]], exc_info: _ExcInfo | None = None
    ) -> Callable[[bytes], object]:
        self.started = True
        if not any(k.lower() == "x-request-id" for k, _ in headers):
            headers = [*headers, ("X-Request-Id", self.rid)]
        return self.start_response(status, headers, exc_info)

    def refuse(self, err: ContextError, exc_info: _ExcInfo | None) -> bytes:
        status, body = _refusal(err)
        self.log_end(err, aborted=False, status=status[:3])
        self.start_response(
            status,
            [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(body))),
                ("X-Request-Id", self.rid),
            ],
            exc_info,
        )
        return body

    def log_end(self, err: ContextError, *, aborted: bool, status: str = "") -> None:
        ms = (time.monotonic() - self.t0) * 1e3
        what = "aborted" if aborted else status
        log.info("%s %s %s after %.1f ms: %s (request id %s)", self.method, self.path, what,
                 ms, err, self.rid)  # fmt: skip


def _headers(environ: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (k[5:].replace("_", "-"), v)
        for k, v in environ.items()
        if k.startswith("HTTP_") and type(v) is str
    ]


class ContextMiddleware:
    """WSGI middleware giving every request a context (see the module docstring).

    ``policy`` is a ``propagation.Policy`` or ``PolicyHolder`` (read once per request, so
    an update affects new requests only); default ``Policy()``.

    Added in 0.1.
    """

    __slots__ = ("_policy", "app")

    def __init__(self, app: WSGIApp, *, policy: Policy | PolicyHolder | None = None) -> None:
        """Wrap ``app``.

        Non-blocking; each call makes a new middleware; thread-safe. No context is
        involved yet, so none can have already ended. Raises ``TypeError`` for a bad
        ``policy``.
        """
        propagation._resolve(policy)
        self.app = app
        self._policy = policy

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """Run the app for one request.

        Blocks while the app runs (the response body is produced later, as the server
        iterates it). Each call handles one new request; thread-safe (servers call it
        from many threads). If the parent context (``tether.current()``) already ended,
        or the budget is zero, the client gets 503/504 without the app running. Raises
        what the app raises, except the request context's own errors before the
        response started (turned into 504/503).
        """
        pol = propagation._resolve(self._policy)
        peer = environ.get("REMOTE_ADDR") or None
        ctx, cancel = propagation.extract(current(), _headers(environ), peer=peer, policy=pol)
        environ[ENVIRON_KEY] = ctx
        req = _Request(ctx, cancel, pol, environ, start_response)
        born = ctx.err()
        if born is not None:
            cancel()
            return [req.refuse(born, None)]
        prev = _current.get(_BACKGROUND)
        _current.set(ctx)
        try:
            result = self.app(environ, req.sr)
        except ContextError as e:
            err = _ours(e, ctx, pol)
            if err is None or req.started:
                cancel()
                raise
            body = req.refuse(err, sys.exc_info())  # type: ignore[arg-type]
            cancel()
            return [body]
        except BaseException:
            cancel()
            raise
        finally:
            _current.set(prev)
        return _Response(req, result)


def init_flask(app: Any, *, policy: Policy | PolicyHolder | None = None) -> None:
    """Give a Flask app request contexts and 504s: the middleware plus error handlers.

    Wraps ``app.wsgi_app`` in ``ContextMiddleware`` and registers handlers for
    ``tether.DeadlineExceeded`` (504) and ``tether.Canceled`` (503) that answer only for
    the request context's own errors; any other such error is re-raised to Flask (a 500).
    In a view, ``tether.current()`` or ``request_context(flask.request)`` is the context.

    Non-blocking; call it once per app (not idempotent: a second call wraps twice);
    not thread-safe (call it at startup). No context is involved yet, so none can have
    already ended. Raises ``TypeError`` for a bad ``policy``.
    """
    app.wsgi_app = ContextMiddleware(app.wsgi_app, policy=policy)

    def handler(e: ContextError) -> Any:
        from flask import request

        ctx = request_context(request)
        err = _ours(e, ctx, propagation._resolve(policy))
        if err is None:
            raise e
        status, body = _refusal(err)
        return body, int(status[:3]), {"Content-Type": "text/plain; charset=utf-8"}

    app.register_error_handler(DeadlineExceeded, handler)
    app.register_error_handler(Canceled, handler)
