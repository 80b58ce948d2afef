"""A payment service for the idempotency server tests: ``python tests/idem_app.py ...``.

It binds 127.0.0.1:0, prints ``port N``, and serves with uvicorn until SIGTERM. The
handler charges a fake processor: it writes ``start KEY`` to the ledger file, sleeps
``--delay`` seconds (the processor's latency), then writes ``charge KEY`` — so the
ledger counts executions across processes, and a process killed mid-charge leaves a
``start`` without its ``charge``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import uvicorn
from tests.idem_support import make_store

import tether
from tether import idempotency


def write(ledger: str, line: str) -> None:
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def make_app(ledger: str, delay: float) -> Any:
    async def payments(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] == "GET":  # readiness
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        body = b""
        while True:
            m = await receive()
            body += m.get("body", b"")
            if not m.get("more_body"):
                break
        key = tether.current().value(idempotency.IDEMPOTENCY_KEY)
        write(ledger, f"start {key}")
        await asyncio.sleep(delay)  # the processor
        write(ledger, f"charge {key}")
        out = json.dumps({"charge": f"ch_{key}", "amount": body.decode(), "pid": os.getpid()})
        await send(
            {
                "type": "http.response.start",
                "status": 201,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"x-pid", b"%d" % os.getpid()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": out.encode()})

    return payments


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--store", required=True)
    p.add_argument("--ledger", required=True)
    p.add_argument("--delay", type=float, default=0.2)
    p.add_argument("--lease", type=float, default=60)
    a = p.parse_args()
    store = make_store(a.store, lease=a.lease)
    app = idempotency.IdempotencyMiddleware(make_app(a.ledger, a.delay), store)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    print(f"port {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(
        app,
        log_level="warning",
        lifespan="off",
        date_header=False,
        server_header=False,
        loop="asyncio",
        http="h11",
        backlog=512,
    )
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        store.close()
        sock.close()


if __name__ == "__main__":
    main()
