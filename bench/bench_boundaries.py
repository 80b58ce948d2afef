"""Boundaries benchmark: the wire format, extract, the ASGI middleware, cancellation.

Run: ``python bench/bench_boundaries.py [--quick] [--json PATH]``

Rows (issue 9's speed targets):

- B1  ``encode_timeout`` + ``decode_timeout`` of one budget, µs per pair   target <= 2 µs
- B2  ``propagation.extract`` of a typical ASGI header list (8 pairs: budget, request
      id, the usual others) with a policy (max/min timeout, trusted CIDRs), plus the
      ``cancel()`` every request does, µs per request                     target <= 5 µs
- B3  requests/s of a trivial Starlette endpoint under uvicorn (httptools, one
      process), loaded by ``wrk`` from a second process over loopback: bare app vs
      ``ContextMiddleware`` vs ``asgi-correlation-id``'s ``CorrelationIdMiddleware``,
      interleaved, best of the rounds; ratio = with / bare              target >= 0.95
- B3m the same three apps called in-process (no server, no sockets), µs per request,
      without and with a budget and request id: the middleware's own cost, free of B3's
      loopback and scheduling noise (no target; B3's 5 % of uvicorn's ~70 µs is ~3.5 µs)
- B3i the same three apps, and one whose middleware only forwards the call and wraps
      ``send`` (what any such layer costs), under a real uvicorn (httptools) server
      run by callgrind: machine instructions the *server process* spends per request
      (all of it: parsing, the event loop, Starlette, the middleware), without and with
      a budget and request id. Instructions barely depend on the machine's load (a
      server's loop iterations per request still vary a little: ~3 % run to run), so
      the 5 % question B3 cannot resolve on a shared machine is answered here; ratio =
      with / bare (``--instr``; needs valgrind)                          target <= 1.05
- B4  cancellation latency, client disconnect -> the leaf's context ended, across three
      hops (edge -> middle -> leaf, uvicorn httptools, httpx ``AsyncContextTransport``
      between them); the client disconnects 100 ms after sending (the leaf is waiting by
      then), p50 and p99 over 200 trials                                target p99 <= 50 ms

B1/B2 take the minimum over repeats (the machine's noise only ever adds); B3 and B4 are
what they are on a loaded machine: the figures in docs/benchmarks.md say which one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import tether  # noqa: E402
from tether import propagation  # noqa: E402

TIMER = time.perf_counter


def best_of(fn: Any, n: int, repeats: int) -> tuple[float, float]:
    """(min, median) seconds per call of fn over ``repeats`` runs of ``n`` calls."""
    runs = []
    for _ in range(repeats):
        t0 = TIMER()
        fn(n)
        runs.append((TIMER() - t0) / n)
    return min(runs), statistics.median(runs)


# ---------------------------------------------------------------------------- B1, B2


def b1(n: int) -> None:
    enc, dec = propagation.encode_timeout, propagation.decode_timeout
    x = 0.2875
    for _ in range(n):
        dec(enc(x))


HEADERS = [
    (b"host", b"orders.internal:8080"),
    (b"user-agent", b"python-httpx/0.28.1"),
    (b"accept", b"*/*"),
    (b"accept-encoding", b"gzip, deflate"),
    (b"connection", b"keep-alive"),
    (b"x-request-id", b"5f0c1a7e9b2d4c3e8a6f1b0d2c4e6a8b"),
    (b"x-request-timeout", b"287500u"),
    (b"traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
]
POLICY = propagation.Policy(max_timeout=30, min_timeout=0.01, trusted=("10.0.0.0/8",))


def b2(n: int) -> None:
    extract, bg, pol = propagation.extract, tether.background(), POLICY
    for _ in range(n):
        _, cancel = extract(bg, HEADERS, peer="192.0.2.7", policy=pol)
        cancel()


def b0(n: int) -> None:
    """The core's derive + cancel: the yardstick for B2 on a machine of unknown load."""
    with_cancel, bg = tether.with_cancel, tether.background()
    for _ in range(n):
        with_cancel(bg)[1]()


def b2_peer(n: int) -> None:
    """asgi-correlation-id's per-request work on the same headers, for scale."""
    from uuid import uuid4

    for _ in range(n):
        rid = None
        for k, v in HEADERS:
            if k == b"x-request-id":
                rid = v.decode("latin-1")
        if not rid or len(rid) != 32:
            rid = uuid4().hex


# ---------------------------------------------------------------------------- B3

APP_MODULE = "_boundaries_apps"


def free_socket() -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    return s


def _pin(cpu: int) -> list[str]:
    """Server on CPU 0, wrk on CPU 1 (when there are two and taskset exists)."""
    if (os.cpu_count() or 1) >= 2 and shutil.which("taskset"):
        return ["taskset", "-c", str(cpu)]
    return []


def wrk_run(port: int, seconds: float, connections: int) -> float:
    out = subprocess.run(
        [*_pin(1), "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", f"http://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 30,
    ).stdout
    m = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    if not m:
        raise RuntimeError(f"wrk printed no Requests/sec:\n{out}")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if non2xx:
        raise RuntimeError(f"{non2xx.group(1)} error responses:\n{out}")
    return float(m.group(1))


def _uvicorn(variant: str, port: int) -> list[str]:
    """The command serving app ``variant`` of ``APP_MODULE`` with uvicorn (httptools)."""
    return [sys.executable, "-m", "uvicorn", "--factory", f"{APP_MODULE}:{variant}",
            "--host", "127.0.0.1", "--port", str(port), "--http", "httptools",
            "--loop", "asyncio", "--log-level", "warning", "--no-access-log",
            "--lifespan", "off", "--app-dir", str(ROOT / "bench")]  # fmt: skip


def _wait_listening(proc: subprocess.Popen[bytes], port: int, seconds: float) -> None:
    """Wait until ``proc`` accepts on ``port``; raise if it exits or takes ``seconds``."""
    end = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"uvicorn exited with {proc.returncode}") from None
            if time.monotonic() > end:
                raise RuntimeError(f"uvicorn did not listen on {port} in {seconds} s") from None
            time.sleep(0.02)


def serve_variant(variant: str, seconds: float, connections: int) -> float:
    # A port, not --fd: uvicorn takes an inherited fd for a Unix socket and would not set
    # TCP_NODELAY (Nagle + delayed ACKs: ~40 ms per response).
    with free_socket() as s:
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([*_pin(0), *_uvicorn(variant, port)], cwd=ROOT, env=env)
    try:
        _wait_listening(proc, port, 10.0)
        wrk_run(port, 1, connections)  # warm-up
        return wrk_run(port, seconds, connections)
    finally:
        proc.terminate()
        proc.wait(10)


def b3(rounds: int, seconds: float, connections: int) -> dict[str, Any]:
    variants = ["bare", "tether", "correlation"]
    got: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(rounds):
        order = variants if r % 2 == 0 else variants[::-1]
        for v in order:
            got[v].append(serve_variant(v, seconds, connections))
    best = {v: max(xs) for v, xs in got.items()}
    med = {v: statistics.median(xs) for v, xs in got.items()}
    return {"runs": got, "best": best, "median": med}


# ---------------------------------------------------------------------------- B3m


def b3m(n: int, rounds: int) -> dict[str, dict[str, float]]:
    """Per-request cost of each app called in-process (no sockets, no server): what the
    middleware adds, without the loopback noise of B3. Best of ``rounds``, in µs."""
    sys.path.insert(0, str(ROOT / "bench"))
    import _boundaries_apps as apps

    base = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "GET", "scheme": "http", "path": "/", "raw_path": b"/",
            "query_string": b"", "root_path": "", "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000)}  # fmt: skip
    plain = [(b"host", b"svc"), (b"user-agent", b"wrk"), (b"accept", b"*/*")]
    # a uuid4 id: asgi-correlation-id's validator would reject (and log) anything else
    rid = uuid.uuid4().hex.encode()
    budget = [*plain, (b"x-request-timeout", b"2S"), (b"x-request-id", rid)]

    async def go(app: Any, headers: list[tuple[bytes, bytes]], count: int) -> float:
        first = [True]
        never = asyncio.Event()

        async def receive() -> dict[str, Any]:
            if first[0]:
                first[0] = False
                return {"type": "http.request", "body": b"", "more_body": False}
            await never.wait()
            return {"type": "http.disconnect"}

        async def send(message: Any) -> None:
            pass

        t0 = TIMER()
        for _ in range(count):
            first[0] = True
            await app({**base, "headers": headers}, receive, send)
        return (TIMER() - t0) / count

    async def main() -> dict[str, dict[str, float]]:
        variants = {"bare": apps.bare(), "tether": apps.tether(), "correlation": apps.correlation()}
        out: dict[str, dict[str, float]] = {}
        for hname, headers in (("plain", plain), ("budget", budget)):
            best = dict.fromkeys(variants, 1e9)
            for name, app in variants.items():
                await go(app, headers, 200)
            for _ in range(rounds):
                for name, app in variants.items():
                    best[name] = min(best[name], await go(app, headers, n))
            out[hname] = {k: v * 1e6 for k, v in best.items()}
        return out

    return asyncio.run(main())


# ---------------------------------------------------------------------------- B3i

_REQ_PLAIN = b"GET / HTTP/1.1\r\nhost: svc\r\nuser-agent: bench\r\naccept: */*\r\n\r\n"
_REQ_BUDGET = (b"GET / HTTP/1.1\r\nhost: svc\r\nuser-agent: bench\r\naccept: */*\r\n"
               b"x-request-timeout: 2S\r\nx-request-id: " + uuid.UUID(int=7, version=4).hex.encode()
               + b"\r\n\r\n")  # fmt: skip


def _send_requests(port: int, plan: list[tuple[bytes, int]]) -> None:
    """Send the requests of ``plan`` one after the other on one keep-alive connection,
    each answered before the next is sent (as a client waiting on its answer would)."""
    with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for req, count in plan:
            for _ in range(count):
                s.sendall(req)
                buf = b""
                while not buf.endswith(b"hello"):  # the body of the app's only answer
                    chunk = s.recv(4096)
                    if not chunk:
                        raise RuntimeError("B3i: the server closed the connection")
                    buf += chunk
                if not buf.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(f"B3i: unexpected answer {buf[:60]!r}")


def _callgrind_server(variant: str, plan: list[tuple[bytes, int]], out_dir: Path) -> int:
    """Instructions the uvicorn server process executed, start to exit, serving ``plan``."""
    with free_socket() as s:
        port = s.getsockname()[1]
    out = out_dir / f"cg.{variant}.{sum(c for _, c in plan)}.{len(list(out_dir.iterdir()))}"
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
           *_uvicorn(variant, port)]  # fmt: skip
    # One hash seed: dict and set layouts, hence instruction counts, repeat run to run.
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONHASHSEED": "0"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
    try:
        _wait_listening(proc, port, 150.0)  # callgrind starts uvicorn ~50x slower
        _send_requests(port, plan)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(120)
    m = re.search(r"^totals:\s+(\d+)", out.read_text(), re.M)
    if not m:
        raise RuntimeError(f"B3i: no totals in {out}")
    return int(m.group(1))


def b3i(small: int, big: int) -> dict[str, dict[str, float]]:
    """Server instructions per request, plain and with a budget, for each app: three
    server runs per app (``small`` of each kind; ``big`` plain; ``big`` with a budget),
    so start-up, warm-up and shutdown cancel out of the differences."""
    import tempfile

    out: dict[str, dict[str, float]] = {"plain": {}, "budget": {}}
    with tempfile.TemporaryDirectory(prefix="tether-b3i-") as d:
        for variant in ("bare", "tether", "correlation", "passthrough"):
            base = _callgrind_server(variant, [(_REQ_PLAIN, small), (_REQ_BUDGET, small)], Path(d))
            more_plain = _callgrind_server(
                variant, [(_REQ_PLAIN, big), (_REQ_BUDGET, small)], Path(d)
            )
            more_budget = _callgrind_server(
                variant, [(_REQ_PLAIN, small), (_REQ_BUDGET, big)], Path(d)
            )
            out["plain"][variant] = (more_plain - base) / (big - small)
            out["budget"][variant] = (more_budget - base) / (big - small)
    return out


# ---------------------------------------------------------------------------- B4


def b4(trials: int, hold: float = 0.1) -> dict[str, Any]:
    import httpx
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from tether.integrations.asgi import ContextMiddleware, request_context
    from tether.integrations.httpx import AsyncContextTransport

    ssl_ctx = ssl.create_default_context()
    started = threading.Event()
    ended = threading.Event()
    end_at: list[float] = [0.0]

    def hop(next_url: list[str]) -> Any:
        clients: dict[int, httpx.AsyncClient] = {}

        async def handler(request: Request) -> Response:
            ctx = request_context(request)
            if next_url:
                c = clients.get(0)
                if c is None:
                    transport = AsyncContextTransport(httpx.AsyncHTTPTransport(verify=ssl_ctx))
                    c = clients[0] = httpx.AsyncClient(transport=transport)
                r = await c.get(next_url[0] + "/")
                return Response(r.content, status_code=r.status_code)
            started.set()
            try:
                await ctx.done()
            finally:
                end_at[0] = time.monotonic()
                ended.set()
            return Response("")

        app = Starlette(routes=[Route("/", handler)])
        app.add_middleware(ContextMiddleware)
        return app, clients

    servers = []

    def start(app: Any) -> tuple[str, Any, threading.Thread, socket.socket]:
        sock = free_socket()
        config = uvicorn.Config(app, http="httptools", lifespan="off", log_level="warning",
                                access_log=False, loop="asyncio")  # fmt: skip
        server = uvicorn.Server(config)
        t = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])))
        t.start()
        port = sock.getsockname()[1]
        while not server.started:
            time.sleep(0.01)
        servers.append((server, t, sock))
        return f"http://127.0.0.1:{port}", server, t, sock

    leaf_app, _ = hop([])
    leaf, *_ = start(leaf_app)
    mid_app, _mid_clients = hop([leaf])
    middle, *_ = start(mid_app)
    edge_app, _edge_clients = hop([middle])
    edge, *_ = start(edge_app)
    port = int(edge.rsplit(":", 1)[1])
    lat = []
    try:
        for _ in range(trials):
            started.clear()
            ended.clear()
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET / HTTP/1.1\r\nhost: edge\r\n\r\n")
            t_sent = time.monotonic()
            if not started.wait(10):
                raise RuntimeError("the leaf never started")
            time.sleep(
                max(0.0, hold - (time.monotonic() - t_sent))
            )  # the client waits, then leaves
            t_close = time.monotonic()
            s.close()
            if not ended.wait(10):
                raise RuntimeError("the leaf's context never ended")
            lat.append(end_at[0] - t_close)
    finally:
        for server, t, sock in servers:
            server.should_exit = True
        for server, t, sock in servers:
            t.join(10)
            sock.close()
    lat.sort()
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]  # noqa: E731
    return {"trials": trials, "p50": p(0.50), "p99": p(0.99), "max": lat[-1]}


# ---------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="a smoke run: small and short")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    ap.add_argument("--skip-http", action="store_true", help="only B1/B2 (no servers)")
    ap.add_argument("--instr", action="store_true", help="also B3i (callgrind; minutes)")
    args = ap.parse_args()
    q = args.quick
    n, reps = (2_000, 3) if q else (100_000, 7)

    rows = []
    print(f"tether boundaries benchmark - Python {platform.python_version()}, "
          f"{platform.machine()}, {os.cpu_count()} CPUs{' (quick)' if q else ''}")  # fmt: skip

    b1_best, b1_med = best_of(b1, n, reps)
    rows.append({"id": "B1", "what": "encode+decode, us", "tether": b1_best * 1e6,
                 "median": b1_med * 1e6, "target": 2.0})  # fmt: skip
    b2_best, b2_med = best_of(b2, n, reps)
    peer_best, _ = best_of(b2_peer, n, reps)
    core_best, _ = best_of(b0, n, reps)
    rows.append({"id": "B2", "what": "extract+cancel with policy, us", "tether": b2_best * 1e6,
                 "median": b2_med * 1e6, "peer": peer_best * 1e6, "core": core_best * 1e6,
                 "target": 5.0})  # fmt: skip

    m = b3m(300 if q else 3000, 3 if q else 15)
    rows.append({"id": "B3m", "what": "in-process us/request, bare / tether / correlation",
                 "tether": m["plain"]["tether"], "plain": m["plain"],
                 "budget": m["budget"]})  # fmt: skip

    if not args.skip_http:
        if shutil.which("wrk"):
            r = b3(1 if q else 3, 1 if q else 5, 16 if q else 64)
            bare = r["best"]["bare"]
            rows.append({"id": "B3", "what": "req/s with ContextMiddleware / bare",
                         "tether": r["best"]["tether"], "peer": r["best"]["correlation"],
                         "bare": bare, "ratio": r["best"]["tether"] / bare,
                         "peer_ratio": r["best"]["correlation"] / bare,
                         "median_ratio": r["median"]["tether"] / r["median"]["bare"],
                         "runs": r["runs"], "target": 0.95})  # fmt: skip
        else:
            print("B3 skipped: wrk is not installed (apt-get install wrk)")
        if args.instr:
            if shutil.which("valgrind"):
                ri = b3i(*((20, 120) if q else (200, 1200)))
                rows.append({"id": "B3i", "what": "server instructions/request",
                             "tether": ri["plain"]["tether"], "plain": ri["plain"],
                             "budget": ri["budget"], "target": 1.05})  # fmt: skip
            else:
                print("B3i skipped: valgrind is not installed (apt-get install valgrind)")
        r4 = b4(20 if q else 200)
        rows.append({"id": "B4", "what": "disconnect -> leaf ended, 3 hops, ms",
                     "tether": r4["p99"] * 1e3, "p50": r4["p50"] * 1e3, "p99": r4["p99"] * 1e3,
                     "max": r4["max"] * 1e3, "trials": r4["trials"], "target": 50.0})  # fmt: skip

    print("\nSummary")
    for row in rows:
        rid = row["id"]
        if rid == "B1":
            line = f"{row['tether']:.2f} us (median {row['median']:.2f}); target <= 2 us"
        elif rid == "B2":
            line = (f"{row['tether']:.2f} us (median {row['median']:.2f}); "
                    f"asgi-correlation-id's header scan + uuid4: {row['peer']:.2f} us; the "
                    f"core's with_cancel+cancel in this run: {row['core']:.2f} us; "
                    "target <= 5 us")  # fmt: skip
        elif rid == "B3m":
            pl, bu = row["plain"], row["budget"]
            line = (f"no headers: {pl['bare']:.1f} / {pl['tether']:.1f} / "
                    f"{pl['correlation']:.1f} us (tether +{pl['tether'] - pl['bare']:.1f}, "
                    f"asgi-correlation-id +{pl['correlation'] - pl['bare']:.1f}); with a budget "
                    f"and an id: {bu['bare']:.1f} / {bu['tether']:.1f} / "
                    f"{bu['correlation']:.1f} us "
                    f"(tether +{bu['tether'] - bu['bare']:.1f})")  # fmt: skip
        elif rid == "B3i":
            parts = []
            for h in ("plain", "budget"):
                x = row[h]
                bare, tet, cor = x["bare"], x["tether"], x["correlation"]
                pas = x["passthrough"]
                parts.append(f"{h}: bare {bare:,.0f}, tether {tet:,.0f} ({tet / bare:.3f}x), "
                             f"asgi-correlation-id {cor:,.0f} ({cor / bare:.3f}x), "
                             f"pass-through middleware {pas:,.0f} ({pas / bare:.3f}x)")  # fmt: skip
            line = "; ".join(parts) + "; target <= 1.05x"
        elif rid == "B3":
            line = (f"bare {row['bare']:.0f} req/s, tether {row['tether']:.0f} "
                    f"(ratio {row['ratio']:.3f}, median-of-rounds {row['median_ratio']:.3f}), "
                    f"asgi-correlation-id {row['peer']:.0f} (ratio {row['peer_ratio']:.3f}); "
                    "target >= 0.95")  # fmt: skip
        else:
            line = (f"p50 {row['p50']:.2f} ms, p99 {row['p99']:.2f} ms, max {row['max']:.2f} ms "
                    f"over {row['trials']} trials; target p99 <= 50 ms")  # fmt: skip
        print(f"{rid}  {row['what']}: {line}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows}, indent=2))


if __name__ == "__main__":
    main()
