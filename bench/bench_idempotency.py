"""Idempotency benchmark: what IdempotencyMiddleware adds to a cached replay.

Run: ``python bench/bench_idempotency.py [--quick] [--json PATH]``

The target (issue 10): on a replay (the key is done), the middleware adds <= 1 ms p50
with ``SQLiteStore`` and <= 2 ms with ``RedisStore``, on loopback, compared with the
bare app in the same run. Rows:

- H-*  over HTTP: a real uvicorn server per variant (subprocesses), one keep-alive
       client on loopback sending the same POST again and again, the variants
       interleaved request by request so that they share the machine's noise. ``bare``
       is the app alone (its handler runs each time); the others replay a stored
       response. ``naive-redis`` is a peer: the least a Redis-backed middleware must do
       on a replay (one GET, then send) — the floor for a networked store.
- A-*  in-process: the ASGI callable awaited directly (no sockets, no HTTP parsing),
       so the figure is the middleware's own cost: parse the key, read the body, hash,
       one store lookup, send.

Printed: p50 and p90 per variant, and "added p50" = variant p50 - bare p50 (the
target's measure), with the target beside it. PostgreSQL and Redis rows are skipped
when the server is not reachable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from tether import idempotency  # noqa: E402

PG = os.environ.get("TETHER_BENCH_PG", "host=127.0.0.1 port=5432 user=postgres dbname=test")
REDIS = os.environ.get("TETHER_BENCH_REDIS", "redis://127.0.0.1:6379/0")
# the servers are subprocesses: they inherit the parent's tag, so cleanup() finds their
# table and keys
TAG = os.environ.setdefault("TETHER_BENCH_TAG", str(os.getpid()))
TABLE = f"tether_idem_bench_{TAG}"
PREFIX = f"tether:idem:bench:{TAG}:"
TARGETS = {"sqlite": 1.0, "redis": 2.0}  # ms added at p50
BODY = b'{"amount": 500, "currency": "EUR"}'
KEY = "bench-key-0001"


def up(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


# -- the app and the variants -------------------------------------------------------------


async def payments(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    out = b'{"charge": "ch_1", "amount": 500, "currency": "EUR"}'
    await send(
        {
            "type": "http.response.start",
            "status": 201,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(out)),
            ],
        }
    )
    await send({"type": "http.response.body", "body": out})


class NaiveRedis:
    """The peer: replay = one Redis GET of a pre-rendered response, then send it."""

    def __init__(self, app: Any, url: str) -> None:
        import redis.asyncio

        self.app = app
        self.redis = redis.asyncio.Redis.from_url(url)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        key = dict(scope["headers"]).get(b"idempotency-key", b"").decode()
        got = await self.redis.get(PREFIX + "naive:" + key)
        if got is None:
            await self.app(scope, receive, send)
            return
        head, body = got.split(b"\n", 1)
        status, *hdrs = json.loads(head)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(a.encode(), b.encode()) for a, b in hdrs],
            }
        )
        await send({"type": "http.response.body", "body": body})


def make_store(variant: str, tmp: str) -> idempotency.Store:
    if variant == "sqlite":
        return idempotency.SQLiteStore(os.path.join(tmp, "bench.db"))
    if variant == "postgres":
        return idempotency.PostgresStore(PG, table=TABLE)
    return idempotency.RedisStore(REDIS, prefix=PREFIX)


def make_app(variant: str, tmp: str) -> Any:
    if variant == "bare":
        return payments
    if variant == "naive-redis":
        return NaiveRedis(payments, REDIS)
    return idempotency.IdempotencyMiddleware(payments, make_store(variant, tmp))


def serve(variant: str, tmp: str) -> None:
    import uvicorn

    sock = socket.socket()
    # accepted sockets inherit it (Linux): without it, the response's two writes wait
    # for the client's delayed ACK (~40 ms) one time in ten, in every variant alike
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    print(f"port {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(
        make_app(variant, tmp),
        log_level="warning",
        lifespan="off",
        loop="asyncio",
        http="h11",
        date_header=False,
        server_header=False,
        timeout_keep_alive=3600,  # the client's connection may idle while others start
    )
    uvicorn.Server(config).run(sockets=[sock])


# -- the client ---------------------------------------------------------------------------


class Conn:
    """A keep-alive HTTP/1.1 client that sends one prebuilt request and reads the reply."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(10)
        self.req = (
            b"POST /charges HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
            b"idempotency-key: " + KEY.encode() + b"\r\n"
            b"content-length: %d\r\n\r\n" % len(BODY)
        ) + BODY
        self.buf = b""

    def recv(self) -> bytes:
        got = self.sock.recv(65536)
        if not got:
            raise ConnectionError("the server closed the connection")
        return got

    def call(self) -> bytes:
        self.sock.sendall(self.req)
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.recv()
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        n = 0
        chunked = False
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.lower() == b"content-length":
                n = int(v)
            elif k.lower() == b"transfer-encoding":
                chunked = True
        if chunked:
            while not rest.endswith(b"0\r\n\r\n"):
                rest += self.recv()
            self.buf = b""
            return head
        while len(rest) < n:
            rest += self.recv()
        self.buf = rest[n:]
        status = head.split(b" ", 2)[1]
        if status not in (b"200", b"201"):
            raise RuntimeError(f"unexpected reply: {head!r} {rest[:n]!r}")
        return head

    def close(self) -> None:
        self.sock.close()


def stats(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    return {
        "p50": statistics.median(xs) * 1e3,
        "p90": xs[int(len(xs) * 0.9)] * 1e3,
        "n": len(xs),
    }


def bench_http(variants: list[str], n: int, tmp: str) -> dict[str, dict[str, float]]:
    procs: dict[str, subprocess.Popen[str]] = {}
    conns: dict[str, Conn] = {}
    try:
        for v in variants:
            p = subprocess.Popen(
                [sys.executable, __file__, "--serve", v, "--tmp", tmp],
                stdout=subprocess.PIPE,
                text=True,
            )
            procs[v] = p
        for v, p in procs.items():
            assert p.stdout is not None
            line = p.stdout.readline()
            if not line.startswith("port "):
                raise RuntimeError(f"{v}: server did not start")
            port = int(line.split()[1])
            end = time.monotonic() + 20
            while not up(port):
                if time.monotonic() > end:
                    raise RuntimeError(f"{v}: server not accepting")
                time.sleep(0.05)
            conns[v] = Conn(port)
        if "naive-redis" in variants:
            import redis

            r = redis.Redis.from_url(REDIS)
            out = b'{"charge": "ch_1", "amount": 500, "currency": "EUR"}'
            head = json.dumps(
                [201, ["content-type", "application/json"], ["content-length", str(len(out))]]
            )
            r.set(PREFIX + "naive:" + KEY, head.encode() + b"\n" + out)
            r.close()
        for c in conns.values():  # first call executes; then warm up the replays
            for _ in range(50):
                c.call()
        times: dict[str, list[float]] = {v: [] for v in variants}
        order = list(variants)
        for i in range(n):
            for v in order[i % len(order) :] + order[: i % len(order)]:
                t0 = time.perf_counter()
                conns[v].call()
                times[v].append(time.perf_counter() - t0)
        return {v: stats(ts) for v, ts in times.items()}
    finally:
        for c in conns.values():
            c.close()
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if p.stdout is not None:
                p.stdout.close()


async def bench_asgi(variants: list[str], n: int, tmp: str) -> dict[str, dict[str, float]]:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/charges",
        "raw_path": b"/charges",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"idempotency-key", KEY.encode())],
    }
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(m: Any) -> None:
        sent.append(m)

    apps = {v: make_app(v, tmp) for v in variants if v != "naive-redis"}
    times: dict[str, list[float]] = {v: [] for v in apps}
    try:
        for app in apps.values():
            for _ in range(50):
                await app(dict(scope), receive, send)
        for _ in range(n):
            for v, app in apps.items():
                t0 = time.perf_counter()
                await app(dict(scope), receive, send)
                times[v].append(time.perf_counter() - t0)
                sent.clear()
    finally:
        for app in apps.values():
            if isinstance(app, idempotency.IdempotencyMiddleware):
                await app.store.aclose()
    return {v: stats(ts) for v, ts in times.items()}


def cleanup() -> None:
    if up(5432):
        import psycopg

        with psycopg.connect(PG, autocommit=True) as c:
            c.execute(f"DROP TABLE IF EXISTS {TABLE}")
    if up(6379):
        import redis

        r = redis.Redis.from_url(REDIS)
        keys = list(r.scan_iter(PREFIX + "*"))
        if keys:
            r.delete(*keys)
        r.close()


def report(title: str, prefix: str, rows: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    print(f"\n{title}")
    print(f"{'row':<20} {'p50 ms':>8} {'p90 ms':>8} {'added p50':>10} {'target':>8}  verdict")
    base = rows["bare"]["p50"]
    out = []
    for v, s in rows.items():
        added = s["p50"] - base
        target = TARGETS.get(v) if prefix == "H" else None
        verdict = "" if target is None else ("ok" if added <= target else "MISSED")
        tgt = "" if target is None else f"<= {target:g}"
        name = f"{prefix}-{v}"
        print(f"{name:<20} {s['p50']:8.3f} {s['p90']:8.3f} {added:+10.3f} {tgt:>8}  {verdict}")
        out.append({"id": name, **s, "added_p50_ms": added, "target_ms": target})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="a smoke run (few requests)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve:
        serve(a.serve, a.tmp)
        return
    variants = ["bare", "sqlite"]
    if up(6379):
        variants += ["redis", "naive-redis"]
    else:
        print("Redis not reachable on 127.0.0.1:6379: its rows are skipped")
    if up(5432):
        variants.append("postgres")
    else:
        print("PostgreSQL not reachable on 127.0.0.1:5432: its rows are skipped")
    n = 200 if a.quick else 3000
    print(
        f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cpus; n={n}"
    )
    rows: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            rows += report(
                "H: replay over HTTP (uvicorn, loopback, keep-alive)",
                "H",
                bench_http(variants, n, tmp),
            )
        with tempfile.TemporaryDirectory() as tmp:
            rows += report(
                "A: replay in-process (the ASGI callable awaited directly)",
                "A",
                asyncio.run(bench_asgi(variants, n, tmp)),
            )
    finally:
        cleanup()
    missed = [
        r["id"] for r in rows if r["target_ms"] is not None and r["added_p50_ms"] > r["target_ms"]
    ]
    print("\nSummary:", "all targets met" if not missed else f"missed: {', '.join(missed)}")
    if a.json:
        a.json.write_text(json.dumps({"n": n, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
