"""The chain across network namespaces, 20 ms of added latency per link.

edge (this process, root namespace) -> middle (namespace M) -> leaf (namespace L), over
two veth links addressed in a random ``127.X.1.0/24`` and ``127.X.2.0/24`` (loopback
space: nothing outside this machine can be routed there; ``route_localnet`` is enabled
only on our own veth ends), each link delayed 20 ms in each direction. All namespaces of
one kernel share CLOCK_MONOTONIC, so the hops' absolute deadlines can be compared.

The delay is ``tc netem`` on both ends of each veth where the kernel has ``sch_netem``;
elsewhere (as on the machine this was written on) a userspace relay in the receiving
namespace (tests/netns_relay.py) holds each chunk of each direction for 20 ms before
passing it on, in order. ``TETHER_NETNS_DELAY=netem|relay`` forces one (default: netem
if the qdisc exists, else relay). docs/design.md 7.7 has the why.

What it shows: a budget does not count the time it spends on the wire (it is relative,
by design: docs/design.md 7.1), so a hop's deadline lands one link's latency minus
``policy.margin`` later than its caller's; with a margin that covers the link, no
downstream deadline is later than its caller's. The budgets themselves shrink hop by
hop by at least the margin. It also measures each link's round trip (GET /ping).

Needs root, ``ip netns``, veth, ``setpriv`` (util-linux) and ``sysctl`` (procps); skips
with the reason otherwise. Runs are serialized by a lock file; the run that takes it
first deletes what a killed run left (namespaces ``tthn-*``, root-namespace links
``tthn*``). Children get SIGTERM when this process dies (``setpriv --pdeathsig``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from http_servers import serve

pytestmark = [pytest.mark.realtime, pytest.mark.slow]

HERE = Path(__file__).resolve().parent
DELAY_MS = 20
CALLS = 5  # chain calls per test; the latency relations are asserted on their median
PINGS = 5  # round trips measured per link
# A noisy 2-core machine stalls a process for tens of ms now and then: upper bounds on
# latencies get this much slack (applied to a median or a minimum, never to one sample).
SLACK = 0.025
NS_PREFIX = "tthn-"  # our namespaces: tthn-<pid>-m, tthn-<pid>-l, tthn-<pid>-p (probe)
LINK_PREFIX = "tthn"  # our root-namespace veth end: tthn<pid>
PORT, HOP_PORT = 8000, 8001  # the link address's port; the hop's behind a relay
LOCK = Path("/run" if os.access("/run", os.W_OK) else tempfile.gettempdir()) / "tether-netns.lock"


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    if check and r.returncode:
        raise RuntimeError(f"tether: {' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


def _ours() -> tuple[list[str], list[str]]:
    """(our namespaces, our root-namespace links) that exist now."""
    names = [ln.split()[0] for ln in _run("ip", "netns", "list").stdout.splitlines() if ln]
    links = [
        ln.split(":")[1].strip().split("@")[0]
        for ln in _run("ip", "-o", "link", "show").stdout.splitlines()
    ]
    return (
        [n for n in names if n.startswith(NS_PREFIX)],
        [n for n in links if n.startswith(LINK_PREFIX)],
    )


def _sweep() -> list[str]:
    """Delete what a killed run left behind (we hold the lock: nothing of ours is live)."""
    names, links = _ours()
    for ns in names:
        for pid in _run("ip", "netns", "pids", ns, check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        _run("ip", "netns", "del", ns, check=False)
    for link in links:
        _run("ip", "link", "del", link, check=False)
    return names + links


def _probe() -> str:
    """'' if namespaces and veth work here, else why not."""
    ns = f"{NS_PREFIX}{os.getpid()}-p"
    try:
        r = _run("ip", "netns", "add", ns, check=False)
        if r.returncode:
            return f"ip netns add failed: {r.stderr.strip()}"
        r = _run("ip", "-n", ns, "link", "add", "p0", "type", "veth", "peer", "name", "p1",
                 check=False)  # fmt: skip
        if r.returncode:
            return f"no veth: {r.stderr.strip()}"
        return ""
    finally:
        _run("ip", "netns", "del", ns, check=False)


def _has_netem() -> tuple[bool, str]:
    ns = f"{NS_PREFIX}{os.getpid()}-p"
    try:
        _run("ip", "netns", "add", ns)
        _run("ip", "-n", ns, "link", "add", "p0", "type", "veth", "peer", "name", "p1")
        r = _run("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "p0", "root", "netem",
                 "delay", "1ms", check=False)  # fmt: skip
        return r.returncode == 0, r.stderr.strip()
    finally:
        _run("ip", "netns", "del", ns, check=False)


@pytest.fixture(scope="module")
def delay_mode() -> Iterator[str]:
    """Take the lock, sweep, and decide how links are delayed: 'netem' or 'relay'."""
    if os.geteuid() != 0:
        pytest.skip("needs root for ip netns")
    missing = [t for t in ("ip", "tc", "ss", "setpriv", "sysctl") if not shutil.which(t)]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (iproute2, util-linux, procps)")
    with open(LOCK, "a") as lock:
        end = time.monotonic() + 60
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > end:
                    pytest.skip(f"another run has held {LOCK} for 60 s")
                time.sleep(0.2)
        try:
            swept = _sweep()
            if swept:
                print(f"\nswept what a killed run left: {', '.join(swept)}")
            reason = _probe()
            if reason:
                pytest.skip(reason)
            netem, why = _has_netem()
            mode = os.environ.get("TETHER_NETNS_DELAY") or ("netem" if netem else "relay")
            if mode not in {"netem", "relay"}:
                pytest.fail(f"tether: TETHER_NETNS_DELAY is netem or relay, not {mode!r}")
            if mode == "netem" and not netem:
                pytest.skip(f"TETHER_NETNS_DELAY=netem but no tc netem qdisc here: {why}")
            yield mode
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _free_octet() -> int:
    """A second octet X such that nothing on this machine uses 127.X.* now."""
    used = " ".join(
        _run(*cmd, check=False).stdout
        for cmd in (
            ("ip", "-4", "-o", "addr"),
            ("ip", "-4", "route", "show", "table", "all"),
            ("ss", "-Htuan"),
        )
    )
    for _ in range(100):
        x = random.randrange(64, 255)
        if f"127.{x}." not in used:
            return x
    raise RuntimeError("tether: no free 127.X/16 for the links")


@dataclass
class Chain:
    mode: str
    octet: int
    mid: str
    leaf: str
    root_if: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def addr(self, link: int) -> str:
        """The far end of link 1 (root - middle) or 2 (middle - leaf)."""
        return f"127.{self.octet}.{link}.2"

    def url(self, link: int) -> str:
        return f"http://{self.addr(link)}:{PORT}/"

    def spawn(self, ns: str, script: str, *argv: str) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"), str(HERE)])}
        cmd = ["setpriv", "--pdeathsig", "TERM", "ip", "netns", "exec", ns, sys.executable]
        self.procs.append(subprocess.Popen([*cmd, str(HERE / script), *argv], env=env))

    def start(self, margin: float) -> None:
        """Start the leaf and the middle (and the relays), and wait until all answer."""
        # a hop listens on its link's address, or on its namespace's loopback behind a
        # relay that listens on the link's address
        listen = {link: (self.addr(link), str(PORT)) for link in (1, 2)}
        if self.mode == "relay":
            for ns, link in ((self.leaf, 2), (self.mid, 1)):
                self.spawn(ns, "netns_relay.py", *listen[link], "127.0.0.1", str(HOP_PORT),
                           str(DELAY_MS))  # fmt: skip
                listen[link] = ("127.0.0.1", str(HOP_PORT))
        self.spawn(self.leaf, "netns_hop.py", "leaf", *listen[2], str(margin))
        self.spawn(self.mid, "netns_hop.py", "middle", *listen[1], self.url(2), str(margin))
        end = time.monotonic() + 30
        with httpx.Client(trust_env=False, timeout=2) as client:
            while True:
                dead = [p.args for p in self.procs if p.poll() is not None]
                if dead:
                    raise RuntimeError(f"tether: a child of the chain exited: {dead}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(self.url(1) + "ping?n=1").status_code == 200:
                        return
                if time.monotonic() > end:
                    raise RuntimeError("tether: the chain did not answer /ping within 30 s")
                time.sleep(0.05)

    def rtts(self) -> dict[str, list[float]]:
        """Round trips of each link, seconds: PINGS sequential GET /ping each."""
        out: dict[str, list[float]] = {"edge-middle": []}
        with httpx.Client(trust_env=False, timeout=5) as client:
            client.get(self.url(1) + "ping").raise_for_status()  # a warm connection
            for _ in range(PINGS):
                t0 = time.monotonic()
                client.get(self.url(1) + "ping").raise_for_status()
                out["edge-middle"].append(time.monotonic() - t0)
            r = client.get(self.url(1) + f"ping?n={PINGS + 1}")
            r.raise_for_status()
        out["middle-leaf"] = r.json()["next_rtt"][1:]  # the first one may open the connection
        return out


def _link(chain: Chain, a: str | None, a_if: str, b: str, b_if: str, link: int) -> None:
    """A veth pair between namespace a (None: root) and b, 127.X.link.1/24 - .2/24."""
    _run("ip", "link", "add", a_if, "type", "veth", "peer", "name", b_if)
    _run("ip", "link", "set", b_if, "netns", b)
    if a is not None:
        _run("ip", "link", "set", a_if, "netns", a)
    net = f"127.{chain.octet}.{link}"
    for ns, dev, ip in ((a, a_if, f"{net}.1"), (b, b_if, f"{net}.2")):
        exec_ = ["ip", "netns", "exec", ns] if ns else []
        # 127/8 off the loopback device is martian unless the device allows it
        _run(*exec_, "sysctl", "-qw", f"net.ipv4.conf.{dev}.route_localnet=1")
        _run(*exec_, "ip", "addr", "add", f"{ip}/24", "dev", dev)
        _run(*exec_, "ip", "link", "set", dev, "up")
        if chain.mode == "netem":
            _run(*exec_, "tc", "qdisc", "add", "dev", dev, "root", "netem", "delay",
                 f"{DELAY_MS}ms")  # fmt: skip


@pytest.fixture
def chain(delay_mode: str) -> Iterator[Chain]:
    tag = str(os.getpid())
    c = Chain(delay_mode, _free_octet(), f"{NS_PREFIX}{tag}-m", f"{NS_PREFIX}{tag}-l",
              f"{LINK_PREFIX}{tag}")  # fmt: skip
    try:
        for ns in (c.mid, c.leaf):
            _run("ip", "netns", "add", ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        _link(c, None, c.root_if, c.mid, "m0", 1)
        _link(c, c.mid, "m1", c.leaf, "l0", 2)
        yield c
    finally:
        for proc in c.procs:
            proc.terminate()
        for proc in c.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        _run("ip", "link", "del", c.root_if, check=False)
        for ns in (c.mid, c.leaf):
            _run("ip", "netns", "del", ns, check=False)
        names, links = _ours()
        left = [n for n in names + links if tag in n]
        assert not left, f"tether: the chain left {left} behind"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:+.1f}"


@pytest.mark.parametrize("margin", [0.005, 0.05], ids=["margin-5ms", "margin-50ms"])
def test_the_chain_across_namespaces(chain: Chain, margin: float) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from tether import propagation
    from tether.integrations.asgi import ContextMiddleware, request_context
    from tether.integrations.httpx import AsyncContextTransport

    chain.start(margin)
    rtts = chain.rtts()
    delay = DELAY_MS / 1e3
    print(f"\n{chain.mode}, {DELAY_MS} ms per link each way, margin {margin * 1e3:.0f} ms")
    for link, xs in rtts.items():
        all_ = ", ".join(f"{x * 1e3:.1f}" for x in xs)
        print(f"  round trip {link}: min {min(xs) * 1e3:.1f} ms (all: {all_})")
        # each way at least the delay; the fastest of PINGS within the slack of it
        assert 2 * delay <= min(xs) <= 2 * delay + SLACK, (link, xs)

    policy = propagation.Policy(margin=margin)

    async def edge(request: Request) -> JSONResponse:
        ctx = request_context(request)
        chains: list[list[dict[str, Any]]] = []
        async with httpx.AsyncClient(
            transport=AsyncContextTransport(policy=policy), trust_env=False
        ) as client:
            await client.get(chain.url(1))  # warm both links' connections
            for _ in range(CALLS):
                left = ctx.remaining()
                assert left is not None
                me = {"hop": "edge", "budget": left, "deadline": time.monotonic() + left}
                r = await client.get(chain.url(1))
                if r.status_code != 200:
                    return JSONResponse({"error": r.text}, status_code=r.status_code)
                chains.append([me, *r.json()])
        return JSONResponse(chains)

    app = Starlette(routes=[Route("/", edge)])
    app.add_middleware(ContextMiddleware)
    with serve(app) as url, httpx.Client(trust_env=False, timeout=10) as client:
        r = client.get(url + "/", headers={"x-request-timeout": "3S", "x-request-id": "ns-1"})
    assert r.status_code == 200, r.text

    late: dict[str, list[float]] = {"middle": [], "leaf": []}
    for calls in r.json():
        hops = {h["hop"]: h for h in calls}
        b = {k: hops[k]["budget"] for k in ("edge", "middle", "leaf")}
        # the budgets shrink by at least the margin per hop
        assert b["leaf"] <= b["middle"] - margin <= b["edge"] - 2 * margin, b
        for hop, caller in (("middle", "edge"), ("leaf", "middle")):
            d = hops[hop]["deadline"] - hops[caller]["deadline"]
            # the wire time is not in the budget: a hop's deadline is at least one link's
            # latency minus the margin later than its caller's (1 ms: float and rounding)
            assert d >= delay - margin - 0.001, (hop, d)
            late[hop].append(d)
        print(
            f"  budgets edge {b['edge'] * 1e3:.1f}, middle {b['middle'] * 1e3:.1f}, leaf "
            f"{b['leaf'] * 1e3:.1f} ms; deadline later than the caller's by: middle "
            f"{_ms(late['middle'][-1])} ms, leaf {_ms(late['leaf'][-1])} ms"
        )
    med = {hop: statistics.median(xs) for hop, xs in late.items()}
    print(f"  median: middle {_ms(med['middle'])} ms, leaf {_ms(med['leaf'])} ms later")
    for hop, m in med.items():
        # ... and not much more than that
        assert m <= delay - margin + SLACK, (hop, late[hop])
        if margin > delay + SLACK:
            # a margin covering the link: no hop outlives its caller
            assert m <= 0, (hop, late[hop])
