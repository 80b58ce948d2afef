"""Observability end to end: a real uvicorn service, scraped over HTTP, viewed in Chromium."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
pytest.importorskip("httpx")

import httpx
from prometheus_client import CollectorRegistry, make_asgi_app
from prometheus_client.parser import text_string_to_metric_families
from tests import obs_app
from tests.conftest import IN_CI, eventually

from tether import debug
from tether.integrations import prometheus

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def service():
    registry = CollectorRegistry()
    prometheus.instrument(registry)
    debug.enable()
    try:
        with obs_app.Server(obs_app.make_app(make_asgi_app(registry))) as srv:
            yield srv
    finally:
        for scope in obs_app.LEAKED:
            scope.cancel()
        obs_app.LEAKED.clear()
        debug.disable()
        prometheus.uninstrument()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(url + "/metrics", timeout=10).text
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name.startswith("tether_"):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_scraped_over_http_are_exact(service):
    url = service.url
    # process-wide tallies kept by other modules (tether.propagation's malformed-header
    # count, where it exists): this test sends none, so they must not move
    tallies = {k: v for k, v in scrape(url).items() if k[0].startswith("tether_malformed")}
    with httpx.Client(base_url=url, timeout=10) as client:
        for i in range(3):
            r = client.get("/work?ms=1", headers={"x-budget": "5", "x-request-id": f"ok-{i}"})
            assert r.status_code == 200
        for _ in range(2):
            assert client.get("/work?ms=5000", headers={"x-budget": "0.2"}).status_code == 504
        # a client that gives up: the server sees the disconnect and cancels
        with pytest.raises(httpx.ReadTimeout):
            client.get("/work?ms=20000", timeout=0.3)
        assert client.get("/leak").status_code == 200

    def settled() -> bool:
        return scrape(url).get(("tether_contexts_active", ())) == 1

    eventually(settled, timeout=10)
    m = scrape(url)
    assert {k: v for k, v in m.items() if k[0].startswith("tether_malformed")} == tallies
    skip = ("_bucket", "_sum", "_created")
    assert {k: v for k, v in m.items() if not k[0].endswith(skip) and k not in tallies} == {
        # requests without a budget: the client that gave up, and /leak
        ("tether_contexts_created_total", (("kind", "with_cancel"),)): 2,
        # 5 requests with a budget, 6 tether.asleep() children (asleep waits on a
        # with_timeout child), the leaked context
        ("tether_contexts_created_total", (("kind", "with_deadline"),)): 12,
        # 3 fine requests, the disconnected one, /leak
        ("tether_contexts_ended_total", (("reason", "canceled"),)): 5,
        # 3 sleeps that ran their time, the two 504 requests
        ("tether_contexts_ended_total", (("reason", "deadline"),)): 5,
        # the sleeps of the 504 requests and of the disconnected one
        ("tether_contexts_ended_total", (("reason", "parent"),)): 3,
        ("tether_contexts_active", ()): 1,  # the leaked one
        ("tether_context_lifetime_seconds_count", ()): 13,
        ("tether_inbound_budget_seconds_count", ()): 5,
        ("tether_inbound_budget_absent_total", ()): 2,
        ("tether_budget_exhausted_total", (("where", "asgi"),)): 2,
        ("tether_client_disconnects_total", (("where", "asgi"),)): 1,
    }
    assert m[("tether_inbound_budget_seconds_sum", ())] == pytest.approx(15.4)
    assert m[("tether_inbound_budget_seconds_bucket", (("le", "0.25"),))] == 2
    assert m[("tether_inbound_budget_seconds_bucket", (("le", "5.0"),))] == 5
    # the fine requests and their sleeps, and /leak, took ~1 ms; the 504s lived their
    # 0.2 s budget, the disconnected one the client's 0.3 s
    assert m[("tether_context_lifetime_seconds_bucket", (("le", "0.1"),))] == 7
    assert m[("tether_context_lifetime_seconds_bucket", (("le", "0.25"),))] == 11

    # the handler that forgot cancel() is a leak suspect, named by its line
    (leak,) = httpx.get(url + "/debug/tether?format=leaks&older_than=0", timeout=10).json()
    assert leak["site"] == f"{obs_app.__file__}:{obs_app.LEAK_LINE}"
    assert leak["stack"][0].endswith(f":{obs_app.LEAK_LINE} in forgetful")
    assert [s["site"] for s in debug.leaks(older_than=0)] == [leak["site"]]


def in_flight(url: str, n: int, ms: int) -> list[threading.Thread]:
    def one(i: int) -> None:
        httpx.get(
            f"{url}/fanout?ms={ms}",
            headers={"x-budget": "30", "x-request-id": f"req-{i}"},
            timeout=30,
        )

    threads = [threading.Thread(target=one, args=(i,), name=f"client-{i}") for i in range(n)]
    for t in threads:
        t.start()
    return threads


def test_json_view_matches_snapshot(service):
    threads = in_flight(service.url, 2, 1500)
    try:
        eventually(lambda: len(debug.snapshot()["contexts"]) >= 12, timeout=10)
        got = httpx.get(service.url + "/debug/tether?format=json", timeout=10).json()
        want = debug.snapshot()
    finally:
        for t in threads:
            t.join(30)
    stable = ("id", "parent", "kind", "state", "site", "request_id")
    assert [{k: r[k] for k in stable} for r in got["contexts"]] == [
        {k: r[k] for k in stable} for r in want["contexts"]
    ]
    for a, b in zip(got["contexts"], want["contexts"], strict=True):
        assert b["age"] - 1 <= a["age"] <= b["age"]
    kinds = sorted(r["kind"] for r in got["contexts"])
    # per request: itself, its task group, two calls, and each call's asleep() child
    assert kinds == sorted(["with_deadline"] * 10 + ["task_group"] * 2)
    # a request's tree: request -> task group -> two calls -> a sleep each
    by_id = {r["id"]: r for r in got["contexts"]}
    calls = [
        r for r in got["contexts"] if r["parent"] and by_id[r["parent"]]["kind"] == "task_group"
    ]
    assert len(calls) == 4
    assert {r["request_id"] for r in calls} == {"req-0", "req-1"}
    sleeps = [r for r in got["contexts"] if r["parent"] in {c["id"] for c in calls}]
    assert len(sleeps) == 4


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        msg = "chromium is not installed (apt-get install chromium); .ci/run installs it"
        if IN_CI:
            pytest.fail(f"CI=true: {msg}", pytrace=False)
        pytest.skip(msg)
    return exe


def run_chromium(exe: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            exe,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )


def held_open(url: str, n: int) -> list[socket.socket]:
    """``n`` /fanout requests that run until their client goes away: the caller closes
    the sockets, and each request's context ends with the disconnect (three Chromium
    runs may take longer than any fixed request time on a loaded machine)."""
    host, port = url.removeprefix("http://").split(":")
    socks = []
    for i in range(n):
        s = socket.create_connection((host, int(port)), timeout=10)
        s.sendall(
            f"GET /fanout?ms=120000 HTTP/1.1\r\nhost: {host}\r\nx-budget: 300\r\n"
            f"x-request-id: req-{i}\r\n\r\n".encode()
        )
        socks.append(s)
    return socks


@pytest.mark.slow
def test_live_view_in_headless_chromium(service, tmp_path):
    exe = chromium()
    socks = held_open(service.url, 3)
    try:
        eventually(lambda: len(debug.snapshot()["contexts"]) >= 18, timeout=10)
        page = service.url + "/debug/tether"
        dom = run_chromium(exe, tmp_path / "p1", "--virtual-time-budget=3000", "--dump-dom", page)
        assert dom.returncode == 0, dom.stderr[-2000:]
        html = dom.stdout
        # the script drew the tree: every in-flight request, nested task groups
        for i in range(3):
            link = f'<a class="rid" href="/debug/tether?request_id=req-{i}"'
            assert link + f' title="show only this request">req-{i}</a>' in html
        assert html.count('class="kind">task_group</span>') == 3
        assert html.count('<li class="live"') >= 18
        assert "obs_app.py:" in html  # creation sites
        # one request's tree: ?request_id= (what clicking a request id opens)
        one = run_chromium(
            exe,
            tmp_path / "p3",
            "--virtual-time-budget=3000",
            "--dump-dom",
            page + "?request_id=req-1",
        )
        assert one.returncode == 0, one.stderr[-2000:]
        assert "request req-1: 6 live" in one.stdout
        assert ">req-1</a>" in one.stdout
        assert ">req-0</a>" not in one.stdout
        assert ">req-2</a>" not in one.stdout
        shot = tmp_path / "live-view.png"
        res = run_chromium(
            exe,
            tmp_path / "p2",
            "--window-size=1100,620",
            "--virtual-time-budget=3000",
            f"--screenshot={shot}",
            page,
        )
        assert res.returncode == 0, res.stderr[-2000:]
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert shot.stat().st_size > 10_000  # a drawn page, not a blank one
        if os.environ.get("TETHER_UPDATE_SCREENSHOT"):
            shutil.copy(shot, ROOT / "docs" / "live-view.png")
    finally:
        for s in socks:
            s.close()
    # the disconnects end the requests' trees (nothing left running after the test)
    eventually(lambda: not any(r["state"] == "live" for r in debug.snapshot()["contexts"]),
               timeout=10)  # fmt: skip


def test_live_view_page_without_debug_enabled(tmp_path):
    exe = chromium()
    prometheus_app = make_asgi_app(CollectorRegistry())
    with obs_app.Server(obs_app.make_app(prometheus_app)) as srv:
        dom = run_chromium(
            exe,
            tmp_path / "p",
            "--virtual-time-budget=2000",
            "--dump-dom",
            srv.url + "/debug/tether",
        )
    assert "tether.debug is disabled: call tether.debug.enable() in the server." in dom.stdout
    time.sleep(0)
