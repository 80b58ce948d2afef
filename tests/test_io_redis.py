"""tether.integrations.redis against the real Redis: BLPOP and XREADGROUP BLOCK.

The server's own view (``CLIENT LIST`` from a second connection, by client name) shows
that a blocked command no longer blocks once the context ended.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import tether
from conftest import require_service
from tether import _clock

redis = pytest.importorskip("redis")
import redis.asyncio as aredis  # noqa: E402

from tether.integrations import redis as tredis  # noqa: E402

HOST, PORT = "127.0.0.1", 6379
BUDGET = 0.1


@pytest.fixture(autouse=True)
def _redis() -> None:
    require_service(HOST, PORT, "Redis")


@pytest.fixture
def name() -> str:
    return f"tether-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def monitor() -> Iterator[Any]:
    m = redis.Redis(host=HOST, port=PORT)
    try:
        yield m
    finally:
        m.close()


@pytest.fixture
def client(name: str) -> Iterator[Any]:
    c = redis.Redis(host=HOST, port=PORT, client_name=name, socket_timeout=30)
    try:
        yield c
    finally:
        c.delete(f"{name}:list", f"{name}:stream")
        c.close()


def blocked(monitor: Any, name: str) -> list[dict[str, Any]]:
    """The connections named ``name`` that the server holds blocked."""
    return [c for c in monitor.client_list() if c.get("name") == name and "b" in c.get("flags", "")]


def wait_unblocked(monitor: Any, name: str, timeout: float = 2.0) -> float:
    end = time.monotonic() + timeout
    while blocked(monitor, name):
        if time.monotonic() > end:
            pytest.fail(f"{name} is still blocked on the server")
        time.sleep(0.002)
    return time.monotonic()


class Counting(redis.Connection):
    sent = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).sent += 1
        super().send_packed_command(command, check_health)


def make_group(c: Any, stream: str) -> None:
    c.xgroup_create(stream, "g", id="$", mkstream=True)


# -- sync -------------------------------------------------------------------------------


@pytest.mark.realtime
def test_blpop_forever_ends_at_the_deadline_on_the_server(client, monitor, name):
    with tether.with_timeout(tether.background(), BUDGET) as ctx:
        with pytest.raises(tether.DeadlineExceeded), tredis.bind(ctx, client) as r:
            r.blpop([f"{name}:list"], timeout=0)
        now = time.monotonic()
        lag = now - ctx.deadline()  # type: ignore[operator]
    assert 0 <= lag < 1.0, lag
    assert blocked(monitor, name) == []  # the server ended the wait itself
    # the connection went back to the pool, usable
    assert client.connection_pool._created_connections == 1
    assert client.rpush(f"{name}:list", "x") == 1
    assert client.blpop([f"{name}:list"], timeout=1) == (f"{name}:list".encode(), b"x")


@pytest.mark.realtime
def test_xreadgroup_block_forever_ends_at_the_deadline(client, monitor, name):
    stream = f"{name}:stream"
    make_group(client, stream)
    with tether.with_timeout(tether.background(), BUDGET) as ctx:
        with pytest.raises(tether.DeadlineExceeded), tredis.bind(ctx, client) as r:
            r.xreadgroup("g", "c1", {stream: ">"}, count=1, block=0)
        lag = time.monotonic() - ctx.deadline()  # type: ignore[operator]
    assert 0 <= lag < 1.0, lag
    assert blocked(monitor, name) == []
    client.xadd(stream, {"k": "v"})
    got = client.xreadgroup("g", "c1", {stream: ">"}, count=1, block=1000)
    assert got
    assert got[0][1][0][1] == {b"k": b"v"}


@pytest.mark.realtime
def test_cancel_cuts_a_blocked_blpop_and_the_server_drops_it(client, monitor, name):
    ctx, cancel = tether.with_cancel(tether.background())
    result: dict[str, BaseException] = {}

    def worker() -> None:
        try:
            with tredis.bind(ctx, client) as r:
                r.blpop([f"{name}:list"], timeout=0)
        except BaseException as e:
            result["e"] = e

    t = threading.Thread(target=worker)
    t.start()
    end = time.monotonic() + 5
    while not blocked(monitor, name):
        assert time.monotonic() < end, "BLPOP never blocked"
        time.sleep(0.002)
    t0 = time.monotonic()
    cancel(ValueError("shutting down"))
    t.join(5)
    unblocked = wait_unblocked(monitor, name)
    assert isinstance(result["e"], tether.Canceled)
    assert isinstance(result["e"].__cause__, redis.ConnectionError)
    assert unblocked - t0 < 1.0
    assert client.ping()  # a fresh connection from the pool


@pytest.mark.realtime
def test_cancel_cuts_a_blocked_xreadgroup(client, monitor, name):
    stream = f"{name}:stream"
    make_group(client, stream)
    ctx, cancel = tether.with_cancel(tether.background())
    timer = threading.Timer(0.1, cancel)
    timer.start()
    with pytest.raises(tether.Canceled), tredis.bind(ctx, client) as r:
        r.xreadgroup("g", "c1", {stream: ">"}, block=0)
    timer.join()
    wait_unblocked(monitor, name)
    assert client.xlen(stream) == 0


def test_ended_context_makes_no_round_trip(name):
    Counting.sent = 0
    pool = redis.ConnectionPool(host=HOST, port=PORT, connection_class=Counting)
    client = redis.Redis(connection_pool=pool)
    try:
        ctx, cancel = tether.with_cancel(tether.background())
        with tredis.bind(ctx, client) as r:
            assert r.ping()
            sent = Counting.sent
            assert sent >= 1  # the counter counts
            cancel()
            with pytest.raises(tether.Canceled):
                r.get(f"{name}:k")
        assert Counting.sent == sent

        def body() -> None:
            with tredis.bind(ctx, client) as r:
                r.get(f"{name}:k")

        with pytest.raises(tether.Canceled):
            body()
        assert Counting.sent == sent
    finally:
        client.close()
        pool.disconnect()


def test_passed_deadline_raises_before_sending(client, monkeypatch):
    with tether.with_timeout(tether.background(), 60) as ctx, tredis.bind(ctx, client) as r:
        real = _clock.now
        monkeypatch.setattr(_clock, "now", lambda: real() + 120)
        with pytest.raises(tether.DeadlineExceeded):
            r.ping()
        monkeypatch.setattr(_clock, "now", real)
        assert r.ping()


def test_live_context_commands_are_unchanged(client, name):
    key = f"{name}:list"
    with tether.with_timeout(tether.background(), 60) as ctx, tredis.bind(ctx, client) as r:
        assert r is not client
        assert r.connection_pool is client.connection_pool
        # a timeout within the budget is the caller's: None, not an error
        assert r.blpop([key], timeout=0.05) is None
        r.rpush(key, "a", "b")
        assert r.blpop([key], timeout=0) == (key.encode(), b"a")
        assert r.lrange(key, 0, -1) == [b"b"]
        conn = client.connection_pool.get_connection()
        try:
            assert conn._sock.gettimeout() == 30  # restored after each command
        finally:
            client.connection_pool.release(conn)
    assert client.execute_command.__self__ is client  # the client itself is untouched
    # dropping the view closes nothing of the client's (redis.Redis.__del__ closes the
    # pool of a client that made its own)
    assert client.auto_close_connection_pool
    conn = client.connection_pool.get_connection()
    client.connection_pool.release(conn)
    del r
    gc.collect()
    assert conn._sock is not None
    assert client.ping()


def test_a_single_connection_client_keeps_its_connection(name):
    c = redis.Redis(host=HOST, port=PORT, single_connection_client=True)
    try:
        own = c.connection
        with tether.with_timeout(tether.background(), 60) as ctx, tredis.bind(ctx, c) as r:
            assert r.ping()
            assert r.blpop([f"{name}:list"], timeout=0.01) is None
        del r
        gc.collect()
        assert c.connection is own
        assert own._sock is not None
        ctx, cancel = tether.with_cancel(tether.background())
        threading.Timer(0.05, cancel).start()
        with pytest.raises(tether.Canceled), tredis.bind(ctx, c) as r2:
            r2.blpop([f"{name}:list"], timeout=0)
        assert c.ping()  # the single connection reconnects
    finally:
        c.close()


def test_unrelated_errors_pass_through(client, name):
    client.set(f"{name}:list", "not a list")
    with tether.with_timeout(tether.background(), 60) as ctx, tredis.bind(ctx, client) as r:
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            r.blpop([f"{name}:list"], timeout=0)
        assert r.ping()


def test_server_gone_raises_the_drivers_error():
    # nothing listens on this port: a connection error that the context did not cause
    import socket

    from redis.backoff import NoBackoff
    from redis.retry import Retry

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    # redis-py connects inside its pool, under the client's own retry policy (3 tries
    # with backoff by default in redis-py 6+): a client that must fail fast says so.
    c = redis.Redis(
        host="127.0.0.1", port=port, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
    )
    try:
        with tether.with_timeout(tether.background(), 60) as ctx, tredis.bind(ctx, c) as r:
            with pytest.raises(redis.ConnectionError):
                r.ping()
            with pytest.raises(redis.ConnectionError):
                r.get("k")
        for x in c.connection_pool._available_connections:
            assert x.retry is not tredis._NO_RETRY  # the client's own policy is back
    finally:
        c.close()


def test_clamp_table():
    cl = tredis._clamp
    assert cl(("BLPOP", "a", "b", 0), 0.1234) == (("BLPOP", "a", "b", "0.124"), True)
    assert cl(("BLPOP", "a", 5), 0.5) == (("BLPOP", "a", "0.500"), True)
    assert cl(("BLPOP", "a", 0.2), 0.5) == (("BLPOP", "a", 0.2), False)
    assert cl(("BLMPOP", 0, 1, "k", "LEFT"), 0.25) == (("BLMPOP", "0.250", 1, "k", "LEFT"), True)
    assert cl(("XREAD", "BLOCK", 0, "STREAMS", "s", "$"), 0.1) == (
        ("XREAD", "BLOCK", 100, "STREAMS", "s", "$"),
        True,
    )
    assert (
        cl(("XREADGROUP", "GROUP", "g", "c", "COUNT", 1, "BLOCK", 50, "STREAMS", "s", ">"), 1)[1]
        is False
    )
    assert cl(("XREAD", "STREAMS", "BLOCK", "0"), 0.1)[1] is False  # a key named BLOCK
    assert cl(("GET", "k"), 0.1) == (("GET", "k"), False)


def test_misuse(client):
    with pytest.raises(TypeError, match=r"^tether: parent context is None"):
        tredis.bind(None, client)  # type: ignore[arg-type]

    async def wrong() -> None:
        async with tredis.bind(tether.background(), client):
            pass

    with pytest.raises(TypeError, match=r"^tether: `async with bind\(ctx, aclient\)`"):
        asyncio.run(wrong())


# -- async ------------------------------------------------------------------------------


@pytest.mark.realtime
def test_async_blpop_interrupted_at_the_deadline(monitor, name):
    async def main() -> float:
        c = aredis.Redis(host=HOST, port=PORT, client_name=name)
        try:
            with tether.with_timeout(tether.background(), BUDGET) as ctx:

                async def body() -> None:
                    async with tredis.bind(ctx, c) as r:
                        assert r is c
                        await r.blpop([f"{name}:list"], timeout=0)

                with pytest.raises(tether.DeadlineExceeded) as ei:
                    await body()
                lag = time.monotonic() - ctx.deadline()  # type: ignore[operator]
            assert isinstance(ei.value.__cause__, asyncio.CancelledError)
            assert await c.ping()
            return lag
        finally:
            await c.aclose()

    lag = asyncio.run(main())
    assert 0 <= lag < 1.0
    wait_unblocked(monitor, name)


@pytest.mark.realtime
def test_async_xreadgroup_cancelled_from_another_thread(client, monitor, name):
    stream = f"{name}:stream"
    make_group(client, stream)

    async def main() -> None:
        c = aredis.Redis(host=HOST, port=PORT, client_name=name)
        try:
            ctx, cancel = tether.with_cancel(tether.background())
            timer = threading.Timer(0.1, cancel)
            timer.start()
            with pytest.raises(tether.Canceled):
                async with tredis.bind(ctx, c) as r:
                    await r.xreadgroup("g", "c1", {stream: ">"}, block=0)
            timer.join()
            await c.xadd(stream, {"k": "v"})
            got = await c.xreadgroup("g", "c1", {stream: ">"}, block=1000)
            assert got
        finally:
            await c.aclose()

    asyncio.run(main())
    wait_unblocked(monitor, name)


def test_async_ended_context_raises_on_entry_and_other_cancels_pass():
    async def main() -> None:
        c = aredis.Redis(host=HOST, port=PORT)
        try:
            ctx, cancel = tether.with_cancel(tether.background())
            cancel()
            with pytest.raises(tether.Canceled):
                async with tredis.bind(ctx, c):
                    pytest.fail("the block ran")
            with tether.with_timeout(tether.background(), 60) as live:

                async def blocked_forever() -> None:
                    async with tredis.bind(live, c) as r:
                        await r.blpop([f"tether-test-{uuid.uuid4().hex}"], timeout=0)

                task = asyncio.create_task(blocked_forever())
                await asyncio.sleep(0.05)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            with pytest.raises(TypeError, match=r"^tether: `with bind\(ctx, client\)`"):
                with tredis.bind(tether.background(), c):  # type: ignore[arg-type]
                    pass
        finally:
            await c.aclose()

    asyncio.run(main())


def test_async_the_task_is_not_interrupted_after_the_block(name):
    async def main() -> None:
        c = aredis.Redis(host=HOST, port=PORT)
        try:
            ctx, cancel = tether.with_cancel(tether.background())
            async with tredis.bind(ctx, c) as r:
                assert await r.ping()
            cancel()
            await asyncio.sleep(0.05)
            assert await c.blpop([f"{name}:list"], timeout=0.05) is None
        finally:
            await c.aclose()

    asyncio.run(main())


class StalledRedis:
    """A RESP server on a free loopback port that answers PING, +OK to the handshake,
    and never answers GET: a server that stopped responding."""

    def __init__(self) -> None:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.gets = 0
        self._conns: list[Any] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="test-stalled-redis")
        self._thread.start()

    def _serve(self) -> None:
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ)
        buf: dict[Any, bytes] = {}
        while not self._stop.is_set():
            for key, _ in sel.select(0.02):
                s = key.fileobj
                if s is self.sock:
                    c, _ = self.sock.accept()
                    self._conns.append(c)
                    buf[c] = b""
                    sel.register(c, selectors.EVENT_READ)
                    continue
                data = s.recv(65536)  # type: ignore[union-attr]
                if not data:
                    sel.unregister(s)
                    continue
                buf[s] += data
                while True:  # one RESP array per command: *N\r\n($len\r\narg\r\n)*N
                    b = buf[s]
                    if not b.startswith(b"*") or b"\r\n" not in b:
                        break
                    head, rest = b.split(b"\r\n", 1)
                    args = []
                    for _ in range(int(head[1:])):
                        if b"\r\n" not in rest:
                            break
                        ln, rest = rest.split(b"\r\n", 1)
                        n = int(ln[1:])
                        if len(rest) < n + 2:
                            break
                        args.append(rest[:n])
                        rest = rest[n + 2 :]
                    else:
                        buf[s] = rest
                        if args[0].upper() == b"GET":
                            self.gets += 1  # and never answer
                        elif args[0].upper() == b"PING":
                            s.sendall(b"+PONG\r\n")  # type: ignore[union-attr]
                        else:
                            s.sendall(b"+OK\r\n")  # type: ignore[union-attr]
                        continue
                    break
        sel.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for c in self._conns:
            c.close()
        self.sock.close()


@pytest.fixture
def stalled() -> Iterator[StalledRedis]:
    s = StalledRedis()
    try:
        yield s
    finally:
        s.close()


@pytest.mark.realtime
def test_a_stalled_server_costs_at_most_the_budget(stalled):
    c = redis.Redis(host="127.0.0.1", port=stalled.port, protocol=2)  # no socket timeout
    try:
        assert c.ping()  # connected: the handshake is answered
        with tether.with_timeout(tether.background(), BUDGET) as ctx:
            t0 = time.monotonic()
            with pytest.raises(tether.DeadlineExceeded) as ei, tredis.bind(ctx, c) as r:
                r.get("k")
            took = time.monotonic() - t0
        assert stalled.gets == 1
        assert isinstance(ei.value.__cause__, redis.RedisError)
        assert took < 1.0, took
        assert c.ping()  # the stalled connection was discarded, a new one made
    finally:
        c.close()


@pytest.mark.realtime
def test_a_cancel_cuts_a_command_to_a_stalled_server(stalled):
    c = redis.Redis(host="127.0.0.1", port=stalled.port, protocol=2)
    try:
        assert c.ping()
        ctx, cancel = tether.with_cancel(tether.background())
        timer = threading.Timer(0.05, cancel)
        timer.start()
        with pytest.raises(tether.Canceled) as ei, tredis.bind(ctx, c) as r:
            r.get("k")
        timer.join()
        assert isinstance(ei.value.__cause__, redis.ConnectionError)
        assert c.ping()
    finally:
        c.close()
