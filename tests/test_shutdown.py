"""Shutdown for real: a child process (examples/service.py) gets SIGTERM under load.

The child runs a Supervisor with a producer feeding a WorkerPool, an interval job and
detached audit writes, and logs JSON lines. From those lines alone we check that every
item the pool accepted was processed or reported as not processed, that every accepted
audit write was done, how long the exit took, and its status. Timing bounds are generous
(the machine is shared); they guard against hangs, not for speed.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals"),
]

SERVICE = Path(__file__).resolve().parent.parent / "examples" / "service.py"
MARGIN = 4.0  # seconds of slack over the configured deadlines, for a loaded machine


class Child:
    def __init__(self, *args: str) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVICE), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: list[dict] = []
        self._q: queue.Queue[dict | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                rec = json.loads(raw)
            except ValueError:
                rec = {"event": "garbage", "raw": raw}
            self._q.put(rec)
        self._q.put(None)

    def wait_for(self, pred, timeout: float = 20.0) -> dict:
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                self.kill()
                pytest.fail(f"child never logged the expected line; last: {self.lines[-5:]}")
            try:
                rec = self._q.get(timeout=left)
            except queue.Empty:
                continue
            if rec is None:
                pytest.fail(f"child exited early ({self.proc.wait()}): {self.stderr()}")
            self.lines.append(rec)
            if pred(rec):
                return rec

    def count(self, event: str) -> int:
        return sum(1 for r in self.lines if r.get("event") == event)

    def signal(self, sig: int = signal.SIGTERM) -> float:
        t = time.monotonic()
        self.proc.send_signal(sig)
        return t

    def finish(self, timeout: float) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"child did not exit within {timeout}s")
        self._reader.join(10)
        while True:
            rec = self._q.get_nowait() if not self._q.empty() else None
            if rec is None:
                break
            self.lines.append(rec)
        return rc

    def stderr(self) -> str:
        assert self.proc.stderr is not None
        return self.proc.stderr.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def events(self, name: str) -> list[dict]:
        return [r for r in self.lines if r.get("event") == name]


@pytest.fixture
def child_factory():
    children: list[Child] = []

    def make(*args: str) -> Child:
        c = Child(*args)
        children.append(c)
        return c

    yield make
    for c in children:
        c.kill()
        for stream in (c.proc.stdout, c.proc.stderr):
            if stream is not None:
                stream.close()


def check_nothing_lost(c: Child) -> dict[str, int]:
    accepted = {r["item"] for r in c.events("item_accepted")}
    done = [r["item"] for r in c.events("item_done")]
    unprocessed = [r["item"] for r in c.events("item_unprocessed")]
    assert accepted, "the pool accepted nothing: no load"
    assert len(done) == len(set(done)), "an item was processed twice"
    assert not set(done) & set(unprocessed), "an item both processed and reported lost"
    missing = accepted - set(done) - set(unprocessed)
    assert not missing, f"accepted but neither processed nor reported: {sorted(missing)[:10]}"
    assert set(done) | set(unprocessed) <= accepted
    audits = {r["item"] for r in c.events("audit_accepted")}
    audited = {r["item"] for r in c.events("audit_done")}
    assert audits == audited, f"detached audits lost: {sorted(audits - audited)[:10]}"
    return {"accepted": len(accepted), "done": len(done), "unprocessed": len(unprocessed)}


def test_sigterm_under_load_drains_everything_and_exits_0(child_factory):
    drain = 5.0
    c = child_factory("--item-seconds", "0.02", "--drain-timeout", str(drain))
    c.wait_for(lambda r: r.get("event") == "started")
    c.wait_for(lambda r: r.get("event") == "item_done" and r["item"] >= 30)  # mid-load
    c.wait_for(lambda r: r.get("event") == "tick")
    sent = c.signal()
    rc = c.finish(timeout=drain + 2 + MARGIN)
    elapsed = time.monotonic() - sent
    assert rc == 0, c.stderr()
    assert elapsed < drain + MARGIN
    counts = check_nothing_lost(c)
    assert counts["unprocessed"] == 0  # a 5 s drain is plenty for a 20-item queue
    (stopped,) = c.events("stopped")
    assert stopped["exit_code"] == 0
    (started,) = c.events("shutdown_started")
    assert started["cause"] == "received SIGTERM"
    assert not c.events("job_failed")
    # intake closed at the start of shutdown: nothing accepted after it
    t_stop = started["t"]
    assert all(r["t"] <= t_stop + 0.5 for r in c.events("item_accepted"))


def test_a_drain_deadline_that_passes_reports_what_was_not_processed(child_factory):
    drain = 1.0
    # items take 30 s (they honour their context): nothing finishes within the drain
    c = child_factory("--item-seconds", "30", "--drain-timeout", str(drain), "--close-timeout", "1")
    c.wait_for(lambda r: r.get("event") == "item_accepted" and r["item"] >= 10)
    sent = c.signal()
    rc = c.finish(timeout=drain + 1 + 1 + MARGIN)
    elapsed = time.monotonic() - sent
    assert rc == 1, c.stderr()  # the pool did not finish within the drain deadline
    assert elapsed < drain + 1 + MARGIN
    counts = check_nothing_lost(c)
    assert counts["done"] == 0
    reasons = {r["reason"] for r in c.events("item_unprocessed")}
    assert reasons == {"cancelled", "drain deadline"}
    (stopped,) = c.events("stopped")
    assert stopped["unfinished"] == ["pool"]


def test_a_second_sigterm_during_a_slow_drain_exits_at_once(child_factory):
    c = child_factory("--item-seconds", "30", "--drain-timeout", "30")
    c.wait_for(lambda r: r.get("event") == "item_accepted" and r["item"] >= 10)
    c.signal()
    c.wait_for(lambda r: r.get("event") == "pool_draining")
    time.sleep(0.2)  # well into the (30 s) drain
    sent = c.signal()
    rc = c.finish(timeout=MARGIN + 6)
    elapsed = time.monotonic() - sent
    assert rc == -signal.SIGTERM  # killed by the re-delivered signal
    assert elapsed < MARGIN + 1
    assert "tether: second SIGTERM during shutdown: exiting now" in c.stderr()
    assert not c.events("stopped")  # it did not wait for the drain
