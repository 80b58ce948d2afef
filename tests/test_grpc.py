"""tether.integrations.grpc: real grpcio servers and channels on loopback, no mocks."""

from __future__ import annotations

import math
import subprocess
import sys
import threading
import time

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tether
from _grpc_service import SERVICE, Service, channel, dumps, loads, serve
from tether import propagation
from tether.integrations import grpc as tgrpc
from tether.integrations.grpc import _common

pytestmark = pytest.mark.realtime

M = f"/{SERVICE}/"


@pytest.fixture
def server():
    svc = Service("leaf")
    with serve(svc, [tgrpc.ServerInterceptor()]) as addr:
        yield svc, addr


@pytest.fixture
def client(server):
    svc, addr = server
    with channel(addr, tgrpc.ClientInterceptor()) as ch:
        yield svc, ch


def uu(ch, name):
    return ch.unary_unary(M + name)


def with_rid(rid, parent=None):
    return tether.with_value(parent or tether.background(), tether.REQUEST_ID, rid)


# --------------------------------------------------------------------------------------
# Server side


def test_server_context_without_deadline_or_request_id(server):
    _svc, addr = server
    with channel(addr) as ch:  # a bare client: no tether on this side
        got = loads(uu(ch, "Info")(b""))
    assert got["remaining"] is None  # grpcio's ~9.2e18 s "no deadline" maps to none
    assert got["time_remaining"] is None
    assert propagation.parse_request_id(got["request_id"]) == got["request_id"]
    assert len(got["request_id"]) == 32  # a fresh uuid4 hex
    assert got["live"]
    assert not got["is_background"]


def test_server_context_takes_the_call_deadline_and_request_id(server):
    _svc, addr = server
    with channel(addr) as ch:
        got = loads(uu(ch, "Info")(b"", timeout=2.0, metadata=(("x-request-id", "req-1"),)))
    assert got["request_id"] == "req-1"
    assert 1.5 < got["remaining"] <= 2.02  # a bare client: grpc-core rounds 2 s up
    # the context's deadline is the call's (within the time between the two reads)
    assert abs(got["remaining"] - got["time_remaining"]) < 0.05


# gRPC itself only carries printable ASCII in text metadata (grpcio refuses a tab or
# non-ASCII before sending), so these are the invalid ids a peer can actually send.
@pytest.mark.parametrize("bad", ["has space", "x" * 129, "semi;colon", 'quo"te', "a/b"])
def test_server_replaces_an_invalid_request_id(server, bad):
    _svc, addr = server
    before = propagation.malformed_headers().get("x-request-id", 0)
    with channel(addr) as ch:
        got = loads(uu(ch, "Info")(b"", metadata=(("x-request-id", bad),)))
    assert got["request_id"] != bad
    assert len(got["request_id"]) == 32
    assert propagation.malformed_headers()["x-request-id"] == before + 1


@pytest.mark.parametrize("bad", ["garbage", "-5S", "123456789m", "1 S", "5s"])
def test_server_ignores_a_malformed_budget_in_metadata(server, bad):
    _svc, addr = server
    before = propagation.malformed_headers().get("x-request-timeout", 0)
    with channel(addr) as ch:
        got = loads(uu(ch, "Info")(b"", timeout=3, metadata=(("x-request-timeout", bad),)))
    assert 2 < got["remaining"] <= 3.02  # the call's own deadline stands
    assert propagation.malformed_headers()["x-request-timeout"] == before + 1


def test_server_a_smaller_budget_in_metadata_wins(server):
    """A caller (or a proxy) may also send tether's header: the smallest budget wins."""
    _svc, addr = server
    with channel(addr) as ch:
        got = loads(uu(ch, "Info")(b"", timeout=3, metadata=(("x-request-timeout", "400m"),)))
        assert got["remaining"] <= 0.4
        got = loads(uu(ch, "Info")(b"", timeout=0.5, metadata=(("x-request-timeout", "9S"),)))
        assert got["remaining"] <= 0.5


def test_server_all_four_arities_see_their_context(server):
    _svc, addr = server
    md = (("x-request-id", "four"),)
    with channel(addr) as ch:
        a = loads(uu(ch, "Info")(b"", timeout=5, metadata=md))
        b = [loads(r) for r in ch.unary_stream(M + "InfoStream")(dumps(3), timeout=5, metadata=md)]
        c = loads(ch.stream_unary(M + "Collect")(iter([b"1", b"2"]), timeout=5, metadata=md))
        d = [
            loads(r)
            for r in ch.stream_stream(M + "Chat")(iter([b"1", b"2"]), timeout=5, metadata=md)
        ]
    for got in [a, *b, c, *d]:
        assert got["request_id"] == "four"
        # a bare grpcio client: grpc-core rounds 5 s up by up to 10 ms (see below)
        assert 4 < got["remaining"] <= 5.02
        assert got["live"]
    assert [x["i"] for x in b] == [0, 1, 2]
    assert c["n"] == 2
    assert len(d) == 2


def test_sync_handler_blocked_on_done_wakes_at_the_deadline(server):
    svc, addr = server
    with channel(addr) as ch:
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as ei:
            uu(ch, "Wait")(b"", timeout=0.3)
        assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    ev = svc.events.get(timeout=5)
    assert ev.err == "DeadlineExceeded"
    assert 0.25 < ev.ended - ev.started < 0.3 + 0.2
    assert time.monotonic() - t0 < 0.3 + 0.5


def test_client_cancel_ends_the_server_context(server):
    svc, addr = server
    with channel(addr) as ch:
        fut = uu(ch, "Wait").future(b"")
        assert svc.blocked.wait(5)
        t0 = time.monotonic()
        assert fut.cancel()
        ev = svc.events.get(timeout=5)
    assert ev.err == "Canceled"
    assert ev.cause == "ClientCancelled"
    assert ev.ended - t0 < 0.1, f"server saw the cancel after {(ev.ended - t0) * 1e3:.1f} ms"


def test_client_cancel_ends_a_streaming_handler(server):
    svc, addr = server
    with channel(addr) as ch:
        it = ch.unary_stream(M + "WaitStream")(b"")
        next(it)
        assert svc.blocked.wait(5)  # the handler is blocked after its first message
        t0 = time.monotonic()
        it.cancel()
        ev = svc.events.get(timeout=5)
    assert ev.cause == "ClientCancelled"
    assert ev.ended - t0 < 0.1


def test_context_ends_when_the_handler_returns(server):
    svc, _addr = server
    seen = []
    orig = svc.info

    def info(request, sctx):
        seen.append(tether.current())
        return orig(request, sctx)

    svc.info = info
    with serve(svc, [tgrpc.ServerInterceptor()]) as addr2, channel(addr2) as ch:
        uu(ch, "Info")(b"")
        s = ch.unary_stream(M + "InfoStream")
        svc.info_stream, orig_stream = (
            lambda r, c: (seen.append(tether.current()), (yield from orig_stream(r, c)))[1],
            svc.info_stream,
        )
        list(s(dumps(2)))
    assert len(seen) == 1
    assert seen[0].err() is not None
    assert tether.cause(seen[0]) is seen[0].err()


@pytest.mark.parametrize(
    ("kind", "code"),
    [
        ("deadline", grpc.StatusCode.DEADLINE_EXCEEDED),
        ("canceled", grpc.StatusCode.CANCELLED),
        ("value", grpc.StatusCode.UNKNOWN),  # not tether's: passes through untouched
    ],
)
def test_error_mapping(server, kind, code):
    _svc, addr = server
    with channel(addr) as ch:
        with pytest.raises(grpc.RpcError) as ei:
            uu(ch, "Fail")(dumps(kind))
    assert ei.value.code() == code
    if kind != "value":
        assert "context" in ei.value.details()


def test_error_mapping_without_the_interceptor_is_unknown():
    """The mapping above is the interceptor's doing: bare grpcio says UNKNOWN."""
    svc = Service()
    with serve(svc) as addr, channel(addr) as ch:
        with pytest.raises(grpc.RpcError) as ei:
            uu(ch, "Fail")(dumps("deadline"))
    assert ei.value.code() == grpc.StatusCode.UNKNOWN


def test_context_error_escaping_a_response_stream_is_deadline_exceeded():
    svc = Service()
    policy = propagation.Policy(max_timeout=0.2)
    with serve(svc, [tgrpc.ServerInterceptor(policy)]) as addr, channel(addr) as ch:
        it = ch.unary_stream(M + "WaitStream")(b"", timeout=10)
        first = loads(next(it))
        assert first["remaining"] <= 0.2
        with pytest.raises(grpc.RpcError) as ei:
            next(it)
    assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert svc.events.get(timeout=5).err == "DeadlineExceeded"


def test_policy_max_timeout_clamps_an_untrusted_caller():
    svc = Service()
    policy = propagation.Policy(max_timeout=0.5)
    with serve(svc, [tgrpc.ServerInterceptor(policy)]) as addr, channel(addr) as ch:
        got = loads(uu(ch, "Info")(b"", timeout=30))
        assert got["remaining"] <= 0.5
        assert got["time_remaining"] > 29  # grpc's own deadline is the caller's
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as ei:
            uu(ch, "Wait")(b"", timeout=30)
        assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - t0 < 0.5 + 0.5


def test_policy_trusted_peer_passes_a_longer_deadline():
    svc = Service()
    policy = propagation.Policy(max_timeout=0.5, trusted=("127.0.0.0/8",))
    with serve(svc, [tgrpc.ServerInterceptor(policy)]) as addr, channel(addr) as ch:
        got = loads(uu(ch, "Info")(b"", timeout=30))
    assert got["remaining"] > 29


def test_policy_default_timeout_applies_when_the_caller_sets_none():
    svc = Service()
    policy = propagation.Policy(default_timeout=0.75)
    with serve(svc, [tgrpc.ServerInterceptor(policy)]) as addr, channel(addr) as ch:
        got = loads(uu(ch, "Info")(b""))
        assert 0.5 < got["remaining"] <= 0.75
        got = loads(uu(ch, "Info")(b"", timeout=5))
        assert got["remaining"] > 4  # a caller's deadline wins over the default


def test_policy_holder_update_takes_effect_for_new_calls_only():
    svc = Service()
    holder = propagation.PolicyHolder(propagation.Policy(max_timeout=5))
    with serve(svc, [tgrpc.ServerInterceptor(holder)]) as addr, channel(addr) as ch:
        fut = uu(ch, "Wait").future(b"", timeout=30)  # in flight under max_timeout=5
        time.sleep(0.2)
        holder.update(max_timeout=0.3)
        got = loads(uu(ch, "Info")(b"", timeout=30))
        assert got["remaining"] <= 0.3
        fut.cancel()
        ev = svc.events.get(timeout=5)
    assert ev.cause == "ClientCancelled"  # not ended at 0.3 s: it kept max_timeout=5
    assert ev.ended - ev.started > 0.15


def test_policy_min_timeout_cannot_outlive_the_rpc():
    """min_timeout raises a budget, but the RPC's end still ends the context."""
    svc = Service()
    policy = propagation.Policy(min_timeout=5)
    with serve(svc, [tgrpc.ServerInterceptor(policy)]) as addr, channel(addr) as ch:
        with pytest.raises(grpc.RpcError):
            uu(ch, "Wait")(b"", timeout=0.2)
        ev = svc.events.get(timeout=5)
    assert ev.err == "Canceled"
    assert ev.cause == "DeadlineExceeded"
    assert ev.ended - ev.started < 0.2 + 0.3


def test_server_interceptor_rejects_a_bad_policy():
    with pytest.raises(TypeError, match=r"^tether: policy is a tether\.propagation\.Policy"):
        tgrpc.ServerInterceptor({"max_timeout": 1})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^tether: "):
        tgrpc.ClientInterceptor(policy=1.0)  # type: ignore[arg-type]


def test_unknown_method_passes_through(server):
    _svc, addr = server
    with channel(addr) as ch:
        with pytest.raises(grpc.RpcError) as ei:
            ch.unary_unary("/nope.Nope/Nothing")(b"")
    assert ei.value.code() == grpc.StatusCode.UNIMPLEMENTED


# --------------------------------------------------------------------------------------
# Client side


def test_client_sends_request_id_and_clamped_budget(client):
    _svc, ch = client
    with tether.with_timeout(with_rid("edge-1"), 1.0) as ctx:
        left = ctx.remaining()
        got = loads(uu(ch, "Info")(b"", timeout=30))
    assert got["request_id"] == "edge-1"
    assert got["remaining"] <= left - propagation.Policy().margin
    assert got["remaining"] > 0.8


def test_client_keeps_a_smaller_explicit_timeout(client):
    _svc, ch = client
    with tether.with_timeout(tether.background(), 10.0):
        got = loads(uu(ch, "Info")(b"", timeout=0.5))
    assert 0.3 < got["remaining"] <= 0.5


def test_client_caller_request_id_metadata_wins(client):
    _svc, ch = client
    with tether.with_cancel(with_rid("from-ctx")):
        got = loads(uu(ch, "Info")(b"", metadata=(("x-request-id", "explicit"),)))
    assert got["request_id"] == "explicit"


def test_client_without_a_context_sends_no_deadline(client):
    _svc, ch = client
    got = loads(uu(ch, "Info")(b""))
    assert got["remaining"] is None


def test_client_below_floor_raises_locally_and_sends_nothing(client):
    svc, ch = client
    with tether.with_timeout(tether.background(), 0.004):  # < 5 ms margin + 1 ms floor
        with pytest.raises(tether.DeadlineExceeded) as ei:
            uu(ch, "Info")(b"")
        with pytest.raises(tether.DeadlineExceeded):
            uu(ch, "Info").future(b"").result()
        with pytest.raises(tether.DeadlineExceeded):
            next(iter(ch.unary_stream(M + "InfoStream")(b"")))
    assert "policy.floor" in "".join(ei.value.__notes__)
    assert svc.calls == 0


def test_client_ended_context_raises_its_error_and_sends_nothing(client):
    svc, ch = client
    parent, cancel = tether.with_cancel(tether.background())
    cancel()
    with tether.with_cancel(parent):  # born ended
        with pytest.raises(tether.Canceled):
            uu(ch, "Info")(b"")
        with pytest.raises(tether.Canceled):
            ch.stream_unary(M + "Collect")(iter([b"1"]))
    assert svc.calls == 0


def test_client_deadline_raises_tether_error_not_grpc(client):
    svc, ch = client
    t0 = time.monotonic()
    with tether.with_timeout(tether.background(), 0.3):
        with pytest.raises(tether.DeadlineExceeded) as ei:
            uu(ch, "Wait")(b"")
    assert isinstance(ei.value.__cause__, grpc.RpcError)
    assert ei.value.__cause__.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - t0 < 0.3 + 0.3
    assert svc.events.get(timeout=5).err == "DeadlineExceeded"


def test_client_deadline_error_is_raised_once_the_context_ended(client):
    """grpcio's deadline fires up to margin + one grid step before the context's; the
    error waits for the context so that what is raised is ``ctx.err()`` itself."""
    _svc, ch = client
    with tether.with_timeout(tether.background(), 0.3) as ctx:
        with pytest.raises(tether.DeadlineExceeded):
            uu(ch, "Wait").future(b"").result()
        assert isinstance(ctx.err(), tether.DeadlineExceeded)


def test_client_a_servers_own_deadline_stays_grpc():
    """The server's policy ends the call long before the caller's budget: that is the
    server's deadline, not the caller's; grpcio's error passes through, at once."""
    svc = Service()
    policy = propagation.Policy(max_timeout=0.2)
    with serve(svc, [tgrpc.ServerInterceptor(policy)]) as addr:
        with channel(addr, tgrpc.ClientInterceptor()) as ch:
            with tether.with_timeout(tether.background(), 30) as ctx:
                t0 = time.monotonic()
                with pytest.raises(grpc.RpcError) as ei:
                    uu(ch, "Wait")(b"")
                assert ctx.err() is None
    assert not isinstance(ei.value, tether.ContextError)
    assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - t0 < 0.2 + 0.5


def test_client_explicit_timeout_error_stays_grpc(client):
    """The caller's own shorter timeout is not the context's: grpcio's error stands."""
    svc, ch = client
    with tether.with_timeout(tether.background(), 10):
        with pytest.raises(grpc.RpcError) as ei:
            uu(ch, "Wait")(b"", timeout=0.2)
    assert not isinstance(ei.value, tether.ContextError)
    assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    svc.events.get(timeout=5)


def test_client_other_errors_pass_through(client):
    _svc, ch = client
    with tether.with_timeout(tether.background(), 5):
        with pytest.raises(grpc.RpcError) as ei:
            uu(ch, "Fail")(dumps("value"))
    assert ei.value.code() == grpc.StatusCode.UNKNOWN


def test_client_future_is_cancelled_when_the_context_ends(client):
    svc, ch = client
    sc = tether.with_cancel(tether.background())
    with sc:
        fut = uu(ch, "Wait").future(b"")
        assert svc.blocked.wait(5)
        t0 = time.monotonic()
        sc.cancel(ValueError("caller gone"))
        with pytest.raises(tether.Canceled) as ei:
            fut.result(5)
        assert isinstance(ei.value.__cause__, grpc.FutureCancelledError)
        assert isinstance(fut.exception(5), tether.Canceled)
        assert fut.cancelled()
    ev = svc.events.get(timeout=5)
    assert ev.cause == "ClientCancelled"
    assert ev.ended - t0 < 0.1


def test_client_stream_is_cancelled_when_the_context_ends(client):
    svc, ch = client
    sc = tether.with_cancel(tether.background())
    with sc:
        it = ch.unary_stream(M + "WaitStream")(b"")
        assert loads(next(it))["live"]
        assert svc.blocked.wait(5)
        timer = threading.Timer(0.1, sc.cancel)
        timer.start()
        t0 = time.monotonic()
        with pytest.raises(tether.Canceled):
            next(it)
        timer.join()
    assert time.monotonic() - t0 < 0.1 + 0.2
    ev = svc.events.get(timeout=5)
    assert ev.cause == "ClientCancelled"


def test_client_bidi_stream_budget_and_cancel(client):
    svc, ch = client
    sc = tether.with_timeout(with_rid("bidi"), 5)
    with sc:
        it = ch.stream_stream(M + "Chat")(iter([b"1", dumps("wait")]))
        got = loads(next(it))
        assert got["request_id"] == "bidi"
        assert got["remaining"] <= 5
        assert svc.blocked.wait(5)
        timer = threading.Timer(0.1, sc.cancel)
        timer.start()
        with pytest.raises(tether.Canceled):
            next(it)
        timer.join()
    assert svc.events.get(timeout=5).cause == "ClientCancelled"


def test_client_stream_unary_budget(client):
    _svc, ch = client
    with tether.with_timeout(with_rid("su"), 2):
        resp, call = ch.stream_unary(M + "Collect").with_call(iter([b"a", b"b", b"c"]))
    got = loads(resp)
    assert got == {**got, "n": 3, "request_id": "su"}
    assert got["remaining"] <= 2
    assert call.code() == grpc.StatusCode.OK


def test_client_blocking_call_is_not_cancelled_before_its_deadline(client):
    """Documented limit: grpcio gives no handle to a blocking unary call."""
    svc, ch = client
    sc = tether.with_timeout(tether.background(), 0.5)
    with sc:
        timer = threading.Timer(0.1, sc.cancel)
        timer.start()
        t0 = time.monotonic()
        with pytest.raises(tether.Canceled):  # the context's error, at the deadline
            uu(ch, "Wait")(b"")
        timer.join()
    assert time.monotonic() - t0 > 0.4
    svc.events.get(timeout=5)


# --------------------------------------------------------------------------------------
# grpc-core's rounding of grpc-timeout, and its compensation


BUDGETS = [0.1234, 0.9999, 1.0001, 1.2301, 2.5555, 9.9991, 10.0501, 12.301, 55.55]


@pytest.mark.parametrize("budget", BUDGETS)
def test_the_server_never_sees_more_than_the_caller_had(budget):
    """With margin 0 only the compensation stands between grpc-core's round-up and
    the server: ``time_remaining()`` there must not exceed the caller's remaining."""
    svc = Service()
    policy = propagation.Policy(margin=0, floor=0)
    with serve(svc, [tgrpc.ServerInterceptor()]) as addr:
        with channel(addr, tgrpc.ClientInterceptor(policy=policy)) as ch:
            with tether.with_timeout(tether.background(), budget) as ctx:
                left = ctx.remaining()
                got = loads(uu(ch, "Info")(b""))
        with channel(addr) as bare:  # what grpcio alone does with the same timeout
            t0 = time.monotonic()
            raw = loads(uu(bare, "Info")(b"", timeout=budget))
            raw_left = budget - (time.monotonic() - t0)
    assert got["time_remaining"] <= left
    assert got["remaining"] <= left
    # and the compensation costs at most one step of grpc-core's grid (+ slack)
    step = 0.001 if budget < 1 else 0.01 if budget < 10 else 0.1
    assert got["time_remaining"] > left - step - _common.GRPC_SLACK - 0.05
    if _common.grpc_core_encoding(budget) > budget + 0.002:
        # grpc-core rounded up: uncompensated, the server gets more than was left
        assert raw["time_remaining"] > raw_left


@given(st.floats(min_value=0.0, max_value=99_999.0, allow_nan=False))
def test_wire_timeout_encodes_within_budget(budget):
    wire = tgrpc.wire_timeout(budget)
    assert 0 <= wire <= budget
    if wire == 0:  # under GRPC_SLACK (+ one step) there is nothing safe to send
        assert budget < 2 * _common.GRPC_SLACK
        return
    # whatever grpc-core adds (deadline rounding, a stale clock) stays within budget
    assert _common.grpc_core_encoding(wire + _common.GRPC_SLACK) <= budget + 1e-9


@pytest.mark.parametrize(
    ("budget", "wire"),
    [(0.5004, 0.497), (1.2399, 1.227), (1.23, 1.227), (12.34, 12.297), (150.5, 149.997)],
)
def test_wire_timeout_examples(budget, wire):
    assert math.isclose(tgrpc.wire_timeout(budget), wire, abs_tol=1e-9)


@pytest.mark.parametrize(
    ("peer", "ip"),
    [
        ("ipv4:127.0.0.1:50051", "127.0.0.1"),
        ("ipv6:[::1]:50051", "::1"),
        ("ipv6:%5B::1%5D:50051", "::1"),
        ("ipv6:%5Bfe80::1%5D:1", "fe80::1"),
        ("unix:/tmp/sock", None),
        ("", None),
        (None, None),
        ("garbage", None),
    ],
)
def test_peer_ip(peer, ip):
    assert _common.peer_ip(peer) == ip


@given(st.text(max_size=80))
def test_peer_ip_never_raises(peer):
    ip = _common.peer_ip(peer)
    assert ip is None or isinstance(ip, str)


_HEADER = st.sampled_from(
    ["x-request-id", "x-request-timeout", "grpc-timeout", "connect-timeout-ms", "x-other"]
)


@given(
    st.lists(st.tuples(_HEADER, st.one_of(st.text(max_size=40), st.binary(max_size=40)))),
    st.one_of(st.none(), st.floats(allow_nan=False)),
    st.text(max_size=40),
)
def test_server_scope_never_raises_on_what_a_peer_sends(metadata, remaining, peer):
    """Any metadata, any grpcio-reported budget, any peer string: a context with a
    valid request id and a budget within the policy, never an exception."""
    policy = propagation.Policy(max_timeout=10)
    ctx, cancel = _common.server_scope(remaining, metadata, peer, policy)
    try:
        rid = ctx.value(tether.REQUEST_ID)
        assert propagation.parse_request_id(rid) == rid
        left = ctx.remaining()
        assert left is None or left <= 10
    finally:
        cancel()


# --------------------------------------------------------------------------------------
# The three-hop chain: client -> middle -> leaf, all sync grpcio


@pytest.fixture
def chain():
    leaf, middle = Service("leaf"), Service("middle")
    with serve(leaf, [tgrpc.ServerInterceptor()]) as leaf_addr:
        with serve(middle, [tgrpc.ServerInterceptor()]) as mid_addr:
            with channel(mid_addr, tgrpc.ClientInterceptor()) as ch:
                yield ch, middle, leaf, leaf_addr


def test_chain_budget_shrinks_and_the_edge_gets_deadline_exceeded(chain):
    ch, middle, leaf, leaf_addr = chain
    req = dumps({"to": leaf_addr, "method": "Wait"})
    t0 = time.monotonic()
    with tether.with_timeout(with_rid("chain-1"), 0.3):
        with pytest.raises(tether.DeadlineExceeded):
            uu(ch, "Relay")(req)
    elapsed = time.monotonic() - t0
    lev, mev = leaf.events.get(timeout=5), middle.events.get(timeout=5)
    assert elapsed < 0.3 + 0.15, elapsed
    assert lev.err == "DeadlineExceeded"  # the leaf's handler saw its context end
    assert lev.request_id == mev.request_id == "chain-1"


def test_chain_budgets_seen_per_hop(chain):
    ch, _middle, _leaf, leaf_addr = chain
    req = dumps({"to": leaf_addr, "method": "Info"})
    with tether.with_timeout(with_rid("chain-2"), 0.3):
        got = loads(uu(ch, "Relay")(req))
    mid, down = got["hop"], got["down"]
    assert down["remaining"] < mid["remaining"] < 0.3
    assert down["request_id"] == mid["request_id"] == "chain-2"


def test_chain_cancel_reaches_the_leaf(chain, capsys):
    ch, middle, leaf, leaf_addr = chain
    req = dumps({"to": leaf_addr, "method": "Wait"})
    sc = tether.with_cancel(tether.background())
    with sc:
        fut = uu(ch, "Relay").future(req)
        assert leaf.blocked.wait(5)
        t0 = time.monotonic()
        sc.cancel()
        with pytest.raises(tether.Canceled):
            fut.result(5)
    lev, mev = leaf.events.get(timeout=5), middle.events.get(timeout=5)
    assert lev.err == "Canceled"
    assert lev.cause == "ClientCancelled"
    assert mev.err == "Canceled"
    with capsys.disabled():
        print(
            f"\n[grpc sync chain] cancel -> middle {(mev.ended - t0) * 1e3:.1f} ms, "
            f"-> leaf {(lev.ended - t0) * 1e3:.1f} ms"
        )
    assert lev.ended - t0 < 0.1


# --------------------------------------------------------------------------------------
# Packaging


def test_missing_grpcio_names_the_extra():
    code = (
        "import sys; sys.modules['grpc'] = None\n"
        "try:\n"
        "    import tether.integrations.grpc\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "pip install 'tether[grpc]'" in out.stdout, out.stdout + out.stderr
    assert out.stdout.startswith("tether: ")


def test_import_tether_does_not_import_grpc():
    code = "import sys, tether, tether.propagation; print('grpc' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
