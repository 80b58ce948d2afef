"""Shared test machinery.

- ``runtime``: every semantic test that involves waiting runs once with threads and once
  with asyncio (AnyIO's habit), through one small interface.
- ``require_service(host, port, what)``: integration tests skip with a clear reason
  when a server is absent, except under ``CI=true``, where that is a failure.
- Leak check: enabled for the whole suite in pyproject.toml (``tether_leak_check``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

import tether

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_service(host: str, port: int, what: str) -> None:
    """Skip (or, under CI=true, fail) unless something listens on host:port."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return
    except OSError as e:
        msg = f"{what} is not reachable on {host}:{port} ({e}); start it to run this test"
        if IN_CI:
            pytest.fail(f"CI=true: {msg}", pytrace=False)
        pytest.skip(msg)


class Runtime:
    """How a test waits for a context: from a thread, or from an asyncio task."""

    name: str

    def wait(self, ctx: tether.Context, timeout: float) -> bool:
        """Block until ctx is done (True) or timeout real seconds passed (False)."""
        raise NotImplementedError

    def waiter(self, ctx: tether.Context) -> concurrent.futures.Future[float]:
        """Start waiting for ctx now; the future resolves to when the wait ended."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class ThreadRuntime(Runtime):
    name = "thread"

    def wait(self, ctx: tether.Context, timeout: float) -> bool:
        return ctx.done().wait(timeout)

    def waiter(self, ctx: tether.Context) -> concurrent.futures.Future[float]:
        fut: concurrent.futures.Future[float] = concurrent.futures.Future()
        started = threading.Event()

        def run() -> None:
            started.set()
            ctx.done().wait(10)
            fut.set_result(time.monotonic())

        t = threading.Thread(target=run, name="test-waiter")
        t.start()
        started.wait()
        self._threads.append(t)
        return fut

    def __init__(self) -> None:
        self._threads: list[threading.Thread] = []

    def close(self) -> None:
        for t in self._threads:
            t.join(10)


class AsyncioRuntime(Runtime):
    """An event loop in its own thread for the length of one test."""

    name = "asyncio"

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-loop")
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 10) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def wait(self, ctx: tether.Context, timeout: float) -> bool:
        async def w() -> bool:
            try:
                await asyncio.wait_for(ctx.done(), timeout)
                return True
            except TimeoutError:
                return False

        return bool(self.call(w(), timeout + 5))

    def waiter(self, ctx: tether.Context) -> concurrent.futures.Future[float]:
        started = threading.Event()

        async def w() -> float:
            started.set()
            await asyncio.wait_for(ctx.done(), 10)
            return time.monotonic()

        fut = asyncio.run_coroutine_threadsafe(w(), self.loop)
        started.wait()
        # let the task reach its await before the test cancels
        self.call(asyncio.sleep(0))
        return fut

    def close(self) -> None:
        async def drain() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.call(drain())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture(params=["thread", "asyncio"])
def runtime(request: pytest.FixtureRequest) -> Iterator[Runtime]:
    rt: Runtime = ThreadRuntime() if request.param == "thread" else AsyncioRuntime()
    try:
        yield rt
    finally:
        rt.close()


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``check`` until true; fail after ``timeout`` real seconds."""
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            pytest.fail("condition not reached in time")
        time.sleep(0.001)


@pytest.fixture(scope="session")
def run_mypy(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[[Path], subprocess.CompletedProcess[str]]:
    """Run ``mypy --strict`` on a file the way a user would, with one shared cache."""
    pytest.importorskip("mypy")
    cache = tmp_path_factory.getbasetemp() / "mypy-cache"

    def run(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "mypy",
                "--strict",
                "--no-error-summary",
                "--cache-dir",
                str(cache),
                str(path),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=Path(__file__).resolve().parent.parent,
        )

    return run
