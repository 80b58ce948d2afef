"""The consumer's promise, end to end: 1,000 messages, a SIGTERM mid-stream to a real
subprocess under ``Supervisor``, a restart — every message handled, none acked without
being handled, and duplicates only where a handler had not finished (at-least-once).

Run 1 has a few "slow" messages whose handler runs until its context ends: they are in
hand at the SIGTERM, get cancelled after the consumer's grace, and must come back
(unacked) to run 2. Their count is the only duplication allowed, and it is printed.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import require_service

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "tests" / "consumer_worker.py"
N = 1000

pytestmark = pytest.mark.slow


def read_log(path: Path) -> tuple[dict[str, int], dict[str, int]]:
    started: dict[str, int] = {}
    done: dict[str, int] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            what, _, mid = line.partition(" ")
            d = started if what == "start" else done
            d[mid] = d.get(mid, 0) + 1
    return started, done


def spawn(cfg: dict[str, Any]) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, str(WORKER), json.dumps(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


def run_until_then_term(
    cfg: dict[str, Any], log: Path, enough: int, timeout: float = 60
) -> tuple[int, str]:
    """Start the worker, SIGTERM it once ``log`` has ``enough`` done lines; its exit."""
    proc = spawn(cfg)
    try:
        end = time.monotonic() + timeout
        while len(read_log(log)[1]) < enough:
            if proc.poll() is not None:
                out, err = proc.communicate()
                pytest.fail(f"worker exited early ({proc.returncode}):\n{out}\n{err}")
            if time.monotonic() > end:
                pytest.fail(f"worker handled only {len(read_log(log)[1])} of {enough} in time")
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "consumer_stopping" in err or "stopping" in err, err
    return proc.returncode, out + err


def check_and_report(
    kind: str,
    all_ids: list[str],
    log1: Path,
    log2: Path,
    acked_after_run1: set[str],
    unacked_after_run1: set[str],
) -> dict[str, int]:
    started1, done1 = read_log(log1)
    started2, done2 = read_log(log2)
    # nothing acked that was not handled
    assert acked_after_run1 <= set(done1), sorted(acked_after_run1 - set(done1))[:5]
    # nothing handled (in run 1) that was not acked
    assert not (set(done1) & unacked_after_run1), sorted(set(done1) & unacked_after_run1)[:5]
    # every message handled
    assert set(done1) | set(done2) == set(all_ids)
    # no handler finished twice; a handler re-ran only where it had not finished
    assert all(v == 1 for v in done1.values())
    assert all(v == 1 for v in done2.values())
    assert not (set(done1) & set(done2))
    rerun = set(started1) & set(started2)
    assert rerun == set(started1) - set(done1)
    report = {
        "messages": len(all_ids),
        "handled_run1": len(done1),
        "handled_run2": len(done2),
        "in_hand_at_sigterm_unfinished": len(set(started1) - set(done1)),
        "duplicate_handler_starts": len(rerun),
        "duplicate_completions": 0,
    }
    print(f"\nconsumer SIGTERM test ({kind}): {json.dumps(report)}")
    return report


# --------------------------------------------------------------------------------------
# Redis Streams


def test_redis_sigterm_mid_stream_then_restart(tmp_path):
    require_service("127.0.0.1", 6379, "Redis")
    redis_asyncio = pytest.importorskip("redis.asyncio")
    url = "redis://127.0.0.1:6379/0"
    stream = f"t.sigterm.{uuid.uuid4().hex[:8]}"

    async def setup() -> list[str]:
        r = redis_asyncio.Redis.from_url(url)
        try:
            await r.xgroup_create(stream, "g", id="0", mkstream=True)
            p = r.pipeline(transaction=False)
            for i in range(N):
                p.xadd(stream, {"n": str(i)})
            return [x.decode() for x in await p.execute()]
        finally:
            await r.aclose()

    async def state() -> tuple[set[str], set[str]]:
        """(delivered and acked, delivered and pending)."""
        r = redis_asyncio.Redis.from_url(url)
        try:
            info = await r.xinfo_groups(stream)
            last = info[0]["last-delivered-id"].decode()
            delivered = {e[0].decode() for e in await r.xrange(stream, "-", last)}
            rows = await r.xpending_range(stream, "g", min="-", max="+", count=10 * N)
            pend = {p["message_id"].decode() for p in rows}
            return delivered - pend, pend
        finally:
            await r.aclose()

    async def drop() -> None:
        r = redis_asyncio.Redis.from_url(url)
        try:
            await r.delete(stream)
        finally:
            await r.aclose()

    ids = asyncio.run(setup())
    try:
        log1, log2 = tmp_path / "run1.log", tmp_path / "run2.log"
        base = {"source": "redis", "url": url, "stream": stream, "group": "g", "consumer": "c1"}
        cfg1 = {**base, "log": str(log1), "slow_every": 150, "concurrency": 8, "grace": 0.5}
        code, out = run_until_then_term(cfg1, log1, enough=300)
        assert code == 0, out
        acked, unacked = asyncio.run(state())
        assert len(read_log(log1)[1]) < N  # it really was mid-stream
        cfg2 = {**base, "log": str(log2), "concurrency": 8}
        need = N - len(read_log(log1)[1])
        code, out = run_until_then_term(cfg2, log2, enough=need)
        assert code == 0, out
        acked_end, pending_end = asyncio.run(state())
        assert pending_end == set()
        assert acked_end == set(ids)
        rep = check_and_report("redis", ids, log1, log2, acked, unacked)
        assert rep["duplicate_handler_starts"] >= 1  # the slow ones in hand at SIGTERM
    finally:
        asyncio.run(drop())


# --------------------------------------------------------------------------------------
# NATS JetStream


def test_nats_sigterm_mid_stream_then_restart(tmp_path):
    require_service("127.0.0.1", 4222, "NATS (JetStream)")
    nats = pytest.importorskip("nats")
    url = "nats://127.0.0.1:4222"
    tag = "t" + uuid.uuid4().hex[:8]
    stream, subject = tag.upper(), f"{tag}.in"

    async def setup() -> list[str]:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            await js.add_stream(name=stream, subjects=[subject])
            futs = [await js.publish_async(subject, str(i).encode()) for i in range(N)]
            acks = await asyncio.gather(*futs)
            return [f"{stream}:{a.seq}" for a in acks]
        finally:
            await nc.close()

    async def state() -> tuple[set[str], set[str]]:
        """(delivered, acked below the ack floor). JetStream shows per-message ack state
        only as a floor plus a count (num_ack_pending), so run 1's acks are checked
        three ways: below the floor means handled; the pending count equals the
        delivered-but-unhandled count; and run 2 gets back exactly the unhandled ones
        (a handled-but-unacked message would complete twice, an acked-but-unhandled one
        would never complete: check_and_report fails on both)."""
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            info = await js.consumer_info(stream, "workers")
            delivered = {f"{stream}:{i}" for i in range(1, info.delivered.stream_seq + 1)}
            floor = info.ack_floor.stream_seq
            return delivered, {f"{stream}:{i}" for i in range(1, floor + 1)}
        finally:
            await nc.close()

    async def drop() -> None:
        nc = await nats.connect(url)
        try:
            await nc.jetstream().delete_stream(stream)
        finally:
            await nc.close()

    ids = asyncio.run(setup())
    try:
        log1, log2 = tmp_path / "run1.log", tmp_path / "run2.log"
        base = {"source": "nats", "url": url, "stream": stream, "durable": "workers"}
        base["subject"] = subject
        cfg1 = {**base, "log": str(log1), "slow_every": 150, "concurrency": 8, "grace": 0.5}
        code, out = run_until_then_term(cfg1, log1, enough=300)
        assert code == 0, out
        delivered, below_floor = asyncio.run(state())
        nats_pending = asyncio.run(num_ack_pending(nats, url, stream))
        _, done1 = read_log(log1)
        assert len(done1) < N
        # NATS states acks as a floor plus the acked ones above it; everything below the
        # floor is acked and must have been handled.
        assert below_floor <= set(done1)
        # run 1 acked every message it handled: only unfinished and buffered ones pend
        assert nats_pending == len(delivered) - len(set(done1) & delivered)
        cfg2 = {**base, "log": str(log2), "concurrency": 8}
        need = N - len(done1)
        code, out = run_until_then_term(cfg2, log2, enough=need)
        assert code == 0, out
        assert asyncio.run(num_ack_pending(nats, url, stream)) == 0
        acked_end = set(done1) | set(read_log(log2)[1])
        unacked1 = delivered - set(done1)
        rep = check_and_report("nats", ids, log1, log2, set(done1) & delivered, unacked1)
        assert acked_end == set(ids)
        assert rep["duplicate_handler_starts"] >= 1
    finally:
        asyncio.run(drop())


async def num_ack_pending(nats: Any, url: str, stream: str) -> int:
    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().consumer_info(stream, "workers")
        return int(info.num_ack_pending)
    finally:
        await nc.close()
