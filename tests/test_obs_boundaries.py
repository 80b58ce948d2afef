"""The boundary middleware feeds the metrics: inbound budgets, 504s, disconnects.

A real uvicorn server with tether's ASGI ContextMiddleware, instrumented with
Prometheus; the counters are read exactly after real requests.
"""

from __future__ import annotations

import socket
import time

import pytest

pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")

import tether  # noqa: E402
from http_servers import serve  # noqa: E402
from tether.integrations import prometheus  # noqa: E402
from tether.integrations.asgi import ContextMiddleware  # noqa: E402


async def slow(scope, receive, send):
    ctx = tether.current()
    await tether.asleep(ctx, 5)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"done"})


@pytest.fixture
def registry():
    from prometheus_client import CollectorRegistry

    reg = CollectorRegistry()
    prometheus.instrument(reg)
    yield reg
    prometheus.uninstrument()


def value(reg, name, **labels):
    v = reg.get_sample_value(name, labels)
    return 0.0 if v is None else v


def test_budgets_504s_and_disconnects_are_counted(registry):
    app = ContextMiddleware(slow)
    with serve(app) as url:
        r = httpx.get(url + "/", headers={"x-request-timeout": "100m"}, timeout=10)
        assert r.status_code == 504
        r = httpx.get(url + "/", headers={"x-request-timeout": "200m"}, timeout=10)
        assert r.status_code == 504
        # A client that hangs up after 50 ms: a 499 on the server side.
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nx-request-timeout: 3S\r\n\r\n")
            time.sleep(0.05)
        end = time.monotonic() + 5
        while value(registry, "tether_client_disconnects_total", where="asgi") < 1:
            assert time.monotonic() < end, "the disconnect was never counted"
            time.sleep(0.01)
    assert value(registry, "tether_budget_exhausted_total", where="asgi") == 2
    assert value(registry, "tether_client_disconnects_total", where="asgi") == 1
    assert value(registry, "tether_inbound_budget_seconds_count") == 3
    assert value(registry, "tether_inbound_budget_seconds_sum") == pytest.approx(3.3)


def test_outbound_call_below_the_floor_is_counted(registry):
    from tether import propagation

    with tether.with_timeout(tether.background(), 0.0005) as ctx:
        with pytest.raises(tether.DeadlineExceeded):
            propagation.inject(ctx, {})
    assert value(registry, "tether_budget_exhausted_total", where="outbound") == 1
