"""tether.idempotency: the middleware's HTTP semantics and run(), on every store.

The app runs in-process behind httpx's ASGI transport (the real-server tests, with
uvicorn processes, are in test_idempotency_servers.py). Every test that names a
``backend`` runs on SQLite, PostgreSQL and Redis.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.idem_support import BACKENDS, Backend, open_backend

import tether
from tether import idempotency
from tether.idempotency._coord import _flights

KEY = idempotency.IDEMPOTENCY_KEY


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from open_backend(request.param, tmp_path)


class Payments:
    """An ASGI payment app: charges a fake processor, counts the charges."""

    def __init__(self, delay: float = 0.05, fail_first: int = 0) -> None:
        self.delay = delay
        self.charges: list[str] = []
        self.calls = 0
        self.fail_first = fail_first
        self.seen_keys: list[Any] = []
        self.seen_state: list[Any] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            m = await receive()
            body += m.get("body", b"")
            if not m.get("more_body"):
                break
        self.calls += 1
        self.seen_keys.append(tether.current().value(KEY))
        st = scope.get("state", {}).get("tether.context")
        self.seen_state.append(None if st is None else st.value(KEY))
        await asyncio.sleep(self.delay)
        if self.calls <= self.fail_first:
            raise RuntimeError("processor unreachable")
        n = len(self.charges) + 1
        self.charges.append(body.decode())
        headers = [
            (b"content-type", b"application/json"),
            (b"set-cookie", b"a=1"),
            (b"set-cookie", b"b=2"),
            (b"x-bytes", bytes(range(0x80, 0x90))),
        ]
        await send({"type": "http.response.start", "status": 201, "headers": headers})
        await send({"type": "http.response.body", "body": b'{"charge": ', "more_body": True})
        await send({"type": "http.response.body", "body": str(n).encode() + b"}\xff"})


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test")


def snapshot(r: httpx.Response) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    return r.status_code, list(r.headers.raw), r.content


def post(c: httpx.AsyncClient, key: str | None, body: bytes = b"amount=5", **kw: Any) -> Any:
    headers = {} if key is None else {"Idempotency-Key": key}
    return c.post("/charges", content=body, headers=headers, **kw)


# -- the HTTP semantics, on every store -------------------------------------------------


def test_duplicates_run_once_and_replay_byte_for_byte(backend: Backend) -> None:
    app = Payments(delay=0.2)

    async def main() -> None:
        store = backend.store()
        try:
            async with client(idempotency.IdempotencyMiddleware(app, store)) as c:
                rs = await asyncio.gather(*[post(c, "k-1") for _ in range(30)])
                later = await post(c, "k-1")
        finally:
            await store.aclose()
        snaps = {repr(snapshot(r)) for r in [*rs, later]}
        assert len(snaps) == 1, snaps
        status, headers, body = snapshot(later)
        assert status == 201
        assert body == b'{"charge": 1}\xff'
        assert headers == [
            (b"content-type", b"application/json"),
            (b"set-cookie", b"a=1"),
            (b"set-cookie", b"b=2"),
            (b"x-bytes", bytes(range(0x80, 0x90))),
        ]

    asyncio.run(main())
    assert app.charges == ["amount=5"]
    assert app.seen_keys == ["k-1"]


def test_missing_key_is_400_and_nothing_runs(backend: Backend) -> None:
    app = Payments()

    async def main() -> None:
        store = backend.store()
        try:
            async with client(idempotency.IdempotencyMiddleware(app, store)) as c:
                r = await post(c, None)
                assert r.status_code == 400
                assert r.headers["content-type"] == "application/problem+json"
                assert "Idempotency-Key" in r.json()["detail"]
                # a malformed key, and two keys, are 400 too
                for bad in ["", "x" * 256, "caf\u00e9"]:
                    r = await c.post(
                        "/charges", headers=[("Idempotency-Key", bad.encode("latin-1"))]
                    )
                    assert r.status_code == 400, bad
                r = await c.post(
                    "/charges", headers=[("Idempotency-Key", "a"), ("Idempotency-Key", "b")]
                )
                assert r.status_code == 400
                assert "exactly one" in r.json()["detail"]
        finally:
            await store.aclose()

    asyncio.run(main())
    assert app.calls == 0


def test_same_key_other_request_is_422(backend: Backend) -> None:
    app = Payments()

    async def main() -> None:
        store = backend.store()
        try:
            async with client(idempotency.IdempotencyMiddleware(app, store)) as c:
                assert (await post(c, "k", b"amount=5")).status_code == 201
                assert (await post(c, "k", b"amount=6")).status_code == 422  # body
                r = await c.post("/refunds", content=b"amount=5", headers={"Idempotency-Key": "k"})
                assert r.status_code == 422  # path
                r = await c.patch("/charges", content=b"amount=5", headers={"Idempotency-Key": "k"})
                assert r.status_code == 422  # method
                r = await c.post(
                    "/charges?x=1", content=b"amount=5", headers={"Idempotency-Key": "k"}
                )
                assert r.status_code == 422  # query string
                assert r.json()["title"] == "Idempotency-Key reused"
                # and the first request still replays
                assert (await post(c, "k", b"amount=5")).content == b'{"charge": 1}\xff'
                # a 422 also while the first one is still running
                slow = asyncio.create_task(post(c, "k2", b"amount=7"))
                await asyncio.sleep(0.02)
                assert (await post(c, "k2", b"amount=8")).status_code == 422
                assert (await slow).status_code == 201
        finally:
            await store.aclose()

    asyncio.run(main())
    assert app.charges == ["amount=5", "amount=7"]


def test_quoted_structured_field_key_is_the_same_key(backend: Backend) -> None:
    app = Payments(delay=0)

    async def main() -> None:
        store = backend.store()
        try:
            async with client(idempotency.IdempotencyMiddleware(app, store)) as c:
                a = await post(c, '"8e03978e-40d5"')
                b = await post(c, "8e03978e-40d5")
                assert snapshot(a) == snapshot(b)
        finally:
            await store.aclose()

    asyncio.run(main())
    assert app.seen_keys == ["8e03978e-40d5"]


def test_handler_raises_releases_the_key_and_a_retry_runs(backend: Backend) -> None:
    app = Payments(delay=0.01, fail_first=1)

    async def main() -> None:
        store = backend.store()
        try:
            async with client(idempotency.IdempotencyMiddleware(app, store)) as c:
                with pytest.raises(RuntimeError, match="processor unreachable"):
                    await post(c, "k")
                r = await post(c, "k")
                assert r.status_code == 201
                assert (await post(c, "k")).content == r.content
        finally:
            await store.aclose()

    asyncio.run(main())
    assert app.calls == 2
    assert app.charges == ["amount=5"]


def test_waiters_of_a_failed_request_retry_once(backend: Backend) -> None:
    """Duplicates waiting on a request whose handler raises: exactly one runs next."""
    app = Payments(delay=0.1, fail_first=1)

    async def main() -> list[int]:
        store = backend.store()
        try:
            async with client(idempotency.IdempotencyMiddleware(app, store)) as c:

                async def one() -> int:
                    try:
                        return (await post(c, "k")).status_code
                    except RuntimeError:
                        return -1

                return await asyncio.gather(*[one() for _ in range(10)])
        finally:
            await store.aclose()

    codes = asyncio.run(main())
    assert sorted(codes) == [-1] + [201] * 9
    assert app.calls == 2
    assert app.charges == ["amount=5"]


def test_a_sent_error_response_is_stored(backend: Backend) -> None:
    calls = 0

    async def declines(scope: Any, receive: Any, send: Any) -> None:
        nonlocal calls
        calls += 1
        await send({"type": "http.response.start", "status": 402, "headers": []})
        await send({"type": "http.response.body", "body": b"card declined"})

    async def main() -> None:
        store = backend.store()
        try:
            async with client(idempotency.IdempotencyMiddleware(declines, store)) as c:
                for _ in range(3):
                    r = await post(c, "k")
                    assert (r.status_code, r.content) == (402, b"card declined")
        finally:
            await store.aclose()

    asyncio.run(main())
    assert calls == 1


def test_budget_ends_while_first_runs_is_409_with_retry_after(backend: Backend) -> None:
    app = Payments(delay=0.8)

    async def main() -> None:
        store = backend.store()
        mw = idempotency.IdempotencyMiddleware(app, store)

        async def with_budget(scope: Any, receive: Any, send: Any) -> None:
            budget = dict(scope["headers"]).get(b"x-budget")
            if budget is None:
                await mw(scope, receive, send)
                return
            # as a context middleware that does not interrupt the task would
            with tether.with_timeout(tether.background(), float(budget)):
                await mw(scope, receive, send)

        try:
            async with client(with_budget) as c:
                first = asyncio.create_task(post(c, "k"))
                await asyncio.sleep(0.1)
                t0 = time.monotonic()
                r = await c.post(
                    "/charges",
                    content=b"amount=5",
                    headers={"Idempotency-Key": "k", "x-budget": "0.2"},
                )
                waited = time.monotonic() - t0
                assert r.status_code == 409
                assert r.headers["retry-after"] == "1"
                assert r.json()["title"] == "Request in progress"
                assert 0.15 < waited < 0.6
                # a budget long enough: waits and replays
                r2 = await c.post(
                    "/charges",
                    content=b"amount=5",
                    headers={"Idempotency-Key": "k", "x-budget": "5"},
                )
                r1 = await first
                assert snapshot(r1) == snapshot(r2)
                assert r1.status_code == 201
        finally:
            await store.aclose()

    asyncio.run(main())
    assert app.calls == 1


def test_budget_from_scope_state_and_key_in_scope_state(backend: Backend) -> None:
    """Behind a context middleware: the budget and the key travel in scope["state"]."""
    app = Payments(delay=0.6)

    async def main() -> None:
        store = backend.store()
        mw = idempotency.IdempotencyMiddleware(app, store)

        async def ctx_middleware(scope: Any, receive: Any, send: Any) -> None:
            budget = dict(scope["headers"]).get(b"x-budget")
            with tether.with_timeout(tether.background(), float(budget or 10)) as rctx:
                scope["state"] = {"tether.context": rctx}
                await mw(scope, receive, send)

        try:
            async with client(ctx_middleware) as c:
                first = asyncio.create_task(post(c, "k"))
                await asyncio.sleep(0.1)
                r = await c.post(
                    "/charges",
                    content=b"amount=5",
                    headers={"Idempotency-Key": "k", "x-budget": "0.2"},
                )
                assert r.status_code == 409
                assert (await first).status_code == 201
        finally:
            await store.aclose()

    asyncio.run(main())
    assert app.seen_state == ["k"]
    assert app.seen_keys == ["k"]


def test_ended_request_context_is_not_run(backend: Backend) -> None:
    app = Payments(delay=0)

    async def main() -> None:
        store = backend.store()
        mw = idempotency.IdempotencyMiddleware(app, store)

        async def ended(scope: Any, receive: Any, send: Any) -> None:
            ctx, cancel = tether.with_cancel(tether.background())
            cancel()
            scope["state"] = {"tether.context": ctx}
            await mw(scope, receive, send)

        try:
            async with client(ended) as c:
                with pytest.raises(tether.Canceled):
                    await post(c, "k")
            assert (await store.begin("k", "x", "t")).state == "acquired"  # untouched
        finally:
            await store.aclose()

    asyncio.run(main())
    assert app.calls == 0


def test_request_deadline_interrupts_the_handler_and_releases(backend: Backend) -> None:
    app = Payments(delay=5)

    async def main() -> None:
        store = backend.store()
        mw = idempotency.IdempotencyMiddleware(app, store)

        async def ctx_middleware(scope: Any, receive: Any, send: Any) -> None:
            with tether.with_timeout(tether.background(), 0.2) as rctx:
                scope["state"] = {"tether.context": rctx}
                await mw(scope, receive, send)

        try:
            async with client(ctx_middleware) as c:
                t0 = time.monotonic()
                with pytest.raises(tether.DeadlineExceeded):
                    await post(c, "k")
                assert time.monotonic() - t0 < 2
            app.delay = 0
            async with client(mw) as c:
                assert (await post(c, "k")).status_code == 201  # released: runs again
        finally:
            await store.aclose()

    asyncio.run(main())
    assert app.calls == 2
    assert app.charges == ["amount=5"]


def test_store_down_is_503_and_nothing_runs(backend: Backend, caplog: Any) -> None:
    app = Payments()

    async def main() -> None:
        store = backend.down()
        try:
            async with client(idempotency.IdempotencyMiddleware(app, store)) as c:
                r = await post(c, "k")
                assert r.status_code == 503
                assert r.headers["retry-after"] == "1"
                assert "not processed" in r.json()["detail"]
        finally:
            await store.aclose()

    with caplog.at_level(logging.ERROR, "tether.idempotency"):
        asyncio.run(main())
    assert app.calls == 0
    assert "store unavailable" in caplog.text


def test_crashed_owner_lease_lapses_then_a_retry_runs(backend: Backend) -> None:
    """An owner that took the key and died (never renews): after `lease`, a retry runs."""
    app = Payments(delay=0)

    async def main() -> None:
        store = backend.store(lease=0.5)
        try:
            fp = idempotency._middleware.fingerprint("POST", b"/charges", b"amount=5")
            assert (await store.begin("k", fp, "dead-owner")).state == "acquired"
            async with client(idempotency.IdempotencyMiddleware(app, store)) as c:
                t0 = time.monotonic()
                r = await post(c, "k")  # no budget: waits for the lease to lapse
                waited = time.monotonic() - t0
                assert r.status_code == 201
                assert 0.3 < waited < 3
                assert (await post(c, "k")).content == r.content
            # the dead owner cannot write any more
            assert not await store.complete("k", "dead-owner", b"x", 60)
            assert not await store.release("k", "dead-owner")
        finally:
            await store.aclose()

    asyncio.run(main())
    assert app.calls == 1


def test_a_live_owner_renews_its_lease(backend: Backend) -> None:
    """A handler that runs 3 leases long keeps its key: duplicates wait, never run.

    A lease of 1 s is renewed every 1/3 s: an event-loop stall of 2/3 s loses it, by
    design; 0.4 s leases lost it under a fully loaded CI run (a 0.27 s stall)."""
    app = Payments(delay=3.0)

    async def main() -> None:
        store = backend.store(lease=1.0)
        try:
            async with client(idempotency.IdempotencyMiddleware(app, store)) as c:
                first = asyncio.create_task(post(c, "k"))
                await asyncio.sleep(0.1)
                _flights(store).by_key.clear()  # make the duplicate ask the store only
                second = await post(c, "k")
                assert snapshot(second) == snapshot(await first)
        finally:
            await store.aclose()

    asyncio.run(main())
    assert app.calls == 1


def test_passthrough_other_methods_scopes_and_optional_key(backend: Backend) -> None:
    app = Payments(delay=0)
    events: list[str] = []

    async def lifespan_app(scope: Any, receive: Any, send: Any) -> None:
        events.append(scope["type"])
        if scope["type"] == "http":
            await app(scope, receive, send)

    async def main() -> None:
        store = backend.store()
        try:
            mw = idempotency.IdempotencyMiddleware(lifespan_app, store, required=False)
            async with client(mw) as c:
                assert (await c.get("/charges")).status_code == 201  # GET: not guarded
                assert (await post(c, None)).status_code == 201  # no key, not required
                assert (await post(c, None)).status_code == 201
            await mw({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
            strict = idempotency.IdempotencyMiddleware(lifespan_app, store, methods=["put"])
            async with client(strict) as c:
                assert (await post(c, None)).status_code == 201  # POST not listed
                assert (await c.put("/charges")).status_code == 400
        finally:
            await store.aclose()

    asyncio.run(main())
    assert app.calls == 4
    assert app.seen_keys == [None] * 4
    assert events.count("lifespan") == 1


def test_app_that_returns_without_a_response_releases(backend: Backend) -> None:
    calls = 0

    async def silent(scope: Any, receive: Any, send: Any) -> None:
        nonlocal calls
        calls += 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        if calls == 1:
            return  # protocol violation: never finished the body
        await send({"type": "http.response.body", "body": b"ok"})

    async def main() -> None:
        store = backend.store()
        try:
            async with client(idempotency.IdempotencyMiddleware(silent, store)) as c:
                with pytest.raises(AssertionError):  # httpx: the app sent no full response
                    await post(c, "k")
                r = await post(c, "k")
                assert r.content == b"ok"
                assert (await post(c, "k")).content == b"ok"
        finally:
            await store.aclose()

    asyncio.run(main())
    assert calls == 2


def test_expired_result_is_forgotten_and_swept(backend: Backend) -> None:
    app = Payments(delay=0)

    async def main() -> int:
        store = backend.store()
        try:
            mw = idempotency.IdempotencyMiddleware(app, store, ttl=0.3)
            async with client(mw) as c:
                await post(c, "k")
                await post(c, "k")
                await asyncio.sleep(0.5)
                r = await post(c, "k", b"another request")  # the key may be reused now
                assert r.status_code == 201
            await asyncio.sleep(0.5)
            return await store.sweep()
        finally:
            await store.aclose()

    swept = asyncio.run(main())
    assert app.charges == ["amount=5", "another request"]
    assert swept == (0 if backend.kind == "redis" else 1)  # Redis expires keys itself


# -- run() ------------------------------------------------------------------------------


def test_run_executes_once_per_key(backend: Backend) -> None:
    calls: list[Any] = []

    async def charge(ctx: tether.Context) -> dict[str, Any]:
        calls.append(ctx.value(KEY))
        assert tether.current() is ctx
        await asyncio.sleep(0.1)
        return {"charge": "ch_1", "amount": (5, "EUR")}

    async def main() -> list[Any]:
        store = backend.store()
        try:
            return await asyncio.gather(
                *[
                    idempotency.run(tether.background(), store, "order-7", "fp", charge)
                    for _ in range(10)
                ]
            )
        finally:
            await store.aclose()

    results = asyncio.run(main())
    assert calls == ["order-7"]
    assert results == [{"charge": "ch_1", "amount": [5, "EUR"]}] * 10


def test_run_mismatch_error_and_release(backend: Backend) -> None:
    calls = 0

    async def flaky(ctx: tether.Context) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("processor down")
        return calls

    async def main() -> None:
        store = backend.store()
        bg = tether.background()
        try:
            with pytest.raises(ConnectionError):
                await idempotency.run(bg, store, "k", "fp", flaky)
            assert await idempotency.run(bg, store, "k", "fp", flaky) == 2
            assert await idempotency.run(bg, store, "k", "fp", flaky) == 2
            with pytest.raises(idempotency.FingerprintMismatch, match=r"tether: .*'k'"):
                await idempotency.run(bg, store, "k", "other", flaky)

            async def not_json(ctx: tether.Context) -> object:
                return object()

            with pytest.raises(TypeError, match=r"tether: .*JSON"):
                await idempotency.run(bg, store, "k2", "fp", not_json)
            assert await idempotency.run(bg, store, "k2", "fp", flaky) == 3  # released
        finally:
            await store.aclose()

    asyncio.run(main())
    assert calls == 3


def test_run_with_ended_context_and_deadline_while_waiting(backend: Backend) -> None:
    ran = 0

    async def slow(ctx: tether.Context) -> str:
        nonlocal ran
        ran += 1
        await asyncio.sleep(0.6)
        return "ok"

    async def main() -> None:
        store = backend.store()
        try:
            ended, cancel = tether.with_cancel(tether.background())
            cancel()
            with pytest.raises(tether.Canceled):
                await idempotency.run(ended, store, "k", "fp", slow)
            first = asyncio.create_task(
                idempotency.run(tether.background(), store, "k", "fp", slow)
            )
            await asyncio.sleep(0.1)
            with tether.with_timeout(tether.background(), 0.1) as short:
                t0 = time.monotonic()
                with pytest.raises(tether.DeadlineExceeded):
                    await idempotency.run(short, store, "k", "fp", slow)
                assert time.monotonic() - t0 < 0.5
            assert await first == "ok"
        finally:
            await store.aclose()

    asyncio.run(main())
    assert ran == 1


def test_run_store_down_raises_store_error_and_runs_nothing(backend: Backend) -> None:
    async def fn(ctx: tether.Context) -> int:
        raise AssertionError("must not run")

    async def main() -> None:
        store = backend.down()
        try:
            with pytest.raises(idempotency.StoreError, match="tether: ") as ei:
                await idempotency.run(tether.background(), store, "k", "fp", fn)
            assert ei.value.__cause__ is not None
        finally:
            await store.aclose()

    asyncio.run(main())


def test_lease_lost_cancels_the_work(backend: Backend, caplog: Any) -> None:
    """If another owner took the key (lease lapsed), the work's context is cancelled."""
    from tether.idempotency._coord import LeaseLost

    tokens: list[str] = []

    async def main() -> None:
        store = backend.store(lease=0.3)
        real_begin = store.begin

        async def spy(key: str, fp: str, token: str) -> idempotency.Claim:
            tokens.append(token)
            return await real_begin(key, fp, token)

        store.begin = spy  # type: ignore[method-assign]
        try:

            async def work(ctx: tether.Context) -> str:
                # a takeover behind the owner's back: its next renewal finds another token
                assert await store.release("k", tokens[-1])
                assert (await real_begin("k", "fp", "thief")).state == "acquired"
                await asyncio.sleep(2)
                return "too late"

            t0 = time.monotonic()
            with pytest.raises(tether.Canceled) as ei:
                await idempotency.run(tether.background(), store, "k", "fp", work)
            assert time.monotonic() - t0 < 1.5
            assert isinstance(ei.value.__cause__, LeaseLost)
            assert (await real_begin("k", "fp", "x")).state == "running"  # the thief's
        finally:
            await store.aclose()

    with caplog.at_level(logging.ERROR, "tether.idempotency"):
        asyncio.run(main())
    assert "lease lost" in caplog.text


# -- the stores ---------------------------------------------------------------------------


def test_store_protocol(backend: Backend) -> None:
    async def main() -> None:
        store = backend.store(lease=0.3)
        try:
            k = uuid.uuid4().hex
            got = await store.begin(k, "fp", "t1")
            assert got == idempotency.Claim("acquired", "fp")
            got = await store.begin(k, "fp2", "t2")
            assert got.state == "running"
            assert got.fingerprint == "fp"
            assert 0 < got.wait <= 0.3
            assert await store.renew(k, "t1")
            assert not await store.renew(k, "t2")
            assert not await store.complete(k, "t2", b"no", 60)
            assert await store.complete(k, "t1", b"\x00result\xff", 60)
            assert not await store.complete(k, "t1", b"again", 60)
            assert not await store.renew(k, "t1")
            assert not await store.release(k, "t1")  # done keys are not released
            got = await store.begin(k, "fp", "t3")
            assert got == idempotency.Claim("done", "fp", result=b"\x00result\xff")
            # release: the next begin acquires
            k2 = uuid.uuid4().hex
            assert (await store.begin(k2, "fp", "a")).state == "acquired"
            assert not await store.release(k2, "b")
            assert await store.release(k2, "a")
            assert (await store.begin(k2, "fp", "b")).state == "acquired"
            # a lapsed lease is taken over, even with another fingerprint
            await asyncio.sleep(0.4)
            assert (await store.begin(k2, "other", "c")).state == "acquired"
            assert not await store.renew(k2, "b")
        finally:
            await store.aclose()

    asyncio.run(main())


def test_store_survives_two_event_loops_and_close(backend: Backend) -> None:
    store = backend.store()

    async def one(k: str) -> str:
        return (await store.begin(k, "fp", "t")).state

    try:
        assert asyncio.run(one("a")) == "acquired"
        assert asyncio.run(one("a")) == "running"  # a new loop: a new connection
    finally:
        store.close()
        store.close()


def test_constructing_a_store_needs_no_loop_and_no_server(tmp_path: Any) -> None:
    # nothing listens on these and no loop runs: construction must not care
    idempotency.SQLiteStore(tmp_path / "x.db")
    idempotency.PostgresStore("host=127.0.0.1 port=1 dbname=x", lease=5)
    idempotency.RedisStore("redis://127.0.0.1:1/0", lease=5)
    assert not (tmp_path / "x.db").exists()


# -- misuse ---------------------------------------------------------------------------------


def test_misuse_errors(tmp_path: Any) -> None:
    store = idempotency.SQLiteStore(tmp_path / "x.db")

    async def app(scope: Any, receive: Any, send: Any) -> None: ...

    with pytest.raises(TypeError, match="tether: pass an idempotency store"):
        idempotency.IdempotencyMiddleware(app, "sqlite:///x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"tether: .*ASGI app"):
        idempotency.IdempotencyMiddleware(None, store)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="tether: methods"):
        idempotency.IdempotencyMiddleware(app, store, methods="POST")
    with pytest.raises(ValueError, match="tether: ttl"):
        idempotency.IdempotencyMiddleware(app, store, ttl=0)
    with pytest.raises(TypeError, match="tether: ttl"):
        idempotency.IdempotencyMiddleware(app, store, ttl="1d")  # type: ignore[arg-type]
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="tether: lease"):
            idempotency.SQLiteStore(tmp_path / "x.db", lease=bad)
    with pytest.raises(TypeError, match="tether: lease"):
        idempotency.SQLiteStore(tmp_path / "x.db", lease=True)
    with pytest.raises(ValueError, match="tether: table"):
        idempotency.SQLiteStore(tmp_path / "x.db", table="x; DROP TABLE y")
    with pytest.raises(TypeError, match="tether: SQLiteStore needs a file path"):
        idempotency.SQLiteStore(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="tether: PostgresStore needs"):
        idempotency.PostgresStore(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="tether: RedisStore needs"):
        idempotency.RedisStore(b"redis://x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="tether: pass an idempotency store"):
        idempotency.sweep_job(None)  # type: ignore[arg-type]

    async def fn(ctx: tether.Context) -> int:
        return 1

    async def main() -> None:
        bg = tether.background()
        with pytest.raises(TypeError, match="tether: an idempotency key is a str"):
            await idempotency.run(bg, store, 7, "fp", fn)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="tether: an idempotency key is 1-255"):
            await idempotency.run(bg, store, "", "fp", fn)
        with pytest.raises(TypeError, match="tether: a fingerprint is a str"):
            await idempotency.run(bg, store, "k", None, fn)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="tether: run needs an async function"):
            await idempotency.run(bg, store, "k", "fp", None)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="tether: pass an idempotency store"):
            await idempotency.run(bg, None, "k", "fp", fn)  # type: ignore[arg-type]

    asyncio.run(main())
    store.close()


def test_exports_and_key_is_the_core_key() -> None:
    assert idempotency.IDEMPOTENCY_KEY is tether._keys.IDEMPOTENCY_KEY
    assert sorted(idempotency.__all__) == idempotency.__all__
    for name in idempotency.__all__:
        obj = getattr(idempotency, name)
        if isinstance(obj, type) or callable(obj):
            assert obj.__module__ == "tether.idempotency", name
    with pytest.raises(AttributeError):
        getattr(idempotency, "Nope")


def test_sweep_job_runs_under_a_scheduler(tmp_path: Any) -> None:
    from tether import lifecycle

    async def main() -> lifecycle.JobStats:
        store = idempotency.SQLiteStore(tmp_path / "s.db", lease=0.05)
        try:
            await store.begin("lapsed", "fp", "dead")
            sched = lifecycle.Scheduler()
            sched.every(0.1, idempotency.sweep_job(store), immediately=True)
            with tether.with_timeout(tether.background(), 0.35) as ctx:
                await sched.arun(ctx)
            assert (await store.begin("lapsed", "fp", "t")).state == "acquired"
            return sched.stats()["idempotency-sweep"]
        finally:
            await store.aclose()

    stats = asyncio.run(main())
    assert stats.runs >= 2
    assert stats.failures == 0


def test_import_does_not_load_drivers() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from tether import idempotency; "
        "assert 'psycopg' not in sys.modules and 'redis' not in sys.modules, "
        "[m for m in sys.modules if m.startswith(('psycopg', 'redis'))]"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_missing_driver_names_the_extra() -> None:
    import subprocess
    import sys

    code = """
import sys
sys.modules['psycopg'] = None
sys.modules['redis'] = None
from tether import idempotency
for cls, extra in ((idempotency.PostgresStore, 'psycopg'), (idempotency.RedisStore, 'redis')):
    try:
        cls('x')
    except ImportError as e:
        assert str(e).startswith('tether: '), e
        assert f"pip install 'tether[{extra}]'" in str(e), e
    else:
        raise SystemExit('no ImportError')
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_json_problem_bodies_are_valid() -> None:
    from tether.idempotency._middleware import decode_response, encode_response

    raw = encode_response(200, [(b"a", b"\x00\xff"), (b"a", b"2")], b"\x00body")
    assert decode_response(raw) == (200, [(b"a", b"\x00\xff"), (b"a", b"2")], b"\x00body")
    json.loads(raw[4 : 4 + int.from_bytes(raw[:4], "big")])


def test_postgres_pool_is_bounded_and_reused(tmp_path: Path) -> None:
    from tests.idem_support import PG

    b = Backend("postgres", tmp_path)
    app_name = f"idem_pool_{uuid.uuid4().hex[:8]}"
    peak = 0

    async def main() -> None:
        nonlocal peak
        import psycopg

        store = idempotency.PostgresStore(
            f"{PG} application_name={app_name}", table=b.table, max_connections=3
        )
        watcher = await psycopg.AsyncConnection.connect(PG, autocommit=True)
        sql = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
        try:

            async def one(i: int) -> str:
                return (await store.begin(f"k{i}", "fp", "t")).state

            for _ in range(3):
                states = await asyncio.gather(*[one(i) for i in range(40)])
                row = await (await watcher.execute(sql, (app_name,))).fetchone()
                assert row is not None
                peak = max(peak, row[0])
            assert states == ["running"] * 40  # the 2nd and 3rd rounds find them taken
        finally:
            await store.aclose()
            await watcher.close()
            b.cleanup()

    asyncio.run(main())
    assert 1 <= peak <= 3


def test_postgres_pool_misuse() -> None:
    with pytest.raises(ValueError, match="tether: max_connections"):
        idempotency.PostgresStore("dbname=x", max_connections=0)
    with pytest.raises(TypeError, match="tether: max_connections"):
        idempotency.PostgresStore("dbname=x", max_connections=2.5)  # type: ignore[arg-type]
