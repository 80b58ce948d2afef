"""gRPC interceptor overhead: tether's interceptors vs bare grpcio, in the same run.

Run: ``python bench/bench_grpc.py [--quick] [--json PATH]``

The servers run in a child process (as in production: the client's and the server's
interceptors do not share one GIL), one server and one channel per configuration, unary
calls of a 16-byte payload on loopback in a loop. Configurations, measured interleaved
(round-robin over the repeats, so machine noise hits all of them alike):

- ``bare``     no interceptor on either side (the baseline)
- ``noop``     a pass-through client and server interceptor (grpcio's interceptor
               machinery alone: what any interceptor costs)
- ``tether``   ``ClientInterceptor`` + ``ServerInterceptor``, the call made under a
               context with a one-hour deadline and a request id (so every call clamps its
               timeout, sends metadata, registers a watch, extracts a context)

Rows:

- G1  sync ``grpc`` unary round trip, us per call: tether vs bare (and noop)
- G2  ``grpc.aio`` unary round trip, us per call: tether vs bare (and noop)
- G3  tether's own work per call without the network, us: ``outbound`` (client) +
      ``server_scope`` + cancel (server), vs the bare round trip of G1
- G4s / G4a  cancellation latency across three hops (client -> middle -> leaf, in this
      process): ms from the client's ``cancel()`` to the leaf handler's context ending
      (sync) or the leaf handler being interrupted (aio), p50 and p99 over 200 trials

Best (minimum) of the repeats is reported with the median; the ratio is tether's best
over the peer's best; "overhead" is the difference in microseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import grpc
import grpc.aio

import tether
from tether import propagation
from tether.integrations import grpc as tgrpc
from tether.integrations.grpc import _common
from tether.integrations.grpc import aio as tgrpc_aio

PAYLOAD = b"x" * 16
# what a careful caller does by hand, without tether: a deadline and a request id
MANUAL: dict[str, Any] = {"timeout": 30.0, "metadata": (("x-request-id", "bench-request-1"),)}
METHOD = "/bench.B/Echo"


def echo(request: bytes, context: Any) -> bytes:
    return request


async def aecho(request: bytes, context: Any) -> bytes:
    return request


def handler(fn: Callable[..., Any]) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        "bench.B", {"Echo": grpc.unary_unary_rpc_method_handler(fn)}
    )


class NoopServer(grpc.ServerInterceptor):
    def intercept_service(self, continuation: Any, details: Any) -> Any:
        return continuation(details)


class NoopClient(grpc.UnaryUnaryClientInterceptor):
    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(details, request)


class ANoopServer(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        return await continuation(details)


class ANoopClient(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(details, request)


def request_context() -> tether.Scope:
    ctx = tether.with_value(tether.background(), tether.REQUEST_ID, "bench-request-1")
    return tether.with_timeout(ctx, 3600)


# --------------------------------------------------------------------------------------


SERVER_CONFIGS = ("bare", "noop", "tether")  # "manual" calls the bare server


def serve_sync() -> list[Any]:
    pool = futures.ThreadPoolExecutor(4)
    ints = {"bare": [], "noop": [NoopServer()], "tether": [tgrpc.ServerInterceptor()]}
    servers, ports = [], {}
    for name in SERVER_CONFIGS:
        server = grpc.server(pool, handlers=[handler(echo)], interceptors=ints[name])
        ports[name] = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
    print(json.dumps(ports), flush=True)
    sys.stdin.read()  # until the parent closes our stdin
    for server in servers:
        server.stop(None).wait()
    pool.shutdown()
    return servers


async def serve_aio() -> None:
    ints = {"bare": [], "noop": [ANoopServer()], "tether": [tgrpc_aio.ServerInterceptor()]}
    servers, ports = [], {}
    for name in SERVER_CONFIGS:
        server = grpc.aio.server(interceptors=ints[name])
        server.add_generic_rpc_handlers((handler(aecho),))
        ports[name] = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
    print(json.dumps(ports), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for server in servers:
        await server.stop(None)


class Servers:
    """The servers in a child process, as in production (no GIL shared with the client)."""

    def __init__(self, kind: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", kind],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        ports = json.loads(self.proc.stdout.readline())
        self.addr = {k: f"127.0.0.1:{v}" for k, v in ports.items()}
        self.addr["manual"] = self.addr["bare"]

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)


def sync_round_trips(n: int, repeats: int) -> dict[str, list[float]]:
    """us per call for each configuration, one list entry per repeat."""
    clients = {
        "bare": [],
        "manual": [],
        "noop": [NoopClient()],
        "tether": [tgrpc.ClientInterceptor()],
    }
    servers = Servers("sync")
    channels, calls = [], {}
    for name, cint in clients.items():
        ch = grpc.insecure_channel(servers.addr[name])
        channels.append(ch)
        ch_i = grpc.intercept_channel(ch, *cint) if cint else ch
        calls[name] = ch_i.unary_unary(METHOD)
    out: dict[str, list[float]] = {k: [] for k in clients}
    try:
        with request_context():
            for call in calls.values():  # warm up: connections, caches
                for _ in range(200):
                    call(PAYLOAD)
            for _ in range(repeats):
                for name, call in calls.items():
                    kw = MANUAL if name == "manual" else {}
                    t0 = time.perf_counter()
                    for _ in range(n):
                        call(PAYLOAD, **kw)
                    out[name].append((time.perf_counter() - t0) / n * 1e6)
    finally:
        for ch in channels:
            ch.close()
        servers.close()
    return out


async def aio_round_trips(n: int, repeats: int) -> dict[str, list[float]]:
    clients = {
        "bare": None,
        "manual": None,
        "noop": [ANoopClient()],
        "tether": tgrpc_aio.client_interceptors(),
    }
    servers = Servers("aio")
    channels, calls = [], {}
    for name, cint in clients.items():
        ch = grpc.aio.insecure_channel(servers.addr[name], interceptors=cint)
        channels.append(ch)
        calls[name] = ch.unary_unary(METHOD)
    out: dict[str, list[float]] = {k: [] for k in clients}
    try:
        with request_context():
            for call in calls.values():
                for _ in range(200):
                    await call(PAYLOAD)
            for _ in range(repeats):
                for name, call in calls.items():
                    kw = MANUAL if name == "manual" else {}
                    t0 = time.perf_counter()
                    for _ in range(n):
                        await call(PAYLOAD, **kw)
                    out[name].append((time.perf_counter() - t0) / n * 1e6)
    finally:
        for ch in channels:
            await ch.close()
        servers.close()
    return out


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def sync_cancel_latency(trials: int) -> list[float]:
    """ms from a client's cancel to the leaf handler's context ending, three sync hops."""
    import queue
    import threading

    started, ended = threading.Event(), queue.Queue[float]()

    def leaf(request: bytes, context: Any) -> bytes:
        ctx = tether.current()
        started.set()
        ctx.done().wait(10)
        ended.put(time.monotonic())
        ctx.check()
        return b""  # pragma: no cover

    leaf_pool = futures.ThreadPoolExecutor(4)
    leaf_srv = grpc.server(
        leaf_pool,
        handlers=[grpc.method_handlers_generic_handler(
            "bench.B", {"Leaf": grpc.unary_unary_rpc_method_handler(leaf)})],
        interceptors=[tgrpc.ServerInterceptor()],
    )  # fmt: skip
    leaf_port = leaf_srv.add_insecure_port("127.0.0.1:0")
    leaf_srv.start()
    leaf_ch = grpc.insecure_channel(f"127.0.0.1:{leaf_port}")
    to_leaf = grpc.intercept_channel(leaf_ch, tgrpc.ClientInterceptor()).unary_unary(
        "/bench.B/Leaf"
    )

    def middle(request: bytes, context: Any) -> bytes:
        result: bytes = to_leaf.future(request).result()
        return result

    mid_pool = futures.ThreadPoolExecutor(4)
    mid_srv = grpc.server(
        mid_pool,
        handlers=[grpc.method_handlers_generic_handler(
            "bench.B", {"Middle": grpc.unary_unary_rpc_method_handler(middle)})],
        interceptors=[tgrpc.ServerInterceptor()],
    )  # fmt: skip
    mid_port = mid_srv.add_insecure_port("127.0.0.1:0")
    mid_srv.start()
    mid_ch = grpc.insecure_channel(f"127.0.0.1:{mid_port}")
    to_mid = grpc.intercept_channel(mid_ch, tgrpc.ClientInterceptor()).unary_unary(
        "/bench.B/Middle"
    )
    out = []
    try:
        for _ in range(trials):
            started.clear()
            scope = tether.with_cancel(tether.background())
            with scope:
                fut = to_mid.future(PAYLOAD)
                started.wait(10)
                t0 = time.monotonic()
                scope.cancel()
                out.append((ended.get(timeout=10) - t0) * 1e3)
                fut.exception(10)
    finally:
        for ch in (mid_ch, leaf_ch):
            ch.close()
        for srv, pool in ((mid_srv, mid_pool), (leaf_srv, leaf_pool)):
            srv.stop(None).wait()
            pool.shutdown()
    return out


async def aio_cancel_latency(trials: int) -> list[float]:
    """ms from a client's cancel to the leaf handler being interrupted, three aio hops."""
    started = asyncio.Event()
    ended: asyncio.Queue[float] = asyncio.Queue()

    async def leaf(request: bytes, context: Any) -> bytes:
        started.set()
        try:
            await asyncio.sleep(10)
        finally:
            ended.put_nowait(time.monotonic())
        return b""  # pragma: no cover

    channels: list[grpc.aio.Channel] = []

    async def middle(request: bytes, context: Any) -> bytes:
        result: bytes = await channels[0].unary_unary("/bench.B/Leaf")(request)
        return result

    servers = []
    ports = {}
    for name, fn in (("Leaf", leaf), ("Middle", middle)):
        srv = grpc.aio.server(interceptors=[tgrpc_aio.ServerInterceptor()])
        srv.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "bench.B", {name: grpc.unary_unary_rpc_method_handler(fn)}),))  # fmt: skip
        ports[name] = srv.add_insecure_port("127.0.0.1:0")
        await srv.start()
        servers.append(srv)
    channels.extend(
        grpc.aio.insecure_channel(
            f"127.0.0.1:{ports[name]}", interceptors=tgrpc_aio.client_interceptors()
        )
        for name in ("Leaf", "Middle")
    )
    to_mid = channels[1].unary_unary("/bench.B/Middle")
    out = []
    try:
        for _ in range(trials):
            started.clear()
            scope = tether.with_cancel(tether.background())

            async def call(scope: tether.Scope = scope) -> None:
                with scope:
                    await to_mid(PAYLOAD)

            task = asyncio.ensure_future(call())
            await asyncio.wait_for(started.wait(), 10)
            t0 = time.monotonic()
            scope.cancel()
            out.append((await asyncio.wait_for(ended.get(), 10) - t0) * 1e3)
            await asyncio.gather(task, return_exceptions=True)
    finally:
        for ch in channels:
            await ch.close()
        for srv in servers:
            await srv.stop(None)
    return out


def own_work(n: int, repeats: int) -> list[float]:
    """us per call of tether's client + server work, without grpcio or the network."""
    policy = propagation.Policy()
    md = (("x-request-id", "bench-request-1"), ("user-agent", "grpc-python/1"))
    out = []
    with request_context() as ctx:
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(n):
                timeout, _sent, _gap = _common.outbound(ctx, None, None, policy)
                stop = tether.after_func(ctx, _noop)
                stop()
                sc = _common.server_scope(timeout, md, "ipv4:127.0.0.1:5000", policy)
                sc.cancel()
            out.append((time.perf_counter() - t0) / n * 1e6)
    return out


def _noop() -> None:
    pass


# --------------------------------------------------------------------------------------


def row(rid: str, what: str, tether_us: list[float], peer_us: list[float], peer: str) -> dict:
    t, p = min(tether_us), min(peer_us)
    return {
        "id": rid,
        "what": what,
        "peer_name": peer,
        "tether": t,
        "tether_median": statistics.median(tether_us),
        "peer": p,
        "peer_median": statistics.median(peer_us),
        "ratio": t / p,
        "overhead_us": t - p,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few calls: a smoke test")
    ap.add_argument("--json", type=Path, help="write the rows here")
    ap.add_argument("--serve", choices=["sync", "aio"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve == "sync":
        serve_sync()
        return 0
    if args.serve == "aio":
        asyncio.run(serve_aio())
        return 0
    n, repeats = (200, 2) if args.quick else (3000, 7)

    rows = []
    s = sync_round_trips(n, repeats)
    rows.append(row("G1", "sync unary round trip, us/call", s["tether"], s["bare"], "bare"))
    rows.append(row("G1n", "sync unary, noop interceptors", s["noop"], s["bare"], "bare"))
    rows.append(row("G1m", "sync unary, by hand (timeout + id)", s["manual"], s["bare"], "bare"))
    rows.append(row("G1t", "sync unary, tether vs by hand", s["tether"], s["manual"], "manual"))
    a = asyncio.run(aio_round_trips(n, repeats))
    rows.append(row("G2", "aio unary round trip, us/call", a["tether"], a["bare"], "bare"))
    rows.append(row("G2n", "aio unary, noop interceptors", a["noop"], a["bare"], "bare"))
    rows.append(row("G2m", "aio unary, by hand (timeout + id)", a["manual"], a["bare"], "bare"))
    rows.append(row("G2t", "aio unary, tether vs by hand", a["tether"], a["manual"], "manual"))
    trials = 20 if args.quick else 200
    lat = {"sync": sync_cancel_latency(trials), "aio": asyncio.run(aio_cancel_latency(trials))}
    w = own_work(n * 5, repeats)
    rows.append(row("G3", "tether's own work per call (no I/O)", w, s["bare"], "bare RTT"))

    print(
        f"bench_grpc: python {platform.python_version()}, grpcio {grpc.__version__}, "
        f"{os.cpu_count()} CPUs, n={n} x {repeats} repeats (best, median)"
    )
    print(f"{'row':5} {'what':40} {'tether':>16} {'peer':>22} {'ratio':>7} {'+us':>7}")
    for r in rows:
        print(
            f"{r['id']:5} {r['what']:40} "
            f"{r['tether']:7.1f} ({r['tether_median']:6.1f}) "
            f"{r['peer_name']:>8} {r['peer']:6.1f} ({r['peer_median']:6.1f}) "
            f"{r['ratio']:6.2f}x {r['overhead_us']:+7.1f}"
        )
    print(
        "Summary: tether's interceptors add "
        f"{rows[0]['overhead_us']:.1f} us (sync, {rows[0]['ratio']:.2f}x) and "
        f"{rows[4]['overhead_us']:.1f} us (aio, {rows[4]['ratio']:.2f}x) per unary call "
        f"over bare calls, {rows[3]['overhead_us']:.1f} / {rows[7]['overhead_us']:.1f} us over "
        f"calls that send a deadline and request id by hand; "
        f"their own work is {rows[8]['tether']:.1f} us"
    )
    for kind, xs in lat.items():
        print(
            f"G4{kind[0]}   cancel -> leaf, three {kind} hops, {len(xs)} trials: "
            f"p50 {_pct(xs, 0.5):.1f} ms, p99 {_pct(xs, 0.99):.1f} ms, max {max(xs):.1f} ms"
        )
    if args.json:
        latency = {
            k: {"p50": _pct(v, 0.5), "p99": _pct(v, 0.99), "max": max(v)} for k, v in lat.items()
        }
        args.json.write_text(json.dumps({"rows": rows, "cancel_latency_ms": latency}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
