"""The gRPC and OpenTelemetry integrations used the way users will, under mypy --strict.

Checked by tests/test_grpc_typing.py (mypy --strict with types-grpcio, and a run).
"""

from __future__ import annotations

import asyncio
from concurrent import futures

import grpc
import grpc.aio

import tether
from tether import propagation
from tether.integrations.grpc import ClientCancelled, ClientInterceptor, ServerInterceptor
from tether.integrations.grpc import aio as tgrpc_aio
from tether.integrations.otel import TetherPropagator


def hello(request: bytes, context: grpc.ServicerContext) -> bytes:
    ctx = tether.current()
    left = ctx.remaining()
    return b"" if left is None else f"{left:.1f}".encode()


def main() -> None:
    holder = propagation.PolicyHolder(propagation.Policy(max_timeout=5.0))
    pool = futures.ThreadPoolExecutor(2)
    server = grpc.server(pool, interceptors=[ServerInterceptor(holder)])
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "typed.T", {"Hello": grpc.unary_unary_rpc_method_handler(hello)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as raw:
        channel: grpc.Channel = grpc.intercept_channel(raw, ClientInterceptor())
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary("/typed.T/Hello")
        with tether.with_timeout(tether.background(), 2.0):
            reply = call(b"")
        assert isinstance(reply, bytes)
        print("budget seen by the server:", reply.decode())
    server.stop(None).wait()
    pool.shutdown()


async def amain() -> None:
    server = grpc.aio.server(interceptors=[tgrpc_aio.ServerInterceptor()])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    interceptors: list[grpc.aio.ClientInterceptor] = tgrpc_aio.client_interceptors()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", interceptors=interceptors):
        pass
    await server.stop(None)


def is_client_gone(ctx: tether.Context) -> bool:
    return isinstance(tether.cause(ctx), ClientCancelled)


if __name__ == "__main__":
    main()
    asyncio.run(amain())
    headers: dict[str, str] = {}
    TetherPropagator().inject(headers)
    print("client gone:", is_client_gone(tether.background()), headers)
