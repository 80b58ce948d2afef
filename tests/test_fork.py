"""os.fork(): deadlines armed before the fork still fire in the child, the child can arm
new ones, run after_func callbacks and await contexts, and a fork taken while other
threads are busy in the tree does not deadlock the child.

Each scenario runs in a fresh interpreter (forking pytest itself, with its threads, is
not safe), which reports back as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

SCRIPT = textwrap.dedent(
    """
    import asyncio, json, os, sys, threading, time
    import tether

    bg = tether.background()

    def child_checks(before):
        out = {}
        # armed before the fork, in the parent's heap: fires here too
        out["pre_fork_fired"] = before.done().wait(10)
        out["pre_fork_err"] = type(before.err()).__name__
        out["pre_fork_remaining_le_0"] = before.remaining() <= 0
        # new deadlines work (the timer thread is running in the child)
        ctx, cancel = tether.with_timeout(bg, 0.05)
        out["new_fired"] = ctx.done().wait(10)
        cancel()
        # after_func callbacks run (the runner's workers did not survive the fork)
        ran = threading.Event()
        c2, cancel2 = tether.with_cancel(bg)
        tether.after_func(c2, ran.set)
        cancel2()
        out["after_func_ran"] = ran.wait(10)
        # asyncio waits work
        c3, cancel3 = tether.with_timeout(bg, 0.02)

        async def main():
            await asyncio.wait_for(c3.done(), 10)
            return True

        out["await_done"] = asyncio.run(main())
        cancel3()
        return out

    def run(busy):
        stop = threading.Event()

        def hammer():
            while not stop.is_set():
                c, k = tether.with_timeout(bg, 0.001)
                d, k2 = tether.with_cancel(c)
                k2()
                k()

        hammers = [threading.Thread(target=hammer) for _ in range(busy)]
        for t in hammers:
            t.start()
        results = []
        parent_ctxs = []
        for i in range(5):
            before, cancel_before = tether.with_timeout(bg, 0.2)
            parent_ctxs.append((before, cancel_before))
            time.sleep(0.01)  # the timer thread is asleep towards `before`
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(r)
                try:
                    out = child_checks(before)
                except BaseException as e:
                    out = {"error": repr(e)}
                os.write(w, json.dumps(out).encode())
                os.close(w)
                os._exit(0)
            os.close(w)
            deadline = time.monotonic() + 30
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                if time.monotonic() > deadline:
                    os.kill(pid, 9)
                    os.waitpid(pid, 0)
                    status = "hung"
                    break
                time.sleep(0.005)
            data = b""
            while chunk := os.read(r, 65536):
                data += chunk
            os.close(r)
            results.append({"status": status, "out": json.loads(data) if data else None})
        stop.set()
        for t in hammers:
            t.join()
        # and in the parent, the deadlines still fire
        parent_ok = all(c.done().wait(10) for c, _ in parent_ctxs)
        for _, k in parent_ctxs:
            k()
        print(json.dumps({"children": results, "parent_ok": parent_ok}))

    run(int(sys.argv[1]))
    """
)

EXPECTED_CHILD = {
    "pre_fork_fired": True,
    "pre_fork_err": "DeadlineExceeded",
    "pre_fork_remaining_le_0": True,
    "new_fired": True,
    "after_func_ran": True,
    "await_done": True,
}


@pytest.mark.slow
@pytest.mark.parametrize("busy", [0, 2], ids=["quiet", "busy-threads"])
def test_fork(busy):
    proc = subprocess.run(
        [sys.executable, "-W", "ignore::DeprecationWarning", "-c", SCRIPT, str(busy)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["parent_ok"]
    for child in report["children"]:
        assert child["status"] == 0, f"child exited badly or hung: {child}"
        assert child["out"] == EXPECTED_CHILD
