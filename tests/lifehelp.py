"""Helpers shared by the lifecycle tests: a child interpreter for the fatal paths."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def run_child(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (SystemExit, BaseException, signals, loops)."""
    return subprocess.run(
        [sys.executable, "-X", "dev", "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def lines(proc: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """``key=value`` lines the child printed, as a dict."""
    out = {}
    for line in proc.stdout.splitlines():
        k, sep, v = line.partition("=")
        if sep:
            out[k.strip()] = v.strip()
    return out


async def run_consumer_until(
    c: Any, done: Callable[[], bool], timeout: float = 20, *, parent: Any = None
) -> Any:
    """Run the ``Consumer`` ``c`` under a child of ``parent`` (default ``background()``)
    until ``done()`` holds, checked while it runs; then cancel it and return what
    ``c.run`` returned (its final stats), or return at once if it stopped by itself.
    Fails after ``timeout`` seconds."""
    import asyncio

    import tether

    ctx, cancel = tether.with_cancel(parent or tether.background())
    task = asyncio.ensure_future(c.run(ctx))
    try:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not done():
            if task.done():
                return task.result()
            assert loop.time() < end, f"tether: not done in {timeout}s: {c.stats()}"
            await asyncio.sleep(0.002)
    finally:
        cancel()
    return await asyncio.wait_for(task, 30)
