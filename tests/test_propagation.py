"""tether.propagation: the timeout grammar, request ids, inject/extract and the policy."""

from __future__ import annotations

import math
import re
import threading
import uuid
from datetime import timedelta

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

import tether
from tether import propagation as p

UNIT_SECONDS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
GRAMMAR = re.compile(r"[0-9]{1,8}[HMSmun]")
RID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


# ---------------------------------------------------------------- encode / decode


@pytest.mark.parametrize(
    ("seconds", "wire"),
    [
        (0.25, "250m"),
        (0.3, "300m"),
        (1, "1S"),
        (2.5, "2500m"),
        (90, "90S"),
        (5400, "90M"),
        (3600, "1H"),
        (1e-9, "1n"),
        (1e-10, "1n"),  # rounded up: a budget is never rounded to "expired"
        (0.123456789, "123457u"),  # 9 digits of ns do not fit: up to the next µs
        (0.0000015, "1500n"),
        (timedelta(milliseconds=1500), "1500m"),
        (0, "0n"),
        (-3, "0n"),
        (99_999_999 * 3600.0, "99999999H"),
    ],
)
def test_encode_examples(seconds, wire):
    assert p.encode_timeout(seconds) == wire


@pytest.mark.parametrize("seconds", [math.inf, 1e20, 99_999_999 * 3600.0 + 1])
def test_encode_too_large_means_no_deadline(seconds):
    assert p.encode_timeout(seconds) is None


def test_encode_misuse():
    with pytest.raises(TypeError, match=r"^tether: "):
        p.encode_timeout("250m")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^tether: "):
        p.encode_timeout(True)
    with pytest.raises(ValueError, match=r"^tether: .*NaN"):
        p.encode_timeout(math.nan)


@pytest.mark.parametrize(
    ("wire", "seconds"),
    [
        ("250m", 0.25),
        ("1S", 1.0),
        ("0n", 0.0),
        ("00000001S", 1.0),
        ("99999999H", 99_999_999 * 3600.0),
        ("3M", 180.0),
        ("7u", 7e-6),
        (b"5S", 5.0),
    ],
)
def test_decode_examples(wire, seconds):
    assert p.decode_timeout(wire) == seconds


@pytest.mark.parametrize(
    "wire",
    [
        None,
        "",
        "m",
        "5",
        " 5S",
        "5S ",
        "5 S",
        "+5S",
        "-5S",
        "123456789n",  # 9 digits
        "5s",  # unknown unit (lowercase s)
        "5h",
        "5x",
        "5.0S",
        "1_0S",
        "\uff15S",  # fullwidth digit five
        "5\u00b5",  # micro sign
        "\u0665S",  # Arabic-Indic five
        b"\xff5S",
        b"5\xc2\xb5",
        5,
        5.0,
        "5S\n",
        "5S\r\n",
    ],
)
def test_decode_rejects(wire):
    assert p.decode_timeout(wire) is None


@settings(max_examples=500)
@given(st.floats(min_value=0, max_value=99_999_999 * 3600.0, allow_nan=False))
@example(1e-9)
@example(0.3)
@example(0.123456789)
@example(99999.9999999)
@example(1102251541.0)
def test_encode_decode_never_shrinks_and_rounds_up_by_under_one_unit(s):
    wire = p.encode_timeout(s)
    assert wire is not None
    assert GRAMMAR.fullmatch(wire) or wire == "0n"
    back = p.decode_timeout(wire)
    assert back is not None
    assert back >= s  # rounded up, never down
    # by less than one unit of the finest precision that fits 8 digits (the result may
    # be written in a coarser unit when that is exact: 60000m is 1M)
    finest = next(u for u in "numSMH" if math.ceil(s / UNIT_SECONDS[u] - 1e-6) <= 99_999_999)
    assert back - s <= UNIT_SECONDS[finest] * (1 + 1e-9)


@given(st.binary(max_size=12))
def test_decode_any_bytes_is_none_or_in_grammar(b):
    got = p.decode_timeout(b)
    if GRAMMAR.fullmatch(b.decode("latin-1")):
        assert got is not None
        assert 0 <= got <= 99_999_999 * 3600.0
    else:
        assert got is None


@given(st.text(max_size=12))
def test_decode_any_text_is_none_or_in_grammar(t):
    got = p.decode_timeout(t)
    assert (got is not None) == bool(GRAMMAR.fullmatch(t))


# ---------------------------------------------------------------- request ids


@pytest.mark.parametrize("rid", ["a", "A1b2", "req-1.2:3_x", "x" * 128, b"abc"])
def test_valid_request_ids(rid):
    want = rid.decode() if isinstance(rid, bytes) else rid
    assert p.parse_request_id(rid) == want


@pytest.mark.parametrize(
    "rid",
    ["", "x" * 129, "a b", "a\nb", "a\r\nX-Evil: 1", "caf\u00e9", "a\x00", "a/b", "\t", b"\xe9", 7],
)
def test_invalid_request_ids(rid):
    assert p.parse_request_id(rid) is None


@given(st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_request_id_validator_property(v):
    got = p.parse_request_id(v)
    text = v.decode("latin-1") if isinstance(v, bytes) else v
    if RID.fullmatch(text):
        assert got == text
    else:
        assert got is None


def test_new_request_id_is_uuid4_hex():
    rid = p.new_request_id()
    assert uuid.UUID(hex=rid).version == 4
    assert rid == uuid.UUID(hex=rid).hex
    assert p.new_request_id() != rid


# ---------------------------------------------------------------- policy


def test_policy_defaults_and_replace():
    pol = p.Policy()
    assert (pol.default_timeout, pol.max_timeout, pol.min_timeout) == (None, None, 0.0)
    assert (pol.margin, pol.floor, pol.trusted) == (0.005, 0.001, ())
    new = pol.replace(max_timeout=timedelta(seconds=5), trusted=["10.0.0.0/8"])
    assert new.max_timeout == 5.0
    assert new.trusted == ("10.0.0.0/8",)
    assert pol.max_timeout is None  # unchanged
    with pytest.raises(AttributeError):
        pol.margin = 1  # type: ignore[misc]
    assert hash(new) == hash(p.Policy(max_timeout=5, trusted=("10.0.0.0/8",)))


@pytest.mark.parametrize(
    ("changes", "exc", "match"),
    [
        ({"default_timeout": 10, "max_timeout": 5}, ValueError, "must not exceed max_timeout"),
        ({"max_timeout": -1}, ValueError, ">= 0"),
        ({"margin": math.nan}, ValueError, "NaN"),
        ({"floor": math.inf}, ValueError, "finite"),
        ({"max_timeout": math.inf}, ValueError, "pass None"),
        ({"max_timeout": 0}, ValueError, "born expired"),
        ({"min_timeout": 3, "max_timeout": 2}, ValueError, "min_timeout"),
        ({"min_timeout": 3, "default_timeout": 2}, ValueError, "min_timeout"),
        ({"margin": "5ms"}, TypeError, "seconds"),
        ({"margin": True}, TypeError, "seconds"),
        ({"trusted": "10.0.0.0/8"}, TypeError, "tuple of CIDR"),
        ({"trusted": ("10.0.0.0/33",)}, ValueError, "not a CIDR"),
        ({"trusted": (10,)}, TypeError, "CIDR strings"),
        ({"identity": (("x-user", "user"),)}, TypeError, "tether.Key"),
        ({"identity": 5}, TypeError, "pairs"),
        ({"timeout": 1}, TypeError, "no field 'timeout'"),
    ],
)
def test_policy_validation(changes, exc, match):
    with pytest.raises(exc, match=r"^tether: .*" + match):
        p.Policy().replace(**changes)
    if "timeout" not in changes:
        with pytest.raises(exc, match=r"^tether: "):
            p.Policy(**changes)


def test_trusts():
    pol = p.Policy(trusted=("10.0.0.0/8", "::1", "192.168.1.7"))
    assert pol.trusts("10.200.0.1")
    assert pol.trusts("::1")
    assert pol.trusts("[::1]")
    assert pol.trusts("192.168.1.7")
    assert not pol.trusts("192.168.1.8")
    assert not pol.trusts("11.0.0.1")
    assert not pol.trusts(None)
    assert not pol.trusts("not an address")
    assert not pol.trusts("")
    assert not p.Policy().trusts("127.0.0.1")


def test_policy_holder_update_is_atomic_and_validated():
    holder = p.PolicyHolder(p.Policy(max_timeout=10))
    old = holder.policy
    new = holder.update(max_timeout=2)
    assert holder.policy is new
    assert old.max_timeout == 10  # whoever holds the old one keeps it
    with pytest.raises(ValueError, match=r"^tether: "):
        holder.update(default_timeout=5)  # above max 2
    assert holder.policy is new
    with pytest.raises(TypeError, match=r"^tether: "):
        p.PolicyHolder({"max_timeout": 1})  # type: ignore[arg-type]
    assert p.PolicyHolder().policy == p.Policy()

    # concurrent updates of different fields lose none
    holder = p.PolicyHolder()
    barrier = threading.Barrier(3)

    def bump(field, n):
        barrier.wait()
        for i in range(1, n + 1):
            holder.update(**{field: float(i)})

    fields = ["max_timeout", "margin", "floor"]  # no constraint between them
    threads = [threading.Thread(target=bump, args=(f, 200)) for f in fields]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pol = holder.policy
    assert (pol.margin, pol.floor) == (200.0, 200.0)
    assert pol.max_timeout == 200.0


# ---------------------------------------------------------------- inject


def test_inject_writes_budget_minus_margin_and_request_id():
    parent = tether.with_value(tether.background(), tether.REQUEST_ID, "abc-1")
    with tether.with_timeout(parent, 2.0) as ctx:
        headers: dict[str, str] = {}
        before = ctx.remaining()
        p.inject(ctx, headers, policy=p.Policy(margin=0.5))
        assert headers["x-request-id"] == "abc-1"
        sent = p.decode_timeout(headers["x-request-timeout"])
        assert sent is not None
        assert 1.0 < sent <= 1.5
        assert sent <= before - 0.5 + 1e-6  # rounded up by at most 1 µs


def test_inject_without_deadline_or_id_sends_nothing():
    headers: dict[str, str] = {"accept": "*/*"}
    p.inject(tether.background(), headers)
    assert headers == {"accept": "*/*"}


def test_inject_drops_an_invalid_request_id_from_the_context():
    ctx = tether.with_value(tether.background(), tether.REQUEST_ID, "bad\r\nX-Evil: 1")
    headers: dict[str, str] = {}
    p.inject(ctx, headers)
    assert headers == {}


def test_inject_below_floor_raises_locally_and_writes_nothing():
    with tether.with_timeout(tether.background(), 0.004) as ctx:
        headers: dict[str, str] = {}
        with pytest.raises(tether.DeadlineExceeded) as info:
            p.inject(ctx, headers)  # 4 ms - 5 ms margin < 1 ms floor
        assert headers == {}
        assert "policy.floor" in "".join(info.value.__notes__)
        assert ctx.err() is None  # the context itself has not ended


def test_inject_ended_context_raises_its_error():
    ctx, cancel = tether.with_cancel(tether.background())
    cancel(RuntimeError("gone"))
    with pytest.raises(tether.Canceled) as info:
        p.inject(ctx, {})
    assert isinstance(info.value.__cause__, RuntimeError)


def test_inject_misuse():
    with pytest.raises(TypeError, match=r"^tether: "):
        p.inject(None, {})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^tether: .*PolicyHolder"):
        p.inject(tether.background(), {}, policy={"margin": 0})  # type: ignore[arg-type]


# ---------------------------------------------------------------- extract


def _extract(headers, **kw):
    ctx, cancel = p.extract(tether.background(), headers, **kw)
    try:
        return ctx.remaining(), ctx.value(tether.REQUEST_ID), ctx
    finally:
        cancel()


def test_extract_mapping_case_insensitive():
    rem, rid, _ = _extract({"X-Request-Timeout": "2S", "X-REQUEST-ID": "r-1"})
    assert 1.5 < rem <= 2.0
    assert rid == "r-1"


def test_extract_asgi_pairs_smallest_valid_budget_wins():
    headers = [
        (b"x-request-timeout", b"5S"),
        (b"grpc-timeout", b"3S"),
        (b"connect-timeout-ms", b"2000"),
        (b"x-request-id", b"abc"),
    ]
    rem, rid, _ = _extract(headers)
    assert 1.5 < rem <= 2.0
    assert rid == "abc"
    rem, _, _ = _extract([(b"grpc-timeout", b"700m"), (b"x-request-timeout", b"9S")])
    assert 0.5 < rem <= 0.7


def test_extract_str_pairs_and_first_valid_request_id():
    _, rid, _ = _extract([("X-Request-Id", "bad id"), ("x-request-id", "good")])
    assert rid == "good"


def test_extract_malformed_falls_back_to_default_and_is_counted():
    before = p.malformed_headers()
    pol = p.Policy(default_timeout=3)
    rem, rid, _ = _extract(
        [
            (b"x-request-timeout", b"-5S"),
            (b"grpc-timeout", b"1 S"),
            (b"connect-timeout-ms", b"12345678901"),
            (b"x-request-id", b"\xff\xfe"),
        ],
        policy=pol,
    )
    assert 2.5 < rem <= 3.0
    assert uuid.UUID(hex=rid).version == 4
    after = p.malformed_headers()
    for name in ("x-request-timeout", "grpc-timeout", "connect-timeout-ms", "x-request-id"):
        assert after.get(name, 0) == before.get(name, 0) + 1, name


def test_extract_no_budget_no_default_keeps_parents_deadline_only():
    rem, rid, ctx = _extract({})
    assert rem is None
    assert p.parse_request_id(rid) == rid
    with tether.with_timeout(tether.background(), 1.0) as parent:
        with p.extract(parent, {"x-request-timeout": "1H"}) as ctx:
            assert ctx.remaining() <= 1.0  # a child never outlives its parent


def test_extract_clamps_untrusted_and_lets_trusted_through():
    pol = p.Policy(max_timeout=2, min_timeout=0.5, trusted=("10.0.0.0/8",))
    rem, _, _ = _extract({"x-request-timeout": "60S"}, peer="192.0.2.1", policy=pol)
    assert 1.5 < rem <= 2.0
    rem, _, _ = _extract({"x-request-timeout": "60S"}, peer=None, policy=pol)
    assert rem <= 2.0
    rem, _, _ = _extract({"x-request-timeout": "60S"}, peer="10.1.1.1", policy=pol)
    assert 55 < rem <= 60
    rem, _, _ = _extract({"x-request-timeout": "1m"}, peer="10.1.1.1", policy=pol)
    assert 0.4 < rem <= 0.5  # min_timeout applies to everyone


def test_extract_identity_only_from_trusted_peers():
    user = tether.Key[str]("user")
    pol = p.Policy(trusted=("127.0.0.1",), identity=(("X-User", user),))
    _, _, ctx = _extract({"x-user": "alice"}, peer="127.0.0.2", policy=pol)
    assert ctx.value(user) is None
    _, _, ctx = _extract({"x-user": "alice"}, peer=None, policy=pol)
    assert ctx.value(user) is None
    _, _, ctx = _extract([(b"x-user", b"alice")], peer="127.0.0.1", policy=pol)
    assert ctx.value(user) == "alice"
    before = p.malformed_headers().get("x-user", 0)
    _, _, ctx = _extract([(b"x-user", b"al\nice")], peer="127.0.0.1", policy=pol)
    assert ctx.value(user) is None
    assert p.malformed_headers()["x-user"] == before + 1


def test_extract_reads_the_holders_current_policy():
    holder = p.PolicyHolder(p.Policy(max_timeout=5))
    scope1 = p.extract(tether.background(), {"x-request-timeout": "1M"}, policy=holder)
    holder.update(max_timeout=1)
    scope2 = p.extract(tether.background(), {"x-request-timeout": "1M"}, policy=holder)
    with scope1 as ctx1, scope2 as ctx2:
        assert 4 < ctx1.remaining() <= 5  # started before the update: keeps its budget
        assert ctx2.remaining() <= 1


def test_extract_parent_ended_is_born_ended():
    parent, cancel = tether.with_cancel(tether.background())
    cancel()
    ctx, c = p.extract(parent, {"x-request-timeout": "5S"})
    c()
    assert isinstance(ctx.err(), tether.Canceled)


def test_extract_misuse_raises_typeerror():
    with pytest.raises(TypeError, match=r"^tether: "):
        p.extract(None, {})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^tether: headers"):
        p.extract(tether.background(), 5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^tether: headers"):
        p.extract(tether.background(), [b"x-request-id"])  # type: ignore[list-item]


def test_extract_ignores_non_string_names_and_values():
    rem, rid, _ = _extract([(5, b"x"), (b"x-request-timeout", 7), (b"x-request-id", None)])
    assert rem is None
    assert len(rid) == 32


header_names = st.sampled_from(
    [b"x-request-timeout", b"grpc-timeout", b"connect-timeout-ms", b"x-request-id", b"X-Request-Id"]
)


@settings(max_examples=300)
@given(
    st.lists(st.tuples(st.one_of(header_names, st.binary(max_size=20)), st.binary(max_size=140))),
    st.one_of(st.none(), st.sampled_from(["127.0.0.1", "10.0.0.1", "::1", "junk"])),
)
def test_extract_any_bytes_never_raises_and_stays_within_limits(headers, peer):
    pol = p.Policy(max_timeout=30, min_timeout=0.01, trusted=("10.0.0.0/8",))
    with p.extract(tether.background(), headers, peer=peer, policy=pol) as ctx:
        rid = ctx.value(tether.REQUEST_ID)
        assert RID.fullmatch(rid)
        rem = ctx.remaining()
        if rem is not None:
            assert rem <= 99_999_999 * 3600.0
            if peer != "10.0.0.1":
                assert rem <= 30


@given(st.floats(min_value=0.002, max_value=1e9), st.sampled_from([0.0, 0.005]))
@example(100001.0, 0.005)
@example(0.3000000001, 0.0)
def test_inject_then_extract_never_extends_the_budget(budget, margin):
    assume(budget > 0.0065)  # above margin + floor
    with tether.with_timeout(tether.background(), budget) as ctx:
        headers: dict[str, str] = {}
        before = ctx.remaining()
        p.inject(ctx, headers, policy=p.Policy(margin=margin))
        sent = p.decode_timeout(headers["x-request-timeout"])
        assert sent <= before - margin + 1e-9 or sent <= before  # never more than was left
        with p.extract(tether.background(), headers) as ctx2:
            assert ctx2.value(tether.REQUEST_ID) is not None
            if margin:  # the margin covers the (microseconds of) transit here
                assert ctx2.deadline() <= ctx.deadline()


def test_propagation_imports_only_the_stdlib():
    from test_api import _imported_by

    out = _imported_by("import tether.propagation")
    assert "tether.propagation" in out["new"]
    assert out["outside_stdlib"] == []
    assert "asyncio" not in out["new"]


def test_public_names_are_exported():
    skip = {"annotations", "Final"}
    public = {n for n in vars(p) if n[0] not in "_@" and n not in skip}
    imported = {"Any", "Context", "Key", "Scope", "Iterable", "Mapping", "MutableMapping"}
    imported |= {"DeadlineExceeded", "REQUEST_ID", "dataclass", "field", "timedelta"}
    imported |= {"ipaddress", "math", "numbers", "os", "re", "threading", "Headers"}
    imported |= {"with_cancel", "with_timeout", "with_value"}
    assert public - imported == set(p.__all__)
    assert p.__all__ == sorted(p.__all__, key=lambda n: (not n.isupper(), n))
