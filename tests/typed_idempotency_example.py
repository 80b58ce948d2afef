"""tether.idempotency used the way a typed application uses it (checked by mypy --strict).

Run as a script it also works: prints "ok 1".
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import tether
from tether import idempotency, lifecycle

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


async def payments(scope: Scope, receive: Receive, send: Send) -> None:
    key: str | None = tether.current().value(idempotency.IDEMPOTENCY_KEY)
    await send({"type": "http.response.start", "status": 201, "headers": []})
    await send({"type": "http.response.body", "body": (key or "").encode()})


async def charge(ctx: tether.Context) -> dict[str, int]:
    return {"amount": 5}


async def main(path: Path) -> int:
    store: idempotency.Store = idempotency.SQLiteStore(path / "idem.db", lease=30)
    app = idempotency.IdempotencyMiddleware(payments, store, methods=["POST"], ttl=3600)
    assert app.store is store
    try:
        result = await idempotency.run(tether.background(), store, "k", "fp", charge)
        amount: int = result["amount"]
        sched = lifecycle.Scheduler()
        sched.every(600, idempotency.sweep_job(store))
        claim: idempotency.Claim = await store.begin("other", "fp", "t")
        assert claim.state == "acquired"
        refused: str | None = None
        try:
            await idempotency.run(tether.background(), store, "k", "fp2", charge)
        except idempotency.FingerprintMismatch as e:
            refused = e.key
        return amount // 5 if refused == "k" else -1
    finally:
        await store.aclose()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as d:
        print("ok", asyncio.run(main(Path(d))))
