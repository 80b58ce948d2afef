"""The wire format of deadlines and request ids, and the trust policy (stdlib only).

A deadline never travels as an absolute time (clocks differ between hosts): the caller
sends its *remaining* budget, minus ``policy.margin`` for the trip, and the callee starts
its own clock when the request arrives. Two headers carry a request's context::

    x-request-timeout: 250m        # TIMEOUT_HEADER: the budget, in grpc-timeout grammar
    x-request-id: 5f0c...          # REQUEST_ID_HEADER: the request id

The timeout grammar is gRPC's (``grpc-timeout``): 1 to 8 ASCII digits and one unit,
``H`` hours, ``M`` minutes, ``S`` seconds, ``m`` milliseconds, ``u`` microseconds,
``n`` nanoseconds. Nothing else is accepted: no whitespace, no sign, no 9th digit, no
other unit, nothing outside ASCII. Inbound, ``grpc-timeout`` and Connect's
``connect-timeout-ms`` are read too, and the smallest valid budget of the three wins.

Client side: ``inject(ctx, headers)`` writes both headers (and refuses to send a call
whose budget is below ``policy.floor``). Server side: ``extract(parent, headers,
peer=..., policy=...)`` derives the request's context. ``extract`` never raises on what
a peer sent: a malformed value is ignored, the default applies, and the header's name is
counted in ``malformed_headers()`` (a process-wide tally to export as a metric or read
in a test).

The ``Policy`` decides how far a server believes its callers: inbound budgets are
clamped to ``[min_timeout, max_timeout]``; only peers inside ``trusted`` CIDRs may send
a longer budget (a proxy passing its caller's deadline through) or set identity values.
A server keeps its policy in a ``PolicyHolder`` so it can be changed at run time; each
request keeps the policy it started with.

Added in 0.1.
"""

from __future__ import annotations

import ipaddress
import math
import numbers
import os
import re
import threading
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Final

from . import _clock
from ._context import Context, Key, Scope, _derive, _owner
from ._errors import DeadlineExceeded
from ._keys import REQUEST_ID
from .integrations import _events

__all__ = [
    "CONNECT_TIMEOUT_HEADER",
    "GRPC_TIMEOUT_HEADER",
    "REQUEST_ID_HEADER",
    "TIMEOUT_HEADER",
    "Policy",
    "PolicyHolder",
    "decode_timeout",
    "encode_timeout",
    "extract",
    "inject",
    "malformed_headers",
    "new_request_id",
    "parse_request_id",
]

TIMEOUT_HEADER: Final = "x-request-timeout"
"""The remaining budget, in grpc-timeout grammar (``"250m"``)."""

REQUEST_ID_HEADER: Final = "x-request-id"
"""The request id: 1-128 characters of ``[A-Za-z0-9._:-]``."""

GRPC_TIMEOUT_HEADER: Final = "grpc-timeout"
"""gRPC's budget header, read inbound (same grammar as ``TIMEOUT_HEADER``)."""

CONNECT_TIMEOUT_HEADER: Final = "connect-timeout-ms"
"""The Connect protocol's budget header (1-10 digits of milliseconds), read inbound."""

Headers = Mapping[str, str] | Mapping[bytes, bytes] | Iterable[tuple[str | bytes, str | bytes]]
"""What ``extract`` reads: a mapping, or ASGI-style ``(name, value)`` pairs."""

# --------------------------------------------------------------------------------------
# The timeout grammar

_MAX_VALUE: Final = 99_999_999  # 8 digits
_MAX_SECONDS: Final = _MAX_VALUE * 3600.0
# value -> seconds: a correctly rounded quotient for n/u/m/S, an exact product for M/H;
# encode_timeout checks its rounding with the same arithmetic
_DIVISOR: Final = {"n": 1e9, "u": 1e6, "m": 1e3, "S": 1.0}
_FACTOR: Final = {"M": 60.0, "H": 3600.0}
_FINE: Final = (("n", 1e9), ("u", 1e6), ("m", 1e3), ("S", 1.0))  # finest first
_COARSER: Final = {"n": "u", "u": "m", "m": "S"}


def _duration(x: object, what: str) -> float:
    """Seconds from an int, float or timedelta: TypeError/ValueError for anything else."""
    if isinstance(x, timedelta):
        return x.total_seconds()
    if isinstance(x, bool | str | bytes) or not isinstance(x, numbers.Real):
        raise TypeError(
            f"tether: {what} is seconds as an int or float, or a datetime.timedelta; "
            f"got {type(x).__name__} {x!r:.40}"
        )
    try:
        f = float(x)
    except OverflowError:
        f = math.inf if x > 0 else -math.inf  # type: ignore[operator]
    if math.isnan(f):
        raise ValueError(f"tether: {what} must be a number of seconds, got NaN")
    return f


def encode_timeout(seconds: float | timedelta) -> str | None:
    """The grpc-timeout form of a budget: ``encode_timeout(0.25) == "250m"``.

    The shortest exact form is used when there is one; otherwise the value is rounded
    *up* in the finest unit that fits in 8 digits, so ``decode_timeout`` of the result is
    never less than ``seconds`` (a 1 ns budget does not become "already expired") and at
    most one unit of that precision more: under 1 µs for budgets below 100 s, under
    1 ms below 27 hours (the sender's ``policy.margin``, 5 ms, covers it), relative
    error under 1e-5 beyond. A budget of zero or less is ``"0n"``. A budget too large
    to express (over 99,999,999 hours, or ``inf``) means "no deadline": the result is
    ``None`` and nothing should be sent.

    Non-blocking; pure (the same result on every call); thread-safe. No context is
    involved, so none can have already ended.
    Raises ``TypeError`` for a non-number (``bool`` and ``str`` included) and
    ``ValueError`` for NaN.
    """
    s = seconds if type(seconds) is float else _duration(seconds, "a timeout")
    if math.isnan(s):
        raise ValueError("tether: a timeout must be a number of seconds, got NaN")
    if s <= 0:
        return "0n"
    if s > _MAX_SECONDS:
        return None
    # Round up in the finest unit that fits 8 digits (one step corrects the float error
    # of s * per, checked with decode's own arithmetic), then shorten without loss.
    for fine, per in _FINE:
        v = math.ceil(s * per)
        if v > _MAX_VALUE + 1:
            continue
        if v / per < s:
            v += 1
        elif v > 1 and (v - 1) / per >= s:
            v -= 1
        if v > _MAX_VALUE:
            continue
        unit = fine
        while unit != "S" and v % 1000 == 0:
            v //= 1000
            unit = _COARSER[unit]
        if unit == "S" and v % 60 == 0:
            v //= 60
            unit = "M"
            if v % 60 == 0:
                v //= 60
                unit = "H"
        return f"{v}{unit}"
    for unit, mul in (("M", 60.0), ("H", 3600.0)):
        v = math.ceil(s / mul)
        if v * mul < s:
            v += 1
        elif v > 1 and (v - 1) * mul >= s:
            v -= 1
        if v <= _MAX_VALUE:
            if unit == "M" and v % 60 == 0:
                return f"{v // 60}H"
            return f"{v}{unit}"
    return None  # pragma: no cover - s <= _MAX_SECONDS always fits in hours


def decode_timeout(value: str | bytes | None) -> float | None:
    """Seconds from a grpc-timeout value (``"250m"`` -> 0.25), or ``None``.

    ``None`` for an absent value and for anything outside the grammar: 1-8 ASCII digits
    and one of ``H M S m u n``, with no whitespace, sign, or non-ASCII character. Accepts
    ``str`` or ``bytes``; any other type is ``None`` too.

    Non-blocking; pure (the same result on every call); thread-safe. No context is
    involved, so none can have already ended. Never raises.
    """
    if type(value) is bytes:
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    elif type(value) is not str:
        return None
    n = len(value)
    if n < 2 or n > 9:
        return None
    digits = value[:-1]
    if not (digits.isascii() and digits.isdigit()):
        return None
    unit = value[-1]
    div = _DIVISOR.get(unit)
    if div is not None:
        return int(digits) / div
    mul = _FACTOR.get(unit)
    if mul is None:
        return None
    return int(digits) * mul


def _decode_connect(value: str | bytes) -> float | None:
    # Connect: "a positive integer of at most 10 digits" of milliseconds.
    if type(value) is bytes:
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    elif type(value) is not str:
        return None
    if not (0 < len(value) <= 10 and value.isascii() and value.isdigit()):
        return None
    return int(value) / 1e3


# --------------------------------------------------------------------------------------
# Request ids

_REQUEST_ID_RE: Final = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_IDENTITY_RE: Final = re.compile(r"[\x20-\x7e]{1,1024}")


def parse_request_id(value: str | bytes | None) -> str | None:
    """``value`` if it is a valid request id, else ``None``.

    Valid: 1-128 characters of ``[A-Za-z0-9._:-]``. Control characters, spaces, CR/LF,
    non-ASCII and longer values are not. ``bytes`` are read as Latin-1 (so any byte above
    0x7f makes the id invalid); other types are ``None``.

    Non-blocking; pure (the same result on every call); thread-safe. No context is
    involved, so none can have already ended. Never raises.
    """
    if type(value) is bytes:
        value = value.decode("latin-1")
    elif type(value) is not str:
        return None
    return value if _REQUEST_ID_RE.fullmatch(value) else None


def new_request_id() -> str:
    """A fresh request id: the form of ``uuid.uuid4().hex`` (32 lowercase hex digits).

    Random as ``uuid.uuid4()`` is (``os.urandom``), read 4 KiB at a time: one system
    call per 256 ids instead of one per id.

    Non-blocking; a new value on every call; thread-safe (and fork-safe: a child process
    never reuses its parent's ids). No context is involved, so none can have already
    ended. Raises nothing.
    """
    try:
        return _ids_pop()
    except IndexError:
        _refill()
        return new_request_id()


_IDS_PER_READ = 256
_V4 = bytes((b & 0x0F) | 0x40 for b in range(256))  # byte 6: version 4
_VARIANT = bytes((b & 0x3F) | 0x80 for b in range(256))  # byte 8: the RFC 4122 variant
_ids: list[str] = []  # ready ids; list.pop() and list.extend() are atomic
_ids_pop = _ids.pop


def _refill() -> None:
    b = bytearray(os.urandom(16 * _IDS_PER_READ))
    b[6::16] = b[6::16].translate(_V4)
    b[8::16] = b[8::16].translate(_VARIANT)
    h = b.hex()
    _ids.extend([h[i : i + 32] for i in range(0, len(h), 32)])


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_ids.clear)


# --------------------------------------------------------------------------------------
# Malformed-header tally

_tally_lock = threading.Lock()  # protects _tally
_tally: dict[str, int] = {}


def _count(name: str | bytes) -> None:
    key = name.decode("latin-1") if isinstance(name, bytes) else name
    with _tally_lock:
        _tally[key] = _tally.get(key, 0) + 1


def malformed_headers() -> dict[str, int]:
    """How many malformed values ``extract`` ignored, by lowercase header name.

    A process-wide tally since import (for a metric or a test): a snapshot copy, so
    compare two snapshots to count what happened in between. Counted: a timeout header
    outside its grammar, an invalid request id, an invalid identity value from a trusted
    peer. An absent header is not malformed.

    Non-blocking (a short internal lock); a new dict on every call; thread-safe. No
    context involved, so none can have already ended. Raises nothing.
    """
    with _tally_lock:
        return dict(_tally)


# --------------------------------------------------------------------------------------
# Policy

_TRUST_CACHE_MAX: Final = 1024


@dataclass(frozen=True, slots=True)
class Policy:
    """How a server believes its callers' budgets, and how a client sends its own.

    - ``default_timeout``: the budget of a request that sent none (``None``: no deadline
      beyond the parent's).
    - ``max_timeout``: inbound budgets above it are cut to it, unless the peer is
      trusted (``None``: no cap).
    - ``min_timeout``: inbound budgets below it are raised to it (a caller cannot make
      the server give up before it started).
    - ``margin``: subtracted from the remaining budget before it is sent (the trip).
    - ``floor``: an outbound call whose budget (after the margin) is below it is not
      sent; ``inject`` raises ``DeadlineExceeded`` locally instead.
    - ``trusted``: CIDRs (``"10.0.0.0/8"``, ``"::1/128"``, or single addresses) of peers
      allowed to send budgets above ``max_timeout`` and identity values.
    - ``identity``: ``(header, key)`` pairs: a trusted peer's ``header`` sets ``key`` in
      the request's context (e.g. ``(("x-user", USER),)``). Untrusted peers never set
      them.

    Durations are seconds (int, float or ``timedelta``). Construct it or ``replace`` it:
    both validate and raise ``TypeError``/``ValueError`` (``"tether: ..."``) for a
    non-number, a negative, NaN or infinite duration, ``default_timeout > max_timeout``,
    ``min_timeout`` above either, or a malformed CIDR. Immutable, hashable, safe to
    share between threads.

    Added in 0.1.
    """

    default_timeout: float | None = None
    max_timeout: float | None = None
    min_timeout: float = 0.0
    margin: float = 0.005
    floor: float = 0.001
    trusted: tuple[str, ...] = ()
    identity: tuple[tuple[str, Key[str]], ...] = ()
    _networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(
        init=False, repr=False, compare=False
    )
    _identity: dict[str, Key[str]] = field(init=False, repr=False, compare=False)
    _trust_cache: dict[str, bool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        put = object.__setattr__
        for name in ("default_timeout", "max_timeout", "min_timeout", "margin", "floor"):
            v = getattr(self, name)
            if v is None and name in ("default_timeout", "max_timeout"):
                continue
            s = _duration(v, f"Policy.{name}")
            if not (0 <= s < math.inf):
                raise ValueError(
                    f"tether: Policy.{name} must be a finite number of seconds >= 0, "
                    f"got {v!r:.40}"
                    + ("; for no limit pass None" if name.endswith("timeout") else "")
                )
            put(self, name, s)
        d, mx, mn = self.default_timeout, self.max_timeout, self.min_timeout
        if d is not None and mx is not None and d > mx:
            raise ValueError(
                f"tether: Policy.default_timeout ({d}) must not exceed max_timeout ({mx})"
            )
        for name, v in (("default_timeout", d), ("max_timeout", mx)):
            if v is not None and v < mn:
                raise ValueError(f"tether: Policy.min_timeout ({mn}) must not exceed {name} ({v})")
            if v == 0:
                raise ValueError(
                    f"tether: Policy.{name} must be > 0 (every request would be born "
                    "expired); for no limit pass None"
                )
        trusted = self.trusted
        if isinstance(trusted, str | bytes) or not isinstance(trusted, Iterable):
            raise TypeError(
                "tether: Policy.trusted is a tuple of CIDR strings, e.g. "
                f"('10.0.0.0/8', '::1/128'); got {type(trusted).__name__} {trusted!r:.40}"
            )
        trusted = tuple(trusted)
        nets = []
        for cidr in trusted:
            if not isinstance(cidr, str):
                raise TypeError(
                    f"tether: Policy.trusted holds CIDR strings, got {type(cidr).__name__}"
                )
            try:
                nets.append(ipaddress.ip_network(cidr, strict=False))
            except ValueError as e:
                raise ValueError(
                    f"tether: Policy.trusted: {cidr!r} is not a CIDR or an IP address "
                    "(e.g. '10.0.0.0/8', '127.0.0.1', '::1/128')"
                ) from e
        identity = self.identity
        if isinstance(identity, Mapping):
            identity = tuple(identity.items())
        try:
            identity = tuple((str(h), k) for h, k in identity)
        except (TypeError, ValueError) as e:
            raise TypeError(
                "tether: Policy.identity is a tuple of (header, tether.Key) pairs, e.g. "
                "(('x-user', USER),)"
            ) from e
        for h, k in identity:
            if not isinstance(k, Key):
                raise TypeError(
                    f"tether: Policy.identity maps header {h!r} to a tether.Key, "
                    f"got {type(k).__name__}"
                )
        put(self, "trusted", trusted)
        put(self, "identity", identity)
        put(self, "_networks", tuple(nets))
        put(self, "_identity", {h.lower(): k for h, k in identity})
        put(self, "_trust_cache", {})

    def replace(self, **changes: Any) -> Policy:
        """A copy of this policy with ``changes`` applied, validated like the constructor.

        Non-blocking; a new object on every call (this one is unchanged); thread-safe. No
        context is involved, so none can have already ended. Raises ``TypeError`` for an
        unknown field or a wrong type and ``ValueError`` for a bad value
        (``"tether: ..."``).
        """
        names = ("default_timeout", "max_timeout", "min_timeout", "margin", "floor",
                 "trusted", "identity")  # fmt: skip
        unknown = set(changes) - set(names)
        if unknown:
            raise TypeError(
                f"tether: Policy has no field {sorted(unknown)[0]!r}; the fields are "
                + ", ".join(names)
            )
        values = {n: getattr(self, n) for n in names}
        values.update(changes)
        return Policy(**values)

    def trusts(self, peer: str | None) -> bool:
        """Whether ``peer`` (an IP address string) is inside one of ``trusted``.

        ``None`` (no address, e.g. a Unix socket) and unparseable strings are untrusted.

        Non-blocking; the same answer on every call; thread-safe. No context is involved,
        so none can have already ended.
        Never raises.
        """
        if peer is None or not self._networks:
            return False
        hit = self._trust_cache.get(peer)
        if hit is not None:
            return hit
        try:
            addr = ipaddress.ip_address(peer.strip("[]"))
        except (ValueError, TypeError, AttributeError):
            ok = False
        else:
            ok = any(addr in net for net in self._networks)
        if isinstance(peer, str):
            cache = self._trust_cache
            if len(cache) >= _TRUST_CACHE_MAX:
                cache.clear()
            cache[peer] = ok
        return ok


_DEFAULT_POLICY: Final = Policy()


class PolicyHolder:
    """The current ``Policy`` of a server, replaceable at run time.

    Pass it wherever a policy is accepted (``extract``, the server middleware): each
    request reads ``holder.policy`` once, when it starts, so in-flight requests keep
    the policy they started with and new requests see an update at once.

    Added in 0.1.
    """

    __slots__ = ("_lock", "_policy")

    def __init__(self, policy: Policy | None = None) -> None:
        """Hold ``policy`` (default: ``Policy()``).

        Non-blocking; thread-safe. Raises ``TypeError`` if ``policy`` is not a
        ``Policy``. No context involved, so none can have already ended.
        """
        if policy is None:
            policy = _DEFAULT_POLICY
        elif not isinstance(policy, Policy):
            raise TypeError(
                f"tether: PolicyHolder holds a propagation.Policy, got {type(policy).__name__}"
            )
        self._lock = threading.Lock()  # serialises update(); readers take no lock
        self._policy = policy

    @property
    def policy(self) -> Policy:
        """The current policy.

        Non-blocking; lock-free; thread-safe; idempotent, though another thread's
        ``update`` may change it between calls. Raises nothing; no context is involved,
        so none has ended.
        """
        return self._policy

    def update(self, **changes: Any) -> Policy:
        """Swap in ``policy.replace(**changes)`` atomically, and return the new policy.

        Concurrent updates do not lose each other's changes. Requests already running
        keep their policy. Non-blocking (a short internal lock); not idempotent in
        general (each call makes a new policy); thread-safe. No context involved, so
        none can have already ended. Raises what ``Policy.replace`` raises, leaving the
        current policy in place.
        """
        with self._lock:
            new = self._policy.replace(**changes)
            self._policy = new
        return new

    def __repr__(self) -> str:
        return f"PolicyHolder({self._policy!r})"


def _resolve(policy: Policy | PolicyHolder | None) -> Policy:
    if policy is None:
        return _DEFAULT_POLICY
    if type(policy) is Policy:
        return policy
    if isinstance(policy, PolicyHolder):
        return policy._policy
    if isinstance(policy, Policy):
        return policy
    raise TypeError(
        "tether: policy is a propagation.Policy, a propagation.PolicyHolder or None; "
        f"got {type(policy).__name__}"
    )


# --------------------------------------------------------------------------------------
# inject / extract

_T, _G, _C, _R = 1, 2, 3, 4
_KIND: Final[dict[str | bytes, int]] = {}
for _name, _kind in ((TIMEOUT_HEADER, _T), (GRPC_TIMEOUT_HEADER, _G),
                     (CONNECT_TIMEOUT_HEADER, _C), (REQUEST_ID_HEADER, _R)):  # fmt: skip
    _KIND[_name] = _kind
    _KIND[_name.encode()] = _kind
del _name, _kind


def inject(
    ctx: Context,
    headers: MutableMapping[str, str],
    *,
    policy: Policy | PolicyHolder | None = None,
) -> None:
    """Write ``ctx``'s request id and remaining budget into outbound ``headers``.

    Sets ``x-request-id`` to ``ctx.value(tether.REQUEST_ID)`` when it is a valid id, and
    ``x-request-timeout`` to ``ctx.remaining() - policy.margin`` when ``ctx`` has a
    deadline (encoded by ``encode_timeout``, so rounded up by less than one unit, but
    never to more than ``ctx.remaining()``; a context without deadline sends no
    timeout). Existing values of these two names are
    overwritten; names are written in lowercase.

    Non-blocking; idempotent (the same headers again, with the budget as it is now);
    thread-safe as far as ``headers`` is. If ``ctx`` already ended it raises its error
    (``ctx.check()``) and writes nothing; if the budget left after the margin is below
    ``policy.floor`` it raises ``tether.DeadlineExceeded`` without writing: the call
    would be wasted. Raises ``TypeError`` for a non-Context ``ctx`` or a bad ``policy``.
    """
    _owner(ctx)
    pol = _resolve(policy)
    if ctx.err() is not None:
        ctx.check()
    remaining = ctx.remaining()
    encoded = None
    if remaining is not None:
        budget = remaining - pol.margin
        if budget < pol.floor:
            _events.budget_exhausted("outbound")
            err = DeadlineExceeded()
            err.add_note(
                f"tether: {max(remaining, 0.0) * 1e3:.3f} ms left, {budget * 1e3:.3f} ms after "
                f"policy.margin, below policy.floor ({pol.floor * 1e3:.3f} ms): not sent"
            )
            raise err
        encoded = encode_timeout(budget)
        if encoded is not None and decode_timeout(encoded) > remaining:  # type: ignore[operator]
            # Rounding up went past what is left (budgets over ~27 h with a 5 ms
            # margin, or margin=0): one unit less, so a callee never gets more.
            encoded = f"{int(encoded[:-1]) - 1}{encoded[-1]}"
    rid = ctx.value(REQUEST_ID)
    if rid is not None and parse_request_id(rid) is not None:
        headers[REQUEST_ID_HEADER] = rid
    if encoded is not None:
        headers[TIMEOUT_HEADER] = encoded


def extract(
    parent: Context,
    headers: Headers,
    *,
    peer: str | None = None,
    policy: Policy | PolicyHolder | None = None,
) -> Scope:
    """Derive an inbound request's context from its headers: ``ctx, cancel = extract(...)``.

    The child of ``parent`` carries:

    - ``tether.REQUEST_ID``: the first valid ``x-request-id``, else a fresh
      ``new_request_id()`` (which the server should echo and send downstream);
    - a deadline: the smallest valid budget among ``x-request-timeout``,
      ``grpc-timeout`` and ``connect-timeout-ms``, clamped to ``policy.min_timeout``
      and, unless ``peer`` is trusted, to ``policy.max_timeout``; without one,
      ``policy.default_timeout``; without that, only ``parent``'s deadline;
    - identity values from ``policy.identity`` headers, only if ``peer`` is trusted.

    ``headers`` is a ``Mapping`` (names in any case) or ASGI-style ``(name, value)``
    pairs of ``bytes`` or ``str``. ``peer`` is the caller's IP address (``None``:
    untrusted). Returns a ``Scope``: the caller must cancel it (``with`` or ``cancel()``)
    when the request ends.

    Non-blocking; each call makes a new context; thread-safe. Never raises on header
    content: malformed values are ignored and counted (``malformed_headers()``). If
    ``parent`` already ended, the child is born ended. Raises ``TypeError`` for a
    non-Context ``parent``, ``headers`` that are neither a mapping nor pairs, or a bad
    ``policy``.
    """
    _owner(parent)
    pol = _resolve(policy)
    budget: float | None = None
    rid: str | None = None
    ident: list[tuple[Key[str], str]] | None = None
    idmap = pol._identity
    htype = type(headers)
    if htype is list or htype is tuple:  # ASGI: skip the (slow, negative) ABC check
        items: Any = headers
    elif htype is dict or isinstance(headers, Mapping):
        items = headers.items()  # type: ignore[union-attr]
    else:
        items = headers
    try:
        for name, value in items:
            try:
                lname = name.lower()
            except AttributeError:
                continue
            kind = _KIND.get(lname)
            if kind is None:
                if idmap:
                    key = idmap.get(
                        lname.decode("latin-1") if isinstance(lname, bytes) else str(lname)
                    )
                    if key is not None and pol.trusts(peer):
                        v = value.decode("latin-1") if type(value) is bytes else value
                        if type(v) is str and _IDENTITY_RE.fullmatch(v):
                            (ident if ident is not None else (ident := [])).append((key, v))
                        else:
                            _count(lname)
                continue
            if kind == _R:
                if rid is None:
                    rid = parse_request_id(value)
                    if rid is None:
                        _count(lname)
                continue
            t = _decode_connect(value) if kind == _C else decode_timeout(value)
            if t is None:
                _count(lname)
            elif budget is None or t < budget:
                budget = t
    except (TypeError, ValueError) as e:
        raise TypeError(
            "tether: headers is a Mapping[str, str] or an iterable of (name, value) pairs "
            f"(bytes or str, as in an ASGI scope); got {type(headers).__name__}"
        ) from e
    _events.inbound_budget(budget)  # what the caller sent, before the policy's clamp
    if budget is None:
        budget = pol.default_timeout
    else:
        mx = pol.max_timeout
        if mx is not None and budget > mx and not pol.trusts(peer):
            budget = mx
        budget = max(budget, pol.min_timeout)
    # One owning node carrying the values (with_value + with_cancel would make two); an
    # observer sees them at `created`. _derive directly, not _derive_values: the creation
    # site is two frames up from _derive, and must be extract's caller.
    old = parent._values
    values = {**old, REQUEST_ID: rid if rid is not None else new_request_id()}
    if ident is not None:
        values.update(ident)
    if budget is None:
        cf = _derive(parent, "with_cancel", None, False, None, values=values)
    else:
        cf = _derive(
            parent, "with_deadline", _clock.now() + budget, budget <= 0, None, values=values
        )
    return Scope((cf._ctx, cf))
