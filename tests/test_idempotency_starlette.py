"""IdempotencyMiddleware with a real Starlette app: wrapping it, or in its middleware list.

Starlette's ServerErrorMiddleware turns an exception into a 500 *and re-raises it*: the
key must then be released (raised means "did not happen"), wherever the middleware
sits. An HTTPException is a response the app chose: stored and replayed. A sync
endpoint (run in a thread pool) sees the key in its context.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

import tether
from tether import idempotency

starlette = pytest.importorskip("starlette")

from starlette.applications import Starlette  # noqa: E402
from starlette.exceptions import HTTPException  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse, Response  # noqa: E402
from starlette.routing import Route  # noqa: E402


def make(store: idempotency.Store, *, inside: bool) -> tuple[Any, dict[str, int]]:
    calls = {"charge": 0, "boom": 0, "declined": 0, "sync": 0}
    keys: list[Any] = []

    async def charge(request: Request) -> Response:
        calls["charge"] += 1
        body = await request.json()
        key = tether.current().value(idempotency.IDEMPOTENCY_KEY)
        return JSONResponse({"charge": f"ch_{calls['charge']}", "key": key, **body}, 201)

    async def boom(request: Request) -> Response:
        calls["boom"] += 1
        if calls["boom"] == 1:
            raise ConnectionError("processor unreachable")
        return JSONResponse({"ok": True})

    async def declined(request: Request) -> Response:
        calls["declined"] += 1
        raise HTTPException(402, "card declined")

    def sync(request: Request) -> Response:  # runs in a worker thread
        calls["sync"] += 1
        keys.append(tether.current().value(idempotency.IDEMPOTENCY_KEY))
        return JSONResponse({"key": keys[-1]})

    routes = [
        Route("/charges", charge, methods=["POST"]),
        Route("/boom", boom, methods=["POST"]),
        Route("/declined", declined, methods=["POST"]),
        Route("/sync", sync, methods=["POST"]),
    ]
    if inside:
        app: Any = Starlette(
            routes=routes, middleware=[Middleware(idempotency.IdempotencyMiddleware, store=store)]
        )
    else:
        app = idempotency.IdempotencyMiddleware(Starlette(routes=routes), store)
    return app, calls


@pytest.mark.parametrize("inside", [False, True], ids=["wrapping", "in-middleware-list"])
def test_starlette_app(inside: bool, tmp_path: Path) -> None:
    async def main() -> dict[str, int]:
        store = idempotency.SQLiteStore(tmp_path / "idem.db")
        app, calls = make(store, inside=inside)
        transport = httpx.ASGITransport(app, raise_app_exceptions=False)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:

                def post(path: str, key: str, **kw: Any) -> Any:
                    return c.post(path, headers={"Idempotency-Key": key}, **kw)

                rs = await asyncio.gather(
                    *[post("/charges", "a", json={"amount": 5}) for _ in range(5)]
                )
                assert {r.content for r in rs} == {b'{"charge":"ch_1","key":"a","amount":5}'}
                assert (await post("/charges", "a", json={"amount": 6})).status_code == 422
                assert (await c.post("/charges", json={"amount": 5})).status_code == 400

                r = await post("/boom", "b")
                assert r.status_code == 500  # Starlette's error page; the key released
                r = await post("/boom", "b")
                assert r.json() == {"ok": True}
                assert (await post("/boom", "b")).json() == {"ok": True}

                for _ in range(2):
                    r = await post("/declined", "c")
                    assert (r.status_code, r.text) == (402, "card declined")

                r = await post("/sync", "d")
                assert r.json() == {"key": "d"}
            return calls
        finally:
            await store.aclose()

    calls = asyncio.run(main())
    assert calls == {"charge": 1, "boom": 2, "declined": 1, "sync": 1}
