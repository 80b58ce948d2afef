"""Idempotent handlers: each operation runs once per ``Idempotency-Key``, across retries,
processes and hosts, and every retry gets the first answer back.

The rules of use of ``tether`` hold here too (pass ``ctx`` first, cancel what you
derive). In addition:

1. A key names one operation: the client makes one (a UUID) per operation and sends
   it again, unchanged, with every retry of that operation. A key reused for a
   different request is refused (``422`` / ``FingerprintMismatch``).
2. What a handler *returns* (sends) is the answer, stored and replayed; what it
   *raises* is not: the key is released and a retry executes again. So raise only
   when the side effect did not happen.
3. The store is the arbiter: one ``SQLiteStore`` file per host, or one
   ``PostgresStore``/``RedisStore`` shared by every instance. When it cannot be
   reached, nothing runs (``503`` / ``StoreError``): the check fails closed.

Example::

    from tether import idempotency

    store = idempotency.SQLiteStore("idempotency.db", lease=30)
    app = idempotency.IdempotencyMiddleware(payments_app, store)

    # without HTTP:
    receipt = await idempotency.run(ctx, store, key, fingerprint, charge)

The key is a context value: ``tether.current().value(idempotency.IDEMPOTENCY_KEY)``
inside the handler, so a payment client can pass it on to its processor.
"""

from typing import TYPE_CHECKING, Any

from .._keys import IDEMPOTENCY_KEY
from ._middleware import IdempotencyMiddleware
from ._run import run
from ._sqlite import SQLiteStore
from ._store import Claim, FingerprintMismatch, Store, StoreError
from ._sweep import sweep_job

if TYPE_CHECKING:
    from ._postgres import PostgresStore
    from ._redis import RedisStore

__all__ = [
    "Claim",
    "FingerprintMismatch",
    "IDEMPOTENCY_KEY",
    "IdempotencyMiddleware",
    "PostgresStore",
    "RedisStore",
    "SQLiteStore",
    "Store",
    "StoreError",
    "run",
    "sweep_job",
]

# The stores that need a driver load on first use: `from tether import idempotency`
# imports neither psycopg nor redis.
_LAZY = {"PostgresStore": "._postgres", "RedisStore": "._redis"}


def __getattr__(name: str) -> Any:
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module 'tether.idempotency' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(where, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


for _name in ("run", "sweep_job"):
    globals()[_name].__module__ = __name__
del _name
