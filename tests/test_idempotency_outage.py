"""The store goes away while the service runs (a TCP proxy in front of PostgreSQL or
Redis is cut, then restored): what the middleware does is what docs/idempotency.md says.

- store gone before a request: 503, nothing runs; back: the request runs, replays work;
- store gone while the handler runs: the client still gets its response, the failure is
  logged, and — the documented window — the key stays "running" until its lease
  lapses, after which a retry executes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.idem_support import PG, REDIS, Backend, open_backend

from tether import idempotency


class Proxy:
    """A loopback TCP proxy that can be cut (listener and live connections) and restored."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self.server.sockets[0].getsockname()[1]

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        w.close()

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            w.close()
            return
        self.writers |= {w, uw}
        for t in (
            asyncio.ensure_future(self._pipe(r, uw)),
            asyncio.ensure_future(self._pipe(ur, w)),
        ):
            self.tasks.add(t)
            t.add_done_callback(self.tasks.discard)

    async def cut(self) -> None:
        assert self.server is not None
        server, self.server = self.server, None
        server.close()
        # the live connections go first: from Python 3.12.1 on, wait_closed() waits for
        # every connection the server accepted to close
        for w in self.writers:
            w.transport.abort()
        self.writers.clear()
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await server.wait_closed()

    async def close(self) -> None:
        if self.server is not None:
            await self.cut()


@pytest.fixture(params=["postgres", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from open_backend(request.param, tmp_path)


def proxied_store(backend: Backend, port: int, **kw: Any) -> idempotency.Store:
    if backend.kind == "postgres":
        conninfo = PG.replace("port=5432", f"port={port}")
        assert conninfo != PG
        return idempotency.PostgresStore(conninfo, table=backend.table, timeout=2, **kw)
    url = REDIS.replace(":6379", f":{port}")
    assert url != REDIS
    return idempotency.RedisStore(url, prefix=backend.prefix, timeout=2, **kw)


class App:
    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.runs: list[str] = []
        self.started = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        key = dict(scope["headers"])[b"idempotency-key"].decode()
        self.runs.append(key)
        self.started.set()
        await asyncio.sleep(self.delay)
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": f"run {len(self.runs)}".encode()})


def target_port(backend: Backend) -> int:
    return 5432 if backend.kind == "postgres" else 6379


def test_store_gone_then_back(backend: Backend, caplog: Any) -> None:
    async def main() -> None:
        proxy = Proxy(target_port(backend))
        await proxy.start()
        app = App()
        store = proxied_store(backend, proxy.port)
        mw = idempotency.IdempotencyMiddleware(app, store)
        try:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(mw), base_url="http://t"
            ) as c:
                first = await c.post("/pay", headers={"Idempotency-Key": "k1"})
                assert first.status_code == 201
                await proxy.cut()
                for key in ("k1", "k2"):
                    r = await c.post("/pay", headers={"Idempotency-Key": key})
                    assert r.status_code == 503, key
                assert app.runs == ["k1"]
                await proxy.start()  # the same port again
                assert (await c.post("/pay", headers={"Idempotency-Key": "k1"})).content == (
                    first.content
                )
                r = await c.post("/pay", headers={"Idempotency-Key": "k2"})
                assert r.status_code == 201
                assert app.runs == ["k1", "k2"]
        finally:
            await store.aclose()
            await proxy.close()

    with caplog.at_level(logging.ERROR, "tether.idempotency"):
        asyncio.run(main())
    assert "store unavailable" in caplog.text


def test_store_gone_while_the_handler_runs(backend: Backend, caplog: Any) -> None:
    """The documented window: the answer reaches the client, is not stored, and a retry
    after the lease executes again (pass the key downstream to close it)."""

    async def main() -> None:
        proxy = Proxy(target_port(backend))
        await proxy.start()
        app = App(delay=0.3)
        store = proxied_store(backend, proxy.port, lease=0.6)
        mw = idempotency.IdempotencyMiddleware(app, store)
        try:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(mw), base_url="http://t"
            ) as c:
                pending = asyncio.create_task(c.post("/pay", headers={"Idempotency-Key": "k"}))
                await app.started.wait()
                await proxy.cut()
                r = await pending
                assert (r.status_code, r.content) == (201, b"run 1")
                await proxy.start()
                again = await c.post("/pay", headers={"Idempotency-Key": "k"})
                assert (again.status_code, again.content) == (201, b"run 2")
                assert app.runs == ["k", "k"]
                # from then on the key is stored and replays
                assert (await c.post("/pay", headers={"Idempotency-Key": "k"})).content == (
                    b"run 2"
                )
        finally:
            await store.aclose()
            await proxy.close()

    with caplog.at_level(logging.ERROR, "tether.idempotency"):
        asyncio.run(main())
    assert "storing the result failed" in caplog.text
