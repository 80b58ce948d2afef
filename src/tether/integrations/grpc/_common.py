"""What the sync and asyncio gRPC interceptors share: no grpcio import here.

- ``server_scope``: an inbound call's context from grpcio's ``time_remaining()``, its
  metadata and its peer, through ``propagation.extract`` (so the policy applies to the
  gRPC deadline exactly as it does to an HTTP header).
- ``wire_timeout``: the largest timeout whose ``grpc-timeout`` encoding by grpc-core
  does not exceed a budget (grpc-core rounds up: see below).
- ``outbound``: the timeout and metadata of an outbound call, or ``DeadlineExceeded``.
- ``status_for``: the gRPC status for a tether error escaping a handler.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Final
from urllib.parse import unquote

from ... import propagation
from ..._context import Context, Scope, background
from ..._errors import ContextError, DeadlineExceeded
from ..._keys import REQUEST_ID
from .. import _events

__all__ = [
    "NO_DEADLINE",
    "ClientCancelled",
    "GRPC_SLACK",
    "check_policy",
    "outbound",
    "peer_ip",
    "server_scope",
    "wire_timeout",
]

NO_DEADLINE: Final = 1e15
"""grpcio reports "no deadline" as ~9.2e18 s remaining; anything above this is none."""

GRPC_SLACK: Final = 0.003
"""What grpc-core may add to a timeout before encoding it (seconds).

grpc-core stores a call's deadline in whole milliseconds rounded *up*
(``Timestamp::FromTimespecRoundUp``) and measures the time left against a clock read
rounded *down*, so the duration it encodes can exceed the timeout it was given by up to
2 ms; one more covers a stale cached ``Now()``.
"""

# grpc-core's Timeout::FromMillis (src/core/lib/transport/timeout_encoding.cc) rounds the
# duration UP to a grid that coarsens with size: exact milliseconds below 1 s, 10 ms
# steps below 10 s, 100 ms below 100 s, 1 s below 1,000 s (16.6 min), 10 s below
# 10,000 s, 100 s below 100,000 s, then 10- and 100-minute and hour steps.
_GRID: Final = (
    (1.0, 0.001),
    (10.0, 0.01),
    (100.0, 0.1),
    (1_000.0, 1.0),
    (10_000.0, 10.0),
    (100_000.0, 100.0),
)
_COARSEST: Final = 6_000.0  # 100-minute steps; hour steps are finer

SERVER_LEAD: Final = 0.001
"""A handler's context ends this much before grpcio's deadline for the call (seconds).

grpc-core's deadline timer and tether's race at the same instant; whichever fires first
decides whether the handler sees ``DeadlineExceeded`` (tether's timer) or a cancelled
RPC. Ending the context first makes it ``DeadlineExceeded``, as in Go.
"""


def wire_timeout(budget: float) -> float:
    """The timeout to give grpcio so the ``grpc-timeout`` it sends is at most ``budget``.

    grpc-core encodes ``grpc-timeout`` rounded up to a step of 1 ms (below 1 s), 10 ms
    (below 10 s), 100 ms (below 100 s) and coarser beyond, after rounding the deadline
    up to a millisecond. Passing ``budget`` as it is would let a server see up to one
    step more than the caller had left. The result is ``budget`` rounded *down* to its
    step, minus ``GRPC_SLACK``: whatever grpc-core adds then rounds up to at most that
    grid point. Never negative.

    Non-blocking; pure (the same result on every call); thread-safe. No context is
    involved, so none can have already ended. Raises nothing for a float.

    Added in 0.1.
    """
    step = _COARSEST
    for limit, s in _GRID:
        if budget < limit:
            step = s
            break
    # floor to the grid; the small epsilon keeps 1.23 / 0.01 = 122.999... at 123
    down = math.floor(budget / step + 1e-9) * step
    if down > budget:  # the epsilon overshot (budget just below a grid point)
        down -= step
    return max(down - GRPC_SLACK, 0.0)


def grpc_core_encoding(timeout: float) -> float:
    """What grpc-core's encoder makes of ``timeout`` seconds (for tests and docs).

    A model of ``Timeout::FromMillis`` for budgets below 100,000 s: whole milliseconds
    rounded up, then up to the step of the range. Pure; raises nothing.
    """
    ms = math.ceil(timeout * 1000 - 1e-9)
    if ms <= 0:
        return 0.0
    if ms < 1_000:
        return ms / 1000
    for limit_ms, step_ms in ((10_000, 10), (100_000, 100), (1_000_000, 1_000)):
        if ms < limit_ms:
            return math.ceil(ms / step_ms) * step_ms / 1000
    return float(math.ceil(ms / 1000))  # pragma: no cover - coarser grids: see wire_timeout


class ClientCancelled(ConnectionError):
    """The cause of a server-side context whose RPC ended before its handler did.

    Recorded (``tether.cause(ctx)``) when the client cancelled the call or the
    connection was lost; ``ctx.err()`` is then ``tether.Canceled``. Not raised by
    tether: it is a cause to inspect, e.g. to log a 499-style "client gone". A
    ``ConnectionError``, like the ASGI middleware's ``ClientDisconnected``, so one
    ``isinstance(tether.cause(ctx), ConnectionError)`` covers both transports.

    Added in 0.1.
    """

    def __init__(
        self, message: str = "the gRPC client cancelled the call or its connection was lost"
    ) -> None:
        super().__init__(message)


def check_policy(policy: object) -> None:
    """Raise ``TypeError`` unless ``policy`` is a Policy, a PolicyHolder or None."""
    if policy is not None and not isinstance(policy, propagation.Policy | propagation.PolicyHolder):
        raise TypeError(
            "tether: policy is a tether.propagation.Policy, a propagation.PolicyHolder or "
            f"None; got {type(policy).__name__}"
        )


def resolve(policy: propagation.Policy | propagation.PolicyHolder | None) -> propagation.Policy:
    """The policy in force now (a holder is read once per call)."""
    if isinstance(policy, propagation.PolicyHolder):
        return policy.policy
    if policy is None:
        return _DEFAULT_POLICY
    return policy


_DEFAULT_POLICY: Final = propagation.Policy()


def peer_ip(peer: str | None) -> str | None:
    """The IP address in a grpcio peer string, or ``None`` (Unix sockets, garbage).

    grpcio spells peers ``ipv4:10.0.0.7:50051``, ``ipv6:[::1]:50051`` (percent-encoded
    as ``ipv6:%5B::1%5D:50051`` by recent versions) and ``unix:/path``.
    """
    if not peer:
        return None
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0] or None
    if kind == "ipv6":
        rest = unquote(rest)
        if rest.startswith("["):
            return rest[1 : rest.find("]")] or None
        return rest.rpartition(":")[0] or None
    return None


def server_scope(
    remaining: float | None,
    metadata: Sequence[tuple[str, str | bytes]] | None,
    peer: str | None,
    policy: propagation.Policy,
) -> Scope:
    """An inbound call's context: ``extract`` over its metadata plus its gRPC deadline.

    The gRPC deadline (less ``SERVER_LEAD``) is presented to ``extract`` as a
    ``grpc-timeout`` header, so the
    policy (``max_timeout`` unless trusted, ``min_timeout``, ``default_timeout`` when the
    caller set none) applies to it as to any header; a budget a client also sent in
    ``x-request-timeout`` metadata is honoured if smaller.
    """
    headers: list[Any] = list(metadata) if metadata else []
    if remaining is not None and remaining < NO_DEADLINE:
        budget = propagation.encode_timeout(remaining - SERVER_LEAD)
        headers.append((propagation.GRPC_TIMEOUT_HEADER, budget))
    return propagation.extract(background(), headers, peer=peer_ip(peer), policy=policy)


def outbound(
    ctx: Context,
    timeout: float | None,
    metadata: Sequence[tuple[str, str | bytes]] | None,
    policy: propagation.Policy,
) -> tuple[float | None, list[tuple[str, str | bytes]] | None, float | None]:
    """``(timeout, metadata, gap)`` for an outbound call made under ``ctx``.

    ``timeout`` is ``min(explicit, wire_timeout(remaining - margin))``. ``gap`` is
    ``None`` when the explicit timeout bounds the call, else how long before the
    context's deadline grpcio's will fire (the margin plus the rounding down). The
    request id is added to the metadata unless the caller set one. Raises ``ctx``'s
    error if it ended, and ``DeadlineExceeded`` when the budget after the margin is
    below ``policy.floor`` (the call is not sent).
    """
    if ctx.err() is not None:
        ctx.check()
    remaining = ctx.remaining()
    gap = None
    if remaining is not None:
        budget = remaining - policy.margin
        if budget < policy.floor:
            err = DeadlineExceeded()
            err.add_note(
                f"tether: {max(remaining, 0.0) * 1e3:.3f} ms left, {budget * 1e3:.3f} ms "
                f"after policy.margin, below policy.floor ({policy.floor * 1e3:.3f} ms): "
                "the gRPC call was not sent"
            )
            raise err
        wire = wire_timeout(budget)
        if timeout is None or wire < timeout:
            timeout = wire
            gap = remaining - wire
    rid = ctx.value(REQUEST_ID)
    if rid is not None:
        md = list(metadata) if metadata else []
        if not any(k == propagation.REQUEST_ID_HEADER for k, _ in md):
            md.append((propagation.REQUEST_ID_HEADER, rid))
        return timeout, md, gap
    return timeout, list(metadata) if metadata is not None else None, gap


LATE: Final = 0.02
"""How late grpc-core's deadline may fire and still be the context's (seconds)."""


def classify(ctx: Context, code_name: str | None, gap: float | None) -> str | None:
    """Whether a failed call's gRPC status is the context's doing.

    ``"ended"``: ``ctx`` ended and the call ended ``CANCELLED``/``DEADLINE_EXCEEDED``.
    ``"ending"``: the call was bounded by ``ctx``'s budget (``gap`` is not ``None``) and
    ended ``DEADLINE_EXCEEDED`` within ``gap`` (+ ``LATE``) of ``ctx``'s deadline: grpcio's
    deadline fired first, the context's follows within ``gap``. ``None``: something else
    (a shorter explicit timeout, a server's own deadline, any other status): grpcio's
    error stands.
    """
    if code_name not in ("CANCELLED", "DEADLINE_EXCEEDED"):
        return None
    if ctx.err() is not None:
        return "ended"
    if gap is not None and code_name == "DEADLINE_EXCEEDED":
        left = ctx.remaining()
        if left is not None and left <= gap + LATE:
            return "ending"
    return None


def ctx_error(ctx: Context) -> ContextError:
    """A fresh error of ``ctx``'s type (``DeadlineExceeded`` if it has not ended yet)."""
    try:
        ctx.check()
    except ContextError as e:
        return e
    return DeadlineExceeded()


def status_name(err: BaseException) -> str:
    """The ``grpc.StatusCode`` name for a tether error that escaped a handler."""
    if isinstance(err, DeadlineExceeded):
        _events.budget_exhausted("grpc")
        return "DEADLINE_EXCEEDED"
    return "CANCELLED"
