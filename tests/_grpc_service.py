"""A protobuf-free gRPC test service (JSON over raw bytes) for sync and asyncio servers.

Every handler reports what it saw (its context's remaining budget, request id, whether
the context is ``tether.current()``) and records into ``Service.events`` how its context
ended, so the tests can check the server side of every hop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import grpc.aio

import tether
from tether.integrations import grpc as tgrpc
from tether.integrations.grpc import aio as tgrpc_aio

SERVICE = "tether.test.T"


def dumps(x: Any) -> bytes:
    return json.dumps(x).encode()


def loads(b: bytes) -> Any:
    return json.loads(b) if b else None


def info(sctx: Any, **extra: Any) -> dict[str, Any]:
    ctx = tether.current()
    tr = sctx.time_remaining()
    return {
        "remaining": ctx.remaining(),
        "time_remaining": tr if tr is not None and tr < 1e15 else None,
        "request_id": ctx.value(tether.REQUEST_ID),
        "live": ctx.err() is None,
        "is_background": ctx is tether.background(),
        **extra,
    }


class Event:
    """How a handler's context ended, seen from inside the handler."""

    def __init__(self, method: str, ctx: tether.Context, started: float) -> None:
        self.method = method
        self.started = started
        self.ended = time.monotonic()
        err = ctx.err()
        self.err = type(err).__name__ if err is not None else None
        cause = tether.cause(ctx)
        self.cause = type(cause).__name__ if cause is not None else None
        self.request_id = ctx.value(tether.REQUEST_ID)
        self.ctx = ctx  # to wait for it to end (a grpc.aio handler is cancelled first)

    def __repr__(self) -> str:
        return f"Event({self.method}, err={self.err}, cause={self.cause})"


class Service:
    """Handlers for all four arities; ``Relay`` calls the next hop through a channel."""

    def __init__(self, name: str = "svc") -> None:
        self.name = name
        self.events: queue.Queue[Event] = queue.Queue()
        self.calls = 0
        self.blocked = threading.Event()  # set when a handler starts waiting on its context
        self.channels: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()

    # -- sync handlers ---------------------------------------------------------------

    def _count(self) -> None:
        with self._lock:
            self.calls += 1

    def info(self, request: bytes, sctx: Any) -> bytes:
        self._count()
        return dumps(info(sctx))

    def wait(self, request: bytes, sctx: Any) -> bytes:
        """Block on the context (a sync handler in ctx.done().wait()), then check it."""
        self._count()
        ctx = tether.current()
        started = time.monotonic()
        seen = info(sctx)
        self.blocked.set()
        ctx.done().wait(10)
        self.events.put(Event("wait", ctx, started))
        ctx.check()
        return dumps(seen)

    def fail(self, request: bytes, sctx: Any) -> bytes:
        self._count()
        kind = loads(request)
        if kind == "deadline":
            raise tether.DeadlineExceeded()
        if kind == "canceled":
            raise tether.Canceled()
        if kind == "check":
            tether.current().check()
            return b"{}"
        raise ValueError("not tether's")

    def info_stream(self, request: bytes, sctx: Any) -> Iterator[bytes]:
        self._count()
        for i in range(int(loads(request) or 3)):
            yield dumps(info(sctx, i=i))

    def wait_stream(self, request: bytes, sctx: Any) -> Iterator[bytes]:
        self._count()
        ctx = tether.current()
        started = time.monotonic()
        yield dumps(info(sctx))
        self.blocked.set()
        ctx.done().wait(10)
        self.events.put(Event("wait_stream", ctx, started))
        ctx.check()
        yield b"{}"  # pragma: no cover - check() raised

    def collect(self, requests: Iterator[bytes], sctx: Any) -> bytes:
        self._count()
        n = sum(1 for _ in requests)
        return dumps(info(sctx, n=n))

    def chat(self, requests: Iterator[bytes], sctx: Any) -> Iterator[bytes]:
        self._count()
        for r in requests:
            if loads(r) == "wait":
                ctx = tether.current()
                started = time.monotonic()
                self.blocked.set()
                ctx.done().wait(10)
                self.events.put(Event("chat", ctx, started))
                ctx.check()
            yield dumps(info(sctx))

    def channel(self, target: str) -> grpc.Channel:
        with self._lock:
            ch = self.channels.get(target)
            if ch is None:
                ch = grpc.intercept_channel(
                    grpc.insecure_channel(target), tgrpc.ClientInterceptor()
                )
                self.channels[target] = ch
            return ch

    def relay(self, request: bytes, sctx: Any) -> bytes:
        """The middle hop: call ``to`` (the next hop's Relay or Wait) as a future."""
        self._count()
        ctx = tether.current()
        started = time.monotonic()
        req = loads(request)
        seen = info(sctx)
        call = self.channel(req["to"]).unary_unary(f"/{SERVICE}/{req['method']}")
        try:
            down = loads(call.future(dumps(req.get("next")), timeout=req.get("timeout")).result())
        finally:
            self.events.put(Event("relay", ctx, started))
        return dumps({"hop": seen, "down": down})

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Info": grpc.unary_unary_rpc_method_handler(self.info),
                "Wait": grpc.unary_unary_rpc_method_handler(self.wait),
                "Fail": grpc.unary_unary_rpc_method_handler(self.fail),
                "InfoStream": grpc.unary_stream_rpc_method_handler(self.info_stream),
                "WaitStream": grpc.unary_stream_rpc_method_handler(self.wait_stream),
                "Collect": grpc.stream_unary_rpc_method_handler(self.collect),
                "Chat": grpc.stream_stream_rpc_method_handler(self.chat),
                "Relay": grpc.unary_unary_rpc_method_handler(self.relay),
            },
        )

    def close(self) -> None:
        for ch in self.channels.values():
            ch.close()
        self.channels.clear()


@contextlib.contextmanager
def serve(service: Service, interceptors: list[Any] | None = None) -> Iterator[str]:
    """A sync grpc server on a free loopback port; yields its address; stops it."""
    pool = futures.ThreadPoolExecutor(8, thread_name_prefix=f"grpc-{service.name}")
    server = grpc.server(pool, handlers=[service.handler()], interceptors=interceptors or [])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None).wait()
        service.close()
        pool.shutdown(wait=True)


@contextlib.contextmanager
def channel(target: str, *interceptors: Any) -> Iterator[grpc.Channel]:
    ch = grpc.insecure_channel(target)
    try:
        yield grpc.intercept_channel(ch, *interceptors) if interceptors else ch
    finally:
        ch.close()


# -- asyncio -------------------------------------------------------------------------


class AioService(Service):
    """The same methods as ``async def`` handlers for a ``grpc.aio`` server."""

    def __init__(self, name: str = "aio") -> None:
        super().__init__(name)
        self.aio_channels: dict[str, grpc.aio.Channel] = {}

    async def a_info(self, request: bytes, sctx: Any) -> bytes:
        self._count()
        return dumps(info(sctx))

    async def a_wait(self, request: bytes, sctx: Any) -> bytes:
        self._count()
        ctx = tether.current()
        started = time.monotonic()
        seen = info(sctx)
        try:
            self.blocked.set()
            await asyncio.wait_for(ctx.done(), 10)
        finally:
            self.events.put(Event("wait", ctx, started))
        ctx.check()
        return dumps(seen)

    async def a_sleep(self, request: bytes, sctx: Any) -> bytes:
        """Sleep without watching the context: the interceptor must interrupt it."""
        self._count()
        ctx = tether.current()
        started = time.monotonic()
        try:
            self.blocked.set()
            await asyncio.sleep(10)
        finally:
            self.events.put(Event("sleep", ctx, started))
        return b"{}"  # pragma: no cover - interrupted

    async def a_fail(self, request: bytes, sctx: Any) -> bytes:
        return self.fail(request, sctx)

    async def a_info_stream(self, request: bytes, sctx: Any) -> Any:
        self._count()
        for i in range(int(loads(request) or 3)):
            yield dumps(info(sctx, i=i))

    async def a_wait_stream(self, request: bytes, sctx: Any) -> Any:
        self._count()
        ctx = tether.current()
        started = time.monotonic()
        yield dumps(info(sctx))
        try:
            self.blocked.set()
            await asyncio.sleep(10)
        finally:
            self.events.put(Event("wait_stream", ctx, started))

    async def a_write_stream(self, request: bytes, sctx: Any) -> None:
        """A response stream written with context.write (a coroutine, not a generator)."""
        self._count()
        for i in range(3):
            await sctx.write(dumps(info(sctx, i=i)))

    async def a_collect(self, requests: Any, sctx: Any) -> bytes:
        self._count()
        n = 0
        async for _ in requests:
            n += 1
        return dumps(info(sctx, n=n))

    async def a_chat(self, requests: Any, sctx: Any) -> Any:
        self._count()
        async for r in requests:
            if loads(r) == "wait":
                ctx = tether.current()
                started = time.monotonic()
                try:
                    self.blocked.set()
                    await asyncio.sleep(10)
                finally:
                    self.events.put(Event("chat", ctx, started))
            yield dumps(info(sctx))

    def aio_channel(self, target: str) -> grpc.aio.Channel:
        ch = self.aio_channels.get(target)
        if ch is None:
            ch = grpc.aio.insecure_channel(target, interceptors=tgrpc_aio.client_interceptors())
            self.aio_channels[target] = ch
        return ch

    async def a_relay(self, request: bytes, sctx: Any) -> bytes:
        self._count()
        ctx = tether.current()
        started = time.monotonic()
        req = loads(request)
        seen = info(sctx)
        call = self.aio_channel(req["to"]).unary_unary(f"/{SERVICE}/{req['method']}")
        try:
            down = loads(await call(dumps(req.get("next")), timeout=req.get("timeout")))
        finally:
            self.events.put(Event("relay", ctx, started))
        return dumps({"hop": seen, "down": down})

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Info": grpc.unary_unary_rpc_method_handler(self.a_info),
                "Wait": grpc.unary_unary_rpc_method_handler(self.a_wait),
                "Sleep": grpc.unary_unary_rpc_method_handler(self.a_sleep),
                "Fail": grpc.unary_unary_rpc_method_handler(self.a_fail),
                "InfoStream": grpc.unary_stream_rpc_method_handler(self.a_info_stream),
                "WaitStream": grpc.unary_stream_rpc_method_handler(self.a_wait_stream),
                "WriteStream": grpc.unary_stream_rpc_method_handler(self.a_write_stream),
                "Collect": grpc.stream_unary_rpc_method_handler(self.a_collect),
                "Chat": grpc.stream_stream_rpc_method_handler(self.a_chat),
                "Relay": grpc.unary_unary_rpc_method_handler(self.a_relay),
            },
        )

    async def aclose(self) -> None:
        for ch in self.aio_channels.values():
            await ch.close()
        self.aio_channels.clear()


@contextlib.asynccontextmanager
async def aserve(service: AioService, interceptors: list[Any] | None = None) -> Any:
    """A grpc.aio server on a free loopback port in the running loop; yields its address."""
    server = grpc.aio.server(interceptors=interceptors or [])
    server.add_generic_rpc_handlers((service.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await service.aclose()
        await server.stop(None)


async def aget(events: queue.Queue[Event], timeout: float = 5.0) -> Event:
    """``events.get`` without blocking the loop (the server may run on it)."""
    end = time.monotonic() + timeout
    while True:
        try:
            return events.get_nowait()
        except queue.Empty:
            if time.monotonic() > end:
                raise
            await asyncio.sleep(0.001)
