"""tether.lifecycle.Consumer on a real Redis (127.0.0.1:6379): consumer groups, acks,
retry then dead-letter, per-message deadlines, concurrency, XAUTOCLAIM recovery, stop."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

import pytest

import tether
from lifehelp import run_consumer_until
from tether import lifecycle
from tether.lifecycle import Consumer, Message, RetryPolicy

redis_asyncio = pytest.importorskip("redis.asyncio")
from tests.conftest import require_service  # noqa: E402

from tether.integrations.redis_streams import RedisStreamSource  # noqa: E402

URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(autouse=True)
def _redis_up() -> None:
    require_service("127.0.0.1", 6379, "Redis")


@pytest.fixture
def names():
    """A fresh stream, group and dead-letter stream; deleted after the test."""
    tag = uuid.uuid4().hex[:10]
    n = {"stream": f"t.{tag}", "group": "g", "dead": f"t.{tag}.dead"}
    yield n

    async def drop() -> None:
        r = redis_asyncio.Redis.from_url(URL)
        try:
            await r.delete(n["stream"], n["dead"])
        finally:
            await r.aclose()

    asyncio.run(drop())


async def produce(stream: str, n: int, start: int = 0) -> list[str]:
    r = redis_asyncio.Redis.from_url(URL)
    try:
        p = r.pipeline(transaction=False)
        for i in range(start, start + n):
            p.xadd(stream, {"n": str(i)})
        return [x.decode() for x in await p.execute()]
    finally:
        await r.aclose()


async def pending(stream: str, group: str) -> list[str]:
    r = redis_asyncio.Redis.from_url(URL)
    try:
        rows = await r.xpending_range(stream, group, min="-", max="+", count=10_000)
        return [p["message_id"].decode() for p in rows]
    finally:
        await r.aclose()


def source(names: dict[str, str], **kw: Any) -> RedisStreamSource:
    kw.setdefault("block", 0.1)
    return RedisStreamSource(URL, names["stream"], names["group"], "c1", **kw)


def test_every_message_is_handled_under_its_own_context_and_acked(names):
    seen: dict[str, tuple[str | None, str | None, float | None]] = {}

    async def handler(ctx: tether.Context, msg: Message) -> None:
        seen[msg.id] = (
            ctx.value(tether.REQUEST_ID),
            ctx.value(lifecycle.WORKER),
            ctx.remaining(),
        )
        assert tether.current() is ctx

    async def main() -> None:
        ids = await produce(names["stream"], 50)
        c = Consumer(source(names), handler, message_timeout=7)
        stats = await run_consumer_until(c, lambda: c.stats().acked == 50)
        assert sorted(seen) == sorted(ids)
        for mid, (rid, worker, left) in seen.items():
            assert rid == mid
            assert worker == "consumer-redis:" + names["stream"] + "/g"
            assert left is not None
            assert 0 < left <= 7
        assert stats.acked == 50
        assert stats.state == "stopped"
        assert await pending(names["stream"], "g") == []

    asyncio.run(main())


def test_a_plain_function_handler_runs_in_a_thread_with_its_context(names):
    threads: set[str] = set()

    def handler(ctx: tether.Context, msg: Message) -> None:
        threads.add(threading.current_thread().name)
        assert ctx.value(tether.REQUEST_ID) == msg.id
        ctx.check()

    async def main() -> None:
        await produce(names["stream"], 5)
        c = Consumer(source(names), handler)
        stats = await run_consumer_until(c, lambda: c.stats().acked == 5)
        assert stats.acked == 5
        assert threading.main_thread().name not in threads

    asyncio.run(main())


def test_a_failing_handler_is_retried_with_backoff_then_acked(names):
    calls: dict[str, list[float]] = {}

    async def handler(ctx: tether.Context, msg: Message) -> None:
        calls.setdefault(msg.id, []).append(time.monotonic())
        if len(calls[msg.id]) < 3:
            raise ValueError("flaky")

    async def main() -> None:
        await produce(names["stream"], 2)
        policy = RetryPolicy(attempts=3, backoff=0.05, multiplier=2)
        c = Consumer(source(names, dead_letter=names["dead"]), handler, retry=policy)
        stats = await run_consumer_until(c, lambda: c.stats().acked == 2)
        assert stats.failures == 4
        assert stats.retries == 4
        assert stats.dead_lettered == 0
        for times in calls.values():
            assert len(times) == 3
            assert times[1] - times[0] >= 0.05 * 0.9
            assert times[2] - times[1] >= 0.10 * 0.9
        assert await pending(names["stream"], "g") == []

    asyncio.run(main())


def test_retries_used_up_go_to_the_dead_letter_stream_and_are_acked(names):
    async def handler(ctx: tether.Context, msg: Message) -> None:
        if msg.data[b"n"] == b"1":
            raise ValueError("poison")

    async def main() -> None:
        ids = await produce(names["stream"], 3)
        policy = RetryPolicy(attempts=2, backoff=0.01)
        c = Consumer(source(names, dead_letter=names["dead"]), handler, retry=policy)
        stats = await run_consumer_until(c, lambda: c.stats().acked + c.stats().dead_lettered == 3)
        assert (stats.acked, stats.dead_lettered, stats.failures) == (2, 1, 2)
        r = redis_asyncio.Redis.from_url(URL)
        try:
            dead = await r.xrange(names["dead"])
        finally:
            await r.aclose()
        assert len(dead) == 1
        fields = dead[0][1]
        assert fields[b"n"] == b"1"
        assert fields[b"tether.id"].decode() == ids[1]
        assert b"poison" in fields[b"tether.error"]
        assert fields[b"tether.stream"].decode() == names["stream"]
        assert await pending(names["stream"], "g") == []

    asyncio.run(main())


def test_without_a_dead_letter_stream_a_failed_message_stays_pending(names):
    async def handler(ctx: tether.Context, msg: Message) -> None:
        raise ValueError("always")

    async def main() -> None:
        ids = await produce(names["stream"], 1)
        c = Consumer(source(names), handler, retry=RetryPolicy(attempts=2, backoff=0.01))
        stats = await run_consumer_until(c, lambda: c.stats().released == 1)
        assert (stats.acked, stats.dead_lettered, stats.released) == (0, 0, 1)
        assert await pending(names["stream"], "g") == ids

    asyncio.run(main())


def test_an_error_retry_on_rejects_is_dead_lettered_at_once(names):
    calls: list[str] = []

    async def handler(ctx: tether.Context, msg: Message) -> None:
        calls.append(msg.id)
        raise KeyError("bad payload")

    async def main() -> None:
        await produce(names["stream"], 1)
        policy = RetryPolicy(attempts=5, retry_on=lambda e: not isinstance(e, KeyError))
        c = Consumer(source(names, dead_letter=names["dead"]), handler, retry=policy)
        stats = await run_consumer_until(c, lambda: c.stats().dead_lettered == 1)
        assert len(calls) == 1
        assert stats.retries == 0

    asyncio.run(main())


def test_a_handler_that_outlives_message_timeout_is_interrupted_and_retried(names):
    errors: list[BaseException | None] = []

    async def handler(ctx: tether.Context, msg: Message) -> None:
        try:
            await asyncio.sleep(5)  # ignores ctx: the consumer's scope interrupts it
        finally:
            errors.append(ctx.err())

    async def main() -> None:
        await produce(names["stream"], 1)
        policy = RetryPolicy(attempts=2, backoff=0.01)
        c = Consumer(
            source(names, dead_letter=names["dead"]),
            handler,
            message_timeout=0.1,
            retry=policy,
        )
        t0 = time.monotonic()
        stats = await run_consumer_until(c, lambda: c.stats().dead_lettered == 1)
        assert time.monotonic() - t0 < 4
        assert (stats.failures, stats.timed_out) == (2, 2)
        assert all(isinstance(e, tether.DeadlineExceeded) for e in errors)
        assert len(errors) == 2

    asyncio.run(main())


def test_concurrency_runs_that_many_handlers_at_once(names):
    running = 0
    peak = 0

    async def handler(ctx: tether.Context, msg: Message) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1

    async def main() -> None:
        await produce(names["stream"], 40)
        c = Consumer(source(names), handler, concurrency=4)
        stats = await run_consumer_until(c, lambda: c.stats().acked == 40)
        assert peak == 4
        assert stats.acked == 40
        assert await pending(names["stream"], "g") == []

    asyncio.run(main())


def test_xautoclaim_recovers_what_a_dead_consumer_left_pending(names):
    handled: list[tuple[str, int | None]] = []

    async def handler(ctx: tether.Context, msg: Message) -> None:
        handled.append((msg.id, msg.deliveries))

    async def main() -> None:
        ids = await produce(names["stream"], 5)
        r = redis_asyncio.Redis.from_url(URL)
        try:  # a consumer that reads and dies before acking
            await r.xgroup_create(names["stream"], "g", id="0", mkstream=True)
            got = await r.xreadgroup("g", "dead-one", {names["stream"]: ">"}, count=3)
            assert len(got[0][1]) == 3
        finally:
            await r.aclose()
        src = RedisStreamSource(
            URL, names["stream"], "g", "survivor", block=0.05, claim_idle=0.3, claim_every=0.05
        )
        c = Consumer(src, handler)
        await run_consumer_until(c, lambda: len(handled) == 5)
        assert sorted(i for i, _ in handled) == sorted(ids)
        claimed = {i: d for i, d in handled if i in ids[:3]}
        assert set(claimed.values()) == {2}  # delivered to the dead one, then to us
        assert await pending(names["stream"], "g") == []

    asyncio.run(main())


def test_a_restart_under_the_same_name_reads_its_own_pending_entries_first(names):
    handled: list[str] = []

    async def handler(ctx: tether.Context, msg: Message) -> None:
        handled.append(msg.id)

    async def main() -> None:
        ids = await produce(names["stream"], 4)
        r = redis_asyncio.Redis.from_url(URL)
        try:
            await r.xgroup_create(names["stream"], "g", id="0", mkstream=True)
            await r.xreadgroup("g", "c1", {names["stream"]: ">"}, count=2)
        finally:
            await r.aclose()
        c = Consumer(source(names, claim_idle=None), handler)
        await run_consumer_until(c, lambda: len(handled) == 4)
        assert handled[:2] == ids[:2]
        assert sorted(handled) == sorted(ids)

    asyncio.run(main())


def test_a_message_delivered_too_often_is_dead_lettered_without_a_call(names):
    handled: list[str] = []

    async def handler(ctx: tether.Context, msg: Message) -> None:
        handled.append(msg.id)

    async def main() -> None:
        ids = await produce(names["stream"], 1)
        r = redis_asyncio.Redis.from_url(URL)
        try:  # three consumers crashed on it
            await r.xgroup_create(names["stream"], "g", id="0", mkstream=True)
            await r.xreadgroup("g", "c1", {names["stream"]: ">"}, count=1)
            for _ in range(2):
                await r.xclaim(names["stream"], "g", "c1", 0, ids)
        finally:
            await r.aclose()
        policy = RetryPolicy(max_deliveries=3)
        c = Consumer(source(names, dead_letter=names["dead"]), handler, retry=policy)
        stats = await run_consumer_until(c, lambda: c.stats().dead_lettered == 1)
        assert handled == []
        assert stats.dead_lettered == 1

    asyncio.run(main())


def test_stop_lets_the_message_in_hand_finish_and_acks_it(names):
    started = asyncio.Event
    finished: list[str] = []

    async def main() -> None:
        ev = started()

        async def handler(ctx: tether.Context, msg: Message) -> None:
            ev.set()
            await asyncio.sleep(0.3)  # longer than it takes to cancel the consumer
            finished.append(msg.id)

        ids = await produce(names["stream"], 1)
        c = Consumer(source(names), handler, grace=5)
        stats = await run_consumer_until(c, ev.is_set)
        assert finished == ids
        assert stats.acked == 1
        assert await pending(names["stream"], "g") == []

    asyncio.run(main())


def test_a_handler_still_running_after_the_grace_is_cancelled_and_not_acked(names):
    seen: list[BaseException | None] = []

    async def main() -> None:
        ev = asyncio.Event()

        async def handler(ctx: tether.Context, msg: Message) -> None:
            ev.set()
            try:
                await ctx.done()
            finally:
                seen.append(tether.cause(ctx))

        ids = await produce(names["stream"], 1)
        c = Consumer(source(names), handler, grace=0.1)
        stats = await run_consumer_until(c, ev.is_set)
        assert (stats.acked, stats.released) == (0, 1)
        assert isinstance(seen[0], lifecycle.DrainTimeout)
        assert await pending(names["stream"], "g") == ids

    asyncio.run(main())


def test_buffered_messages_are_released_on_stop_not_acked(names):
    async def main() -> None:
        ev = asyncio.Event()
        done: list[str] = []

        async def handler(ctx: tether.Context, msg: Message) -> None:
            ev.set()
            await asyncio.sleep(0.05)
            done.append(msg.id)

        ids = await produce(names["stream"], 10)
        c = Consumer(source(names), handler, prefetch=10)
        stats = await run_consumer_until(c, ev.is_set)
        assert stats.fetched == 10
        assert stats.acked == len(done) >= 1
        assert stats.released == 10 - len(done)
        assert sorted(await pending(names["stream"], "g")) == sorted(set(ids) - set(done))

    asyncio.run(main())


def test_under_a_supervisor_shutdown_drains_and_exits_zero(names):
    handled: list[str] = []

    async def handler(ctx: tether.Context, msg: Message) -> None:
        handled.append(msg.id)

    async def main() -> int:
        await produce(names["stream"], 20)
        c = Consumer(source(names), handler)
        sup = lifecycle.Supervisor(signals=(), drain_timeout=5)
        sup.add("orders", c.run)

        async def stop_when_done(ctx: tether.Context) -> None:
            while len(handled) < 20:
                await asyncio.sleep(0.01)
            sup.shutdown()
            await ctx.done()

        sup.add("watch", stop_when_done)
        return await sup.arun()

    assert asyncio.run(main()) == 0
    assert len(handled) == 20


def test_the_redis_server_gone_fails_open_with_its_error():
    async def main() -> None:
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()

        async def handler(ctx: tether.Context, msg: Message) -> None:
            raise AssertionError("never called")

        src = RedisStreamSource(f"redis://127.0.0.1:{port}/0", "s", "g")
        c = Consumer(src, handler)
        with pytest.raises(redis_asyncio.ConnectionError):
            await c.run(tether.background())
        assert c.stats().state == "stopped"

    asyncio.run(main())


def test_an_already_ended_context_opens_nothing_and_returns():
    async def main() -> None:
        async def handler(ctx: tether.Context, msg: Message) -> None:
            raise AssertionError("never called")

        src = RedisStreamSource("redis://127.0.0.1:1/0", "s", "g")  # nothing listens
        ctx, cancel = tether.with_cancel(tether.background())
        cancel()
        stats = await Consumer(src, handler).run(ctx)
        assert stats.fetched == 0

    asyncio.run(main())


def test_misuse_is_reported_with_a_tether_error():
    async def h(ctx: tether.Context, msg: Message) -> None: ...

    src = RedisStreamSource(URL, "s", "g")
    with pytest.raises(TypeError, match=r"^tether: Consumer needs a source"):
        Consumer(object(), h)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^tether: a consumer handler"):
        Consumer(src, 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^tether: concurrency must be >= 1"):
        Consumer(src, h, concurrency=0)
    with pytest.raises(ValueError, match=r"^tether: message_timeout must be positive"):
        Consumer(src, h, message_timeout=0)
    with pytest.raises(TypeError, match=r"^tether: retry must be"):
        Consumer(src, h, retry=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^tether: attempts must be >= 1"):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError, match=r"^tether: multiplier must be >= 1"):
        RetryPolicy(multiplier=0.5)
    with pytest.raises(ValueError, match=r"^tether: jitter must be in"):
        RetryPolicy(jitter=2)
    with pytest.raises(TypeError, match=r"^tether: client must be a redis.asyncio.Redis"):
        RedisStreamSource(object(), "s", "g")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^tether: dead_letter must differ"):
        RedisStreamSource(URL, "s", "g", dead_letter="s")
    c = Consumer(src, h)

    async def twice() -> None:
        ctx, cancel = tether.with_cancel(tether.background())
        cancel()
        await c.run(ctx)
        with pytest.raises(RuntimeError, match=r"^tether: a Consumer runs once"):
            await c.run(ctx)
        with pytest.raises(TypeError, match=r"^tether: run needs a tether.Context"):
            await Consumer(src, h).run(None)  # type: ignore[arg-type]

    asyncio.run(twice())


def test_retry_policy_delays():
    p = RetryPolicy(backoff=0.5, multiplier=2, max_backoff=3)
    assert [p.delay(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 3.0]
    j = RetryPolicy(backoff=1, multiplier=1, jitter=0.5)
    assert all(1 <= j.delay(1) <= 1.5 for _ in range(50))
    with pytest.raises(ValueError, match=r"^tether: failures must be >= 1"):
        p.delay(0)


def test_a_long_handler_is_not_claimed_by_another_consumer(names):
    handled: list[tuple[str, str]] = []

    def handler_for(who: str):
        async def handler(ctx: tether.Context, msg: Message) -> None:
            await asyncio.sleep(3.0)  # 3 x claim_idle: claimable without the heartbeat
            handled.append((who, msg.id))

        return handler

    async def main() -> None:
        ids = await produce(names["stream"], 1)
        kw = {"block": 0.05, "claim_idle": 1.0, "claim_every": 0.05}
        a = Consumer(RedisStreamSource(URL, names["stream"], "g", "a", **kw), handler_for("a"))
        ctx, cancel = tether.with_cancel(tether.background())
        ta = asyncio.ensure_future(a.run(ctx))
        while a.stats().in_flight == 0:
            await asyncio.sleep(0.01)
        b = Consumer(RedisStreamSource(URL, names["stream"], "g", "b", **kw), handler_for("b"))
        tb = asyncio.ensure_future(b.run(ctx))
        while not handled:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
        cancel()
        await asyncio.gather(ta, tb)
        assert handled == [("a", ids[0])]
        assert await pending(names["stream"], "g") == []

    asyncio.run(main())


@pytest.mark.slow
def test_the_server_dying_mid_run_loses_the_ack_not_the_message(tmp_path):
    """A private redis-server, killed while a handler runs: the ack fails and is
    counted, the consumer keeps trying to fetch (logging), and stops cleanly."""
    import shutil
    import socket
    import subprocess

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    args += ["--appendonly", "no", "--dir", str(tmp_path)]
    server = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:

        async def main() -> None:
            for _ in range(200):
                try:
                    socket.create_connection(("127.0.0.1", port), 0.1).close()
                    break
                except OSError:
                    await asyncio.sleep(0.02)
            r = redis_asyncio.Redis.from_url(url)
            await r.xadd("s", {"n": "1"})
            await r.aclose()

            async def handler(ctx: tether.Context, msg: Message) -> None:
                server.kill()
                server.wait()

            c = Consumer(RedisStreamSource(url, "s", "g", "c", block=0.05), handler)
            stats = await run_consumer_until(c, lambda: c.stats().ack_errors == 1, timeout=20)
            assert (stats.acked, stats.ack_errors) == (0, 1)
            assert stats.state == "stopped"

        asyncio.run(main())
    finally:
        if server.poll() is None:
            server.kill()
        server.wait()
