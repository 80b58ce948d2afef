"""tether.integrations.otel.TetherPropagator: tether's headers beside OpenTelemetry's."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from opentelemetry import context as otel_context
from opentelemetry.propagate import get_global_textmap
from opentelemetry.propagators.textmap import DefaultGetter, DefaultSetter, TextMapPropagator

import tether
from tether import propagation
from tether.integrations import otel
from tether.integrations._otel_propagator import REQUEST_ID_KEY, TIMEOUT_KEY


def rid(r):
    return tether.with_value(tether.background(), tether.REQUEST_ID, r)


def test_is_a_text_map_propagator_and_re_exported():
    assert issubclass(otel.TetherPropagator, TextMapPropagator)
    assert otel.TetherPropagator().fields == {"x-request-id", "x-request-timeout"}


def test_inject_writes_request_id_and_budget_minus_margin():
    p = otel.TetherPropagator()
    with tether.with_timeout(rid("abc-1"), 2.0) as ctx:
        headers: dict[str, str] = {}
        left = ctx.remaining()
        p.inject(headers)
    assert headers["x-request-id"] == "abc-1"
    sent = propagation.decode_timeout(headers["x-request-timeout"])
    assert sent is not None
    assert left - 0.05 < sent <= left - propagation.Policy().margin + 1e-6  # 1 us: encoding


def test_inject_without_deadline_or_id_writes_nothing():
    headers: dict[str, str] = {}
    otel.TetherPropagator().inject(headers)
    assert headers == {}


def test_inject_skips_an_invalid_request_id():
    headers: dict[str, str] = {}
    ctx = rid("bad id\r\n")
    with tether.with_cancel(ctx):
        otel.TetherPropagator().inject(headers)
    assert "x-request-id" not in headers


def test_inject_never_raises_and_sends_zero_for_an_ended_or_starved_context():
    p = otel.TetherPropagator()
    parent, cancel = tether.with_cancel(tether.background())
    cancel()
    with tether.with_cancel(parent):  # ended, no deadline
        h1: dict[str, str] = {}
        p.inject(h1)
    with tether.with_timeout(tether.background(), 0.003):  # below margin + floor
        h2: dict[str, str] = {}
        p.inject(h2)
    assert h1["x-request-timeout"] == h2["x-request-timeout"] == "0n"


def test_inject_uses_the_policy_margin():
    holder = propagation.PolicyHolder(propagation.Policy(margin=0.5))
    with tether.with_timeout(tether.background(), 2.0) as ctx:
        h: dict[str, str] = {}
        left = ctx.remaining()
        otel.TetherPropagator(holder).inject(h)
    assert propagation.decode_timeout(h["x-request-timeout"]) <= left - 0.5 + 1e-6


def test_extract_sets_otel_context_values():
    p = otel.TetherPropagator()
    got = p.extract({"x-request-id": "r-9", "x-request-timeout": "250m", "grpc-timeout": "1S"})
    assert otel_context.get_value(REQUEST_ID_KEY, got) == "r-9"
    assert otel_context.get_value(TIMEOUT_KEY, got) == 0.25  # the smallest wins


@pytest.mark.parametrize(
    "headers",
    [
        {"x-request-id": "with space", "x-request-timeout": "-1S"},
        {"x-request-id": "", "x-request-timeout": "123456789m"},
        {"x-request-timeout": "1 S"},
        {},
    ],
)
def test_extract_ignores_malformed_values(headers):
    got = otel.TetherPropagator().extract(headers)
    assert otel_context.get_value(REQUEST_ID_KEY, got) is None
    assert otel_context.get_value(TIMEOUT_KEY, got) is None


def test_extract_keeps_the_given_context():
    base = otel_context.set_value("other", 1)
    got = otel.TetherPropagator().extract({"x-request-id": "a"}, base, DefaultGetter())
    assert otel_context.get_value("other", got) == 1


def test_custom_setter_is_used():
    calls = []

    class Setter(DefaultSetter):
        def set(self, carrier, key, value):
            calls.append(key)
            carrier[key] = value

    with tether.with_timeout(rid("s"), 1):
        otel.TetherPropagator().inject({}, setter=Setter())
    assert sorted(calls) == ["x-request-id", "x-request-timeout"]


def test_bad_policy():
    with pytest.raises(TypeError, match=r"^tether: TetherPropagator\(policy=...\)"):
        otel.TetherPropagator(policy="x")  # type: ignore[arg-type]


def test_registered_on_the_entry_point_beside_trace_context():
    """OTEL_PROPAGATORS=tracecontext,baggage,tether: tether's headers travel beside
    traceparent, which stays OpenTelemetry's (tether invents no trace ids)."""
    code = """
import tether
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
trace.set_tracer_provider(TracerProvider())
ctx = tether.with_value(tether.background(), tether.REQUEST_ID, "edge-7")
h = {}
with tether.with_timeout(ctx, 1.5):
    propagate.inject(h)
    print(sorted(h))
    with trace.get_tracer("t").start_as_current_span("s") as span:
        h2 = {}
        propagate.inject(h2)
        tid = format(span.get_span_context().trace_id, "032x")
        print(sorted(h2), h2["traceparent"].split("-")[1] == tid, h2["x-request-id"])
"""
    env = {**os.environ, "OTEL_PROPAGATORS": "tracecontext,baggage,tether"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "['x-request-id', 'x-request-timeout']"  # no span: no traceparent
    assert lines[1] == "['traceparent', 'x-request-id', 'x-request-timeout'] True edge-7"


def test_default_global_propagator_is_untouched():
    """Importing tether's propagator registers nothing by itself."""
    names = type(get_global_textmap()).__name__
    assert "Tether" not in names


def test_missing_opentelemetry_names_the_extra():
    code = (
        "import sys; sys.modules['opentelemetry'] = None\n"
        "try:\n"
        "    import tether.integrations.otel\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.startswith("tether: tether.integrations.otel needs the 'otel' extra")
    assert "pip install 'tether[otel]'" in out.stdout
