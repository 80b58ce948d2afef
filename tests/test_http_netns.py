"""The chain across network namespaces, 20 ms of added latency per link (tc netem).

edge (this process, root namespace) -> middle (namespace A) -> leaf (namespace B), over
two veth links, each delayed 20 ms in both directions by ``tc netem``. All namespaces of
one kernel share CLOCK_MONOTONIC, so the hops' absolute deadlines can be compared.

What it shows: a budget does not count the time it spends on the wire (it is relative,
by design: docs/design.md 4.1), so a hop's deadline lands one link's latency minus
``policy.margin`` later than its caller's; with a margin that covers the link, no
downstream deadline is later than its caller's. The budgets themselves shrink hop by
hop by at least the margin.

Needs root, ``ip netns``, veth and the ``netem`` qdisc (the ``sch_netem`` kernel
module); skips with the reason otherwise. ``TETHER_NETNS_WITHOUT_NETEM=1`` runs the
namespace plumbing without added latency (the latency assertions are then skipped).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from http_servers import serve

pytestmark = [pytest.mark.realtime, pytest.mark.slow]

HERE = Path(__file__).resolve().parent
DELAY_MS = 20


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=20)


def _probe() -> tuple[bool, str]:
    """(netem available, reason to skip or '')."""
    if os.geteuid() != 0:
        return False, "needs root for ip netns and tc"
    if not (shutil.which("ip") and shutil.which("tc")):
        return False, "needs iproute2 (ip, tc)"
    ns = f"tthprobe{os.getpid()}"
    try:
        r = _run("ip", "netns", "add", ns, check=False)
        if r.returncode:
            return False, f"ip netns add failed: {r.stderr.strip()}"
        r = _run("ip", "-n", ns, "link", "add", "p0", "type", "veth", "peer", "name", "p1",
                 check=False)  # fmt: skip
        if r.returncode:
            return False, f"no veth: {r.stderr.strip()}"
        r = _run("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "p0", "root", "netem",
                 "delay", "1ms", check=False)  # fmt: skip
        if r.returncode:
            return False, f"no tc netem qdisc here (sch_netem): {r.stderr.strip()}"
        return True, ""
    finally:
        _run("ip", "netns", "del", ns, check=False)


@pytest.fixture(scope="module")
def netem() -> bool:
    ok, reason = _probe()
    if ok:
        return True
    if os.environ.get("TETHER_NETNS_WITHOUT_NETEM") == "1" and "netem" in reason:
        return False
    pytest.skip(reason)


def _link(a: str | None, a_if: str, a_ip: str, b: str, b_if: str, b_ip: str, netem: bool):
    """A veth pair between namespace a (None: root) and b, addressed /24, delayed."""
    _run("ip", "link", "add", a_if, "type", "veth", "peer", "name", b_if)
    _run("ip", "link", "set", b_if, "netns", b)
    if a is not None:
        _run("ip", "link", "set", a_if, "netns", a)
    pa = ["ip", "-n", a] if a else ["ip"]
    pb = ["ip", "-n", b]
    _run(*pa, "addr", "add", f"{a_ip}/24", "dev", a_if)
    _run(*pa, "link", "set", a_if, "up")
    _run(*pb, "addr", "add", f"{b_ip}/24", "dev", b_if)
    _run(*pb, "link", "set", b_if, "up")
    if netem:
        for ns, dev in ((a, a_if), (b, b_if)):
            exec_ = ["ip", "netns", "exec", ns] if ns else []
            _run(*exec_, "tc", "qdisc", "add", "dev", dev, "root", "netem", "delay",
                 f"{DELAY_MS}ms")  # fmt: skip


def _wait_port(ns: str, host: str, port: int, proc: subprocess.Popen[bytes]) -> None:
    code = f"import socket; socket.create_connection(({host!r}, {port}), timeout=1).close()"
    for _ in range(200):
        if proc.poll() is not None:
            raise RuntimeError(f"the hop in {ns} exited with {proc.returncode}")
        if _run("ip", "netns", "exec", ns, sys.executable, "-c", code, check=False).returncode == 0:
            return
        time.sleep(0.05)
    raise RuntimeError(f"the hop in {ns} never listened")


@pytest.fixture
def topology(netem: bool) -> Iterator[dict[str, object]]:
    tag = f"{os.getpid() % 100000}"
    mid, leaf = f"tthm{tag}", f"tthl{tag}"
    net = {"netem": netem}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        _run("ip", "netns", "add", mid)
        _run("ip", "netns", "add", leaf)
        for ns in (mid, leaf):
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        _link(None, f"tthe{tag}", "10.231.1.1", mid, "m0", "10.231.1.2", netem)
        _link(mid, "m1", "10.231.2.1", leaf, "l0", "10.231.2.2", netem)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"), str(HERE)])}
        hop = str(HERE / "netns_hop.py")

        def start(ns: str, argv: list[str]) -> None:
            proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, hop, *argv],
                                    env=env)  # fmt: skip
            procs.append(proc)

        net["start"] = start
        net["procs"] = procs
        net["mid"], net["leaf"] = mid, leaf
        net["wait"] = _wait_port
        yield net
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for ns in (mid, leaf):
            _run("ip", "netns", "del", ns, check=False)
        _run("ip", "link", "del", f"tthe{tag}", check=False)


@pytest.mark.parametrize("margin", [0.005, 0.05], ids=["margin-5ms", "margin-50ms"])
def test_the_chain_across_namespaces(topology, margin):
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    import tether
    from tether import propagation
    from tether.integrations.asgi import ContextMiddleware, request_context
    from tether.integrations.httpx import AsyncContextTransport

    start, wait = topology["start"], topology["wait"]
    start(topology["leaf"], ["leaf", "10.231.2.2", "8000", str(margin)])
    start(topology["mid"], ["middle", "10.231.1.2", "8000", "http://10.231.2.2:8000/",
                            str(margin)])  # fmt: skip
    wait(topology["leaf"], "10.231.2.2", 8000, topology["procs"][0])
    wait(topology["mid"], "10.231.1.2", 8000, topology["procs"][1])

    policy = propagation.Policy(margin=margin)

    async def edge(request: Request) -> JSONResponse:
        ctx = request_context(request)
        left = ctx.remaining()
        me = {"hop": "edge", "budget": left, "deadline": time.monotonic() + left}
        async with httpx.AsyncClient(
            transport=AsyncContextTransport(policy=policy), trust_env=False
        ) as client:
            await client.get("http://10.231.1.2:8000/")  # warm both links' connections
            r = await client.get("http://10.231.1.2:8000/")
        return JSONResponse([me, *r.json()], status_code=r.status_code)

    app = Starlette(routes=[Route("/", edge)])
    app.add_middleware(ContextMiddleware)
    with serve(app) as url, httpx.Client(trust_env=False) as client:
        r = client.get(url + "/", headers={"x-request-timeout": "3S", "x-request-id": "ns-1"})
    assert r.status_code == 200, r.text
    hops = {h["hop"]: h for h in r.json()}
    b = {k: hops[k]["budget"] for k in ("edge", "middle", "leaf")}
    late = {
        "middle": hops["middle"]["deadline"] - hops["edge"]["deadline"],
        "leaf": hops["leaf"]["deadline"] - hops["middle"]["deadline"],
    }
    print(
        f"\nmargin {margin * 1e3:.0f} ms, {DELAY_MS if topology['netem'] else 0} ms per link: "
        f"budgets edge {b['edge'] * 1e3:.1f}, middle {b['middle'] * 1e3:.1f}, leaf "
        f"{b['leaf'] * 1e3:.1f} ms; deadline later than the caller's by: middle "
        f"{late['middle'] * 1e3:+.1f} ms, leaf {late['leaf'] * 1e3:+.1f} ms"
    )
    # the budgets shrink by at least the margin per hop
    assert b["leaf"] <= b["middle"] - margin <= b["edge"] - 2 * margin
    assert tether.background().err() is None
    if not topology["netem"]:
        return
    if margin >= 2 * DELAY_MS / 1e3:
        # a margin covering the link: no hop outlives its caller
        assert late["middle"] <= 0
        assert late["leaf"] <= 0
    else:
        # the wire time is not in the budget: each hop ends about one link later
        assert late["middle"] > 0.5 * DELAY_MS / 1e3
        assert late["leaf"] > 0.5 * DELAY_MS / 1e3
