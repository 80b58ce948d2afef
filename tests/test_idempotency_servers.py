"""Real uvicorn servers in subprocesses, sharing one store: no double charge, ever.

- 100 concurrent duplicate POSTs (one Idempotency-Key) to one server, and spread over
  four server processes: exactly one charge, 100 identical responses, on each store;
- a server SIGKILLed mid-charge: a retry to another process waits for the lease to
  lapse, executes once, and the key then replays;
- the store unreachable: 503 and nothing charged.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.idem_support import BACKENDS, Backend, ledger_count, open_backend

pytestmark = pytest.mark.slow

APP = Path(__file__).resolve().parent / "idem_app.py"
ROOT = APP.parent.parent


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from open_backend(request.param, tmp_path)


class Servers:
    """Payment server processes; every one is stopped at the end of the test."""

    def __init__(self, ledger: Path) -> None:
        self.ledger = ledger
        self.procs: list[subprocess.Popen[str]] = []
        self.ports: list[int] = []

    def start(self, spec: str, *, n: int = 1, delay: float = 0.2, lease: float = 60) -> list[int]:
        new = []
        for _ in range(n):
            p = subprocess.Popen(
                [
                    sys.executable,
                    str(APP),
                    "--store",
                    spec,
                    "--ledger",
                    str(self.ledger),
                    "--delay",
                    str(delay),
                    "--lease",
                    str(lease),
                ],
                stdout=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            )
            self.procs.append(p)
            new.append(p)
        ports = []
        for p in new:
            assert p.stdout is not None
            line = p.stdout.readline()
            assert line.startswith("port "), f"server did not start: {line!r}"
            ports.append(int(line.split()[1]))
        self.ports += ports
        for port in ports:  # wait until each accepts
            end = time.monotonic() + 20
            while True:
                try:
                    httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
                    break
                except httpx.TransportError:
                    if time.monotonic() > end:
                        raise
                    time.sleep(0.05)
        return ports

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
            if p.stdout is not None:
                p.stdout.close()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    s = Servers(tmp_path / "ledger.txt")
    try:
        yield s
    finally:
        s.stop()


async def storm(ports: list[int], key: str, n: int = 100) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(limits=limits, timeout=60) as c:
        return await asyncio.gather(
            *[
                c.post(
                    f"http://127.0.0.1:{ports[i % len(ports)]}/charges",
                    content=b"amount=500&currency=EUR",
                    headers={"Idempotency-Key": key},
                )
                for i in range(n)
            ]
        )


def identical(rs: list[httpx.Response]) -> set[tuple[int, tuple[tuple[bytes, bytes], ...], bytes]]:
    return {(r.status_code, tuple(r.headers.raw), r.content) for r in rs}


@pytest.mark.parametrize("processes", [1, 4])
def test_100_duplicates_charge_once(backend: Backend, servers: Servers, processes: int) -> None:
    ports = servers.start(backend.spec(), n=processes)
    rs = asyncio.run(storm(ports, "order-42"))
    assert len(rs) == 100
    distinct = identical(rs)
    assert len(distinct) == 1, distinct
    status, _, body = distinct.pop()
    assert status == 201, body
    assert ledger_count(servers.ledger, "order-42") == 1
    # and a retry much later still replays, from any process
    again = asyncio.run(storm(ports, "order-42", n=len(ports)))
    assert identical(again) == identical(rs)
    assert ledger_count(servers.ledger, "order-42") == 1


def test_killed_mid_charge_the_retry_executes_once(backend: Backend, servers: Servers) -> None:
    (slow,) = servers.start(backend.spec(), delay=30, lease=1.0)
    (fast,) = servers.start(backend.spec(), delay=0.2, lease=1.0)
    victim = servers.procs[0]

    async def first() -> None:
        async with httpx.AsyncClient(timeout=60) as c:
            with pytest.raises(httpx.TransportError):
                await c.post(
                    f"http://127.0.0.1:{slow}/charges",
                    content=b"amount=500&currency=EUR",
                    headers={"Idempotency-Key": "order-9"},
                )

    async def scenario() -> tuple[httpx.Response, float]:
        t = asyncio.create_task(first())
        end = time.monotonic() + 20
        while "start order-9" not in _read(servers.ledger):
            assert time.monotonic() < end, "the first request never started"
            await asyncio.sleep(0.01)
        os.kill(victim.pid, signal.SIGKILL)  # mid-charge
        await t
        t0 = time.monotonic()
        async with httpx.AsyncClient(timeout=60) as c:
            r = await c.post(
                f"http://127.0.0.1:{fast}/charges",
                content=b"amount=500&currency=EUR",
                headers={"Idempotency-Key": "order-9"},
            )
        return r, time.monotonic() - t0

    r, waited = asyncio.run(scenario())
    assert r.status_code == 201
    assert r.headers["x-pid"] == str(servers.procs[1].pid)
    assert waited < 10  # the lease (1 s) lapsed and the retry ran; nothing stuck
    text = _read(servers.ledger)
    assert text.count("start order-9") == 2
    assert ledger_count(servers.ledger, "order-9") == 1
    # a further retry replays what the survivor answered
    again = asyncio.run(storm([fast], "order-9", n=3))
    assert identical(again) == identical([r])
    assert ledger_count(servers.ledger, "order-9") == 1


def test_store_unreachable_is_503_and_nothing_charged(backend: Backend, servers: Servers) -> None:
    if backend.kind == "sqlite":
        spec = f"sqlite|{backend.path}/no/such/dir.db"
    elif backend.kind == "postgres":
        from tests.idem_support import dead_port

        spec = f"postgres|{backend.table}|host=127.0.0.1 port={dead_port()} dbname=x"
    else:
        from tests.idem_support import dead_port

        spec = f"redis|{backend.prefix}|redis://127.0.0.1:{dead_port()}/0"
    ports = servers.start(spec)
    rs = asyncio.run(storm(ports, "order-1", n=5))
    assert {r.status_code for r in rs} == {503}
    assert all(r.headers["retry-after"] == "1" for r in rs)
    assert _read(servers.ledger) == ""


def _read(p: Path) -> str:
    return p.read_text() if p.exists() else ""
