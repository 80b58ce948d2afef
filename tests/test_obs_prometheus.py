"""tether.integrations.prometheus: counts from the core's observer hook, read by scraping."""

from __future__ import annotations

import gc
import subprocess
import sys
import threading
import types

import pytest

pytest.importorskip("prometheus_client")

from prometheus_client import CollectorRegistry, generate_latest

import tether
from tether import _observe
from tether.integrations import _events, prometheus
from tether.testing import FakeClock


@pytest.fixture
def registry():
    reg = CollectorRegistry()
    prometheus.instrument(reg)
    yield reg
    prometheus.uninstrument()
    assert not _observe.observers()
    assert _events._sink is None


def value(reg, name, **labels):
    return reg.get_sample_value(name, labels or None)


def test_created_ended_active_and_lifetime(registry):
    with FakeClock() as clock:
        a, cancel_a = tether.with_cancel(tether.background())
        _b, cancel_b = tether.with_timeout(a, 2.0)
        _c, cancel_c = tether.with_timeout(tether.background(), 0.02)
        tether.with_value(a, "k", 1)  # not an owner
        assert value(registry, "tether_contexts_created_total", kind="with_cancel") == 1
        assert value(registry, "tether_contexts_created_total", kind="with_deadline") == 2
        assert value(registry, "tether_contexts_active") == 3
        clock.advance(0.02)  # c: deadline after 20 ms
        clock.advance(0.48)
        cancel_a()  # a canceled after 0.5 s, b by its parent
        cancel_b()
        cancel_c()  # already ended: not counted again
    assert value(registry, "tether_contexts_ended_total", reason="canceled") == 1
    assert value(registry, "tether_contexts_ended_total", reason="deadline") == 1
    assert value(registry, "tether_contexts_ended_total", reason="parent") == 1
    assert value(registry, "tether_contexts_active") == 0
    h = "tether_context_lifetime_seconds"
    assert value(registry, h + "_count") == 3
    assert value(registry, h + "_sum") == pytest.approx(0.02 + 0.5 + 0.5)
    assert value(registry, h + "_bucket", le="0.025") == 1
    assert value(registry, h + "_bucket", le="0.25") == 1
    assert value(registry, h + "_bucket", le="0.5") == 3
    assert value(registry, h + "_bucket", le="+Inf") == 3


def test_group_to_thread_and_exposition_text(registry):
    with tether.with_cancel(tether.background()) as ctx:
        with tether.Group(ctx) as g:
            g.go(lambda c: None)
    text = generate_latest(registry).decode()
    assert 'tether_contexts_created_total{kind="group"} 1.0' in text
    assert 'tether_contexts_created_total{kind="with_cancel"} 1.0' in text
    assert "# TYPE tether_contexts_active gauge" in text
    assert "# TYPE tether_context_lifetime_seconds histogram" in text
    assert "# TYPE tether_contexts_ended_total counter" in text


def test_forgotten_context_is_not_active_forever(registry):
    scope = tether.with_cancel(tether.background())
    assert value(registry, "tether_contexts_active") == 1
    del scope  # dropped whole, never cancelled: gone, so no longer active
    gc.collect()
    assert value(registry, "tether_contexts_active") == 0


def test_contexts_from_before_instrument_count_only_their_end():
    reg = CollectorRegistry()
    _before, cancel = tether.with_cancel(tether.background())
    prometheus.instrument(reg)
    try:
        cancel()
        assert value(reg, "tether_contexts_ended_total", reason="canceled") == 1
        assert value(reg, "tether_contexts_active") == 0
        assert value(reg, "tether_context_lifetime_seconds_count") == 0
        assert value(reg, "tether_contexts_created_total", kind="with_cancel") is None
    finally:
        prometheus.uninstrument()


def test_boundary_events(registry):
    for s in (0.05, 0.3, 7.0, None):
        _events.inbound_budget(s)
    _events.budget_exhausted("asgi")
    _events.budget_exhausted("asgi")
    _events.budget_exhausted("outbound")
    assert value(registry, "tether_inbound_budget_seconds_count") == 3
    assert value(registry, "tether_inbound_budget_seconds_sum") == pytest.approx(7.35)
    assert value(registry, "tether_inbound_budget_seconds_bucket", le="0.05") == 1
    assert value(registry, "tether_inbound_budget_seconds_bucket", le="0.5") == 2
    assert value(registry, "tether_inbound_budget_absent_total") == 1
    assert value(registry, "tether_budget_exhausted_total", where="asgi") == 2
    assert value(registry, "tether_budget_exhausted_total", where="outbound") == 1
    _events.client_disconnected("asgi")
    assert value(registry, "tether_client_disconnects_total", where="asgi") == 1


def test_malformed_headers_from_propagation(registry, monkeypatch):
    try:
        from tether import propagation  # type: ignore[attr-defined]
    except ImportError:
        propagation = None
    if propagation is None or not hasattr(propagation, "malformed_headers"):
        # the propagation module lives on another branch: stand in for its tally
        fake = types.ModuleType("tether.propagation")
        tally = {"x-request-timeout": 2}
        fake.malformed_headers = lambda: dict(tally)  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "tether.propagation", fake)
        want = 2
    else:
        before = propagation.malformed_headers().get("x-request-timeout", 0)
        _ctx, cancel = propagation.extract(
            tether.background(), {"x-request-timeout": "soon"}, peer="127.0.0.1"
        )
        cancel()
        want = before + 1
    got = value(registry, "tether_malformed_headers_total", header="x-request-timeout")
    assert got == want


def test_counts_are_exact_under_threads(registry):
    def work() -> None:
        for _ in range(2000):
            with tether.with_cancel(tether.background()):
                pass

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert value(registry, "tether_contexts_created_total", kind="with_cancel") == 8000
    assert value(registry, "tether_contexts_ended_total", reason="canceled") == 8000
    assert value(registry, "tether_context_lifetime_seconds_count") == 8000


def test_instrument_is_idempotent_and_uninstrument_too(registry):
    m = prometheus.instrument(registry)
    assert prometheus.instrument(registry) is m
    assert _observe.observers() == (m,)
    with pytest.raises(ValueError, match=r"^tether: already instrumented into another"):
        prometheus.instrument(CollectorRegistry())
    prometheus.uninstrument()
    prometheus.uninstrument()
    assert value(registry, "tether_contexts_active") is None  # unregistered
    with tether.with_cancel(tether.background()):
        pass
    m2 = prometheus.instrument(registry)  # starts from zero
    assert m2 is not m
    assert value(registry, "tether_contexts_created_total", kind="with_cancel") is None


def test_default_registry_and_missing_extra():
    code = (
        "import prometheus_client, tether\n"
        "from tether.integrations import prometheus\n"
        "prometheus.instrument()\n"
        "with tether.with_cancel(tether.background()): pass\n"
        "print(prometheus_client.REGISTRY.get_sample_value("
        "'tether_contexts_created_total', {'kind': 'with_cancel'}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "1", proc.stderr
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "try:\n    import tether.integrations.prometheus\nexcept ImportError as e:\n    print(e)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == (
        "tether: tether.integrations.prometheus needs the 'prometheus' extra: "
        "pip install 'tether[prometheus]'"
    ), proc.stderr


def test_contexts_born_ended_are_created_but_never_active(registry):
    parent, cancel = tether.with_cancel(tether.background())
    cancel()
    tether.with_cancel(parent)  # born ended: its parent already ended
    tether.with_timeout(tether.background(), -1)  # born expired
    assert value(registry, "tether_contexts_created_total", kind="with_cancel") == 2
    assert value(registry, "tether_contexts_created_total", kind="with_deadline") == 1
    assert value(registry, "tether_contexts_active") == 0
    assert value(registry, "tether_contexts_ended_total", reason="canceled") == 1
