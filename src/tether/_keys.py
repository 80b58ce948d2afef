"""The core's well-known context keys, shared by every part that reads or sets them.

``REQUEST_ID`` is the one request-id key: the HTTP and gRPC middleware set it from the
``x-request-id`` header, the lifecycle components set a fresh one per run, and log
filters read it. ``IDEMPOTENCY_KEY`` carries a request's ``Idempotency-Key`` so the
database layer and a payment client see it without plumbing.
"""

from __future__ import annotations

from ._context import Key

__all__ = ["IDEMPOTENCY_KEY", "REQUEST_ID"]

REQUEST_ID: Key[str] = Key("request_id")
IDEMPOTENCY_KEY: Key[str] = Key("idempotency_key")
