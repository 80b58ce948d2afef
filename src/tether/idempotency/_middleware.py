"""IdempotencyMiddleware: the IETF Idempotency-Key semantics for any ASGI app."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from .._context import Context, current
from ._coord import LOG, Busy, Owner, acquire
from ._run import DEFAULT_TTL, check_key, check_store, check_ttl
from ._store import FingerprintMismatch, Store, StoreError

__all__ = ["IdempotencyMiddleware", "decode_response", "encode_response", "fingerprint"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

HEADER = b"idempotency-key"
STATE_KEY = "tether.context"
# Extensions that would let the app send a response we cannot record.
_UNRECORDABLE = ("http.response.pathsend", "http.response.zerocopy", "http.response.trailers")


def fingerprint(method: str, target: bytes, body: bytes) -> str:
    """The request fingerprint: SHA-256 over method, path with query, and body hash."""
    h = hashlib.sha256()
    h.update(method.encode("ascii", "replace"))
    h.update(b"\0")
    h.update(target)
    h.update(b"\0")
    h.update(hashlib.sha256(body).digest())
    return h.hexdigest()


def encode_response(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    """A stored response: a length-prefixed JSON head (status, headers), then the body.

    Header bytes go through latin-1, which maps every byte to one code point and back,
    so the replay is byte for byte.
    """
    head = json.dumps(
        {
            "v": 1,
            "status": status,
            "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in headers],
        },
        separators=(",", ":"),
    ).encode()
    return len(head).to_bytes(4, "big") + head + body


def decode_response(data: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """The inverse of ``encode_response``."""
    n = int.from_bytes(data[:4], "big")
    head = json.loads(data[4 : 4 + n])
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in head["headers"]]
    return int(head["status"]), headers, data[4 + n :]


def _parse_key(headers: Iterable[tuple[bytes, bytes]]) -> tuple[str | None, str | None]:
    """(key, None), (None, None) when absent, or (None, problem) when malformed."""
    found: list[bytes] = [v for n, v in headers if n.lower() == HEADER]
    if not found:
        return None, None
    if len(found) > 1:
        return None, "send exactly one Idempotency-Key header"
    raw = found[0].decode("latin-1").strip()
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':  # a structured-field string (RFC 8941)
        raw = raw[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    try:
        return check_key(raw), None
    except ValueError:
        return None, "the Idempotency-Key must be 1-255 printable ASCII characters"


async def _problem(
    send: Send, status: int, title: str, detail: str, retry_after: float | None = None
) -> None:
    body = json.dumps({"title": title, "status": status, "detail": detail}).encode()
    headers = [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if retry_after is not None:
        headers.append((b"retry-after", str(max(1, math.ceil(retry_after))).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class _Recorder:
    """Wraps ``send``: passes every message on and records the response."""

    __slots__ = ("body", "done", "headers", "send", "status")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.done = False

    async def __call__(self, message: Message) -> None:
        t = message.get("type")
        if t == "http.response.start":
            self.status = int(message["status"])
            self.headers = [(bytes(n), bytes(v)) for n, v in message.get("headers", ())]
        elif t == "http.response.body":
            self.body.append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                self.done = True
        await self.send(message)


class IdempotencyMiddleware:
    """Runs each request once per ``Idempotency-Key`` and replays its response to retries.

    Pure ASGI: wrap any app (Starlette, FastAPI, a bare callable), behind tether's
    ``ContextMiddleware`` or without it. For HTTP requests whose method is in
    ``methods`` (others, websockets and lifespan pass straight through), following the
    IETF draft *The Idempotency-Key HTTP Header Field*:

    - no ``Idempotency-Key`` header: ``400`` (or, with ``required=False``, the request
      runs unguarded); a malformed or repeated header: ``400``;
    - the key was first used with another request (fingerprint: method, path with query
      string, SHA-256 of the body): ``422``;
    - the key is done: its response is replayed — status, every header in order
      (repeated ones too) and the body, byte for byte — for ``ttl`` seconds;
    - the key is running (here or in another process sharing ``store``): the request
      waits for it within its own budget, then replays; ``409`` with ``Retry-After``
      if its budget ends first (without a budget it waits until the first ends, or its
      lease lapses and this request executes);
    - the store cannot be reached: ``503`` with ``Retry-After``, and nothing runs;
    - otherwise the app runs, under a context carrying ``IDEMPOTENCY_KEY`` that is
      ``tether.current()`` (and ``scope["state"]["tether.context"]`` if the scope has a
      state), entered with ``async with``: the app's task is interrupted when it ends
      (the request's deadline or cancellation, or the lease lost to another owner).
      A complete response is stored, whatever its status: what the app *sent*
      is the answer. If the app *raises* (even after sending, as Starlette's error
      middleware does), nothing is stored and the key is released: a retry runs again.

    The request's budget is the context at ``scope["state"]["tether.context"]`` (set by
    ``ContextMiddleware``), else ``tether.current()``. The request body is read whole
    before the app runs (it is hashed), then handed to the app unchanged.

    Constructing it does no I/O and raises ``TypeError``/``ValueError`` for a bad
    ``store``, ``methods`` or ``ttl``. Calling it blocks (suspends) the request's task
    only; it is thread-safe (any number of concurrent requests, loops, threads); each call
    handles one request (idempotent per key, by construction). A request whose context
    already ended is not run: the context's error propagates. The middleware raises
    what the app raised, and never swallows an exception that is not its own.

    Added in 0.1.
    """

    __module__ = "tether.idempotency"

    def __init__(
        self,
        app: ASGIApp,
        store: Store,
        *,
        methods: Iterable[str] = ("POST", "PATCH"),
        required: bool = True,
        ttl: float = DEFAULT_TTL,
    ) -> None:
        if not callable(app):
            raise TypeError(f"tether: IdempotencyMiddleware wraps an ASGI app, got {app!r:.60}")
        self.app = app
        self.store = check_store(store)
        if isinstance(methods, str):
            raise TypeError('tether: methods is a collection of names, e.g. ("POST", "PATCH")')
        self.methods = frozenset(str(m).upper() for m in methods)
        self.required = bool(required)
        self.ttl = check_ttl(ttl)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection (see the class docstring).

        Blocks (suspends) the request's task for the wait and the app; thread-safe; each
        call is one request, run at most once per key (idempotent by construction). A
        request whose context already ended, or is cancelled while it waits, is not run:
        the context's error propagates (``ContextMiddleware`` answers it). Raises what
        the app raised.
        """
        if scope["type"] != "http" or scope["method"] not in self.methods:
            await self.app(scope, receive, send)
            return
        key, problem = _parse_key(scope.get("headers", ()))
        if problem is not None:
            await _problem(send, 400, "Invalid Idempotency-Key", problem)
            return
        if key is None:
            if self.required:
                await _problem(
                    send,
                    400,
                    "Idempotency-Key is missing",
                    f"{scope['method']} {scope.get('path', '')} needs an Idempotency-Key "
                    "header: a unique value (a UUID) per operation, sent again on retries",
                )
                return
            await self.app(scope, receive, send)
            return
        await self._handle(scope, receive, send, key)

    async def _handle(self, scope: Scope, receive: Receive, send: Send, key: str) -> None:
        chunks: list[bytes] = []
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return  # the client left before sending its request: nothing to do
            chunks.append(msg.get("body", b""))
            if not msg.get("more_body", False):
                break
        body = b"".join(chunks)
        target = scope.get("raw_path") or scope.get("path", "").encode("utf-8", "surrogateescape")
        if qs := scope.get("query_string"):
            target += b"?" + qs
        fp = fingerprint(scope["method"], target, body)
        state = scope.get("state")
        base = state.get(STATE_KEY) if isinstance(state, MutableMapping) else None
        if not isinstance(base, Context):
            base = current()

        try:
            got = await acquire(base, self.store, key, fp)
        except FingerprintMismatch:
            await _problem(
                send,
                422,
                "Idempotency-Key reused",
                "this key was first used with a different request (method, path or body); "
                "use a new key for a new request",
            )
            return
        except Busy as e:
            await _problem(
                send,
                409,
                "Request in progress",
                "a request with this Idempotency-Key is still being processed; retry later",
                e.retry_after,
            )
            return
        except StoreError as e:
            LOG.error("idempotency key %r: store unavailable: %s", key, e)
            await _problem(
                send,
                503,
                "Idempotency store unavailable",
                "the request was not processed; retry later with the same key",
                1.0,
            )
            return
        if not isinstance(got, Owner):
            status, headers, rbody = decode_response(got.result)
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": rbody, "more_body": False})
            return
        await self._execute(scope, receive, send, owner=got, base=base, body=body)

    async def _execute(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        owner: Owner,
        base: Context,
        body: bytes,
    ) -> None:
        inner = dict(scope)
        ext = scope.get("extensions")
        if isinstance(ext, dict) and any(k in ext for k in _UNRECORDABLE):
            inner["extensions"] = {k: v for k, v in ext.items() if k not in _UNRECORDABLE}
        st = scope.get("state")
        state: MutableMapping[str, Any] | None = st if isinstance(st, MutableMapping) else None
        previous = state.get(STATE_KEY) if state is not None else None
        replayed = False

        async def receive_body() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        recorder = _Recorder(send)
        ok = False
        try:
            async with owner.context(base) as ctx:
                if state is not None:
                    state[STATE_KEY] = ctx
                await self.app(inner, receive_body, recorder)
            ok = recorder.done
        finally:
            if state is not None:
                if previous is None:
                    state.pop(STATE_KEY, None)
                else:
                    state[STATE_KEY] = previous
            if not ok:
                await owner.release()
        if ok:
            await owner.complete(
                encode_response(recorder.status, recorder.headers, b"".join(recorder.body)),
                self.ttl,
            )
