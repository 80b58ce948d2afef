"""Leak detection for tests: threads, asyncio tasks and live contexts left behind.

goleak-style: a snapshot before the test, a check after it that retries for a while
(work that is finishing is not a leak; work that never finishes is), ignoring tether's
own service threads and idle pool workers.

Tasks need one more step, because async test runners (pytest-asyncio, anyio's pytest
plugin) cancel what a test left on their loop when they close it, before any check
after the test could see it pending. So the check notes the tasks that are still pending
(1) when the test function returns (``after_call()``) and (2) when such a runner closes
its ``asyncio.Runner`` (``asyncio.runners._cancel_all_tasks`` is wrapped between
``before_call()`` and ``finish()``; only calls from the runners' own modules are noted,
so ``asyncio.run()`` inside a test keeps its documented cancel-what-is-left behaviour).
A noted task that then ended *cancelled* is reported, with where it was suspended.
"""

from __future__ import annotations

import asyncio
import asyncio.runners
import gc
import sys
import threading
import time
import traceback
import weakref
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from .. import _context

__all__ = ["LeakCheck", "Leaks"]

# tether's own threads come and go with the work (the timer exits when idle, the
# after_func workers after IDLE_SECONDS), and pytest-timeout's watchdog is not ours.
# Group/to_thread workers are renamed tether-worker-idle-N while idle (not a leak); one
# still named tether-worker-N after a test is running a task the test left behind.
# Trio's thread cache names an idle worker "Trio thread N" (a running one carries its
# job's name).
IGNORED_THREAD_PREFIXES = (
    "tether-timer",
    "tether-after-func-",
    "tether-worker-idle-",
    "tether-worker-monitor",
    "pytest_timeout",
    "Trio thread ",
)

# An idle concurrent.futures worker (an event loop's default executor, kept by a
# module- or session-scoped loop) waits in this function: not a leak, whatever its name.
_IDLE_POOL_FUNCTIONS = {("thread.py", "_worker")}

_INDENT = "      "


def _format_frames(frames: list[FrameType], limit: int = 12) -> str:
    summary = traceback.StackSummary.extract(((f, f.f_lineno) for f in frames), limit=None)
    lines = summary.format()[-limit:]
    return "".join(_INDENT + line.replace("\n", "\n" + _INDENT).rstrip(" ") for line in lines)


def thread_stack(t: threading.Thread) -> str:
    """Where ``t`` is now, innermost call last (empty if it is gone)."""
    frame = sys._current_frames().get(t.ident or -1)
    frames: list[FrameType] = []
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    frames.reverse()
    return _format_frames(frames)


def _idle_pool_worker(t: threading.Thread) -> bool:
    frame = sys._current_frames().get(t.ident or -1)
    if frame is None:
        return False
    code = frame.f_code
    return (code.co_filename.rsplit("/", 1)[-1], code.co_name) in _IDLE_POOL_FUNCTIONS and (
        "concurrent" in code.co_filename
    )


def task_summary(t: asyncio.Task[Any]) -> str:
    """The task's name, its coroutine and where it is suspended (its await chain)."""
    coro: Any = t.get_coro()
    head = f"asyncio task {t.get_name()!r} running {getattr(coro, '__qualname__', coro)!r}"
    frames: list[FrameType] = []
    seen = 0
    while coro is not None and seen < 100:
        seen += 1
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            frames.append(frame)
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    if not frames:
        return head
    return f"{head}, suspended at:\n{_format_frames(frames)}"


@dataclass
class Leaks:
    """What a test left behind."""

    threads: list[threading.Thread] = field(default_factory=list)
    tasks: list[asyncio.Task[object]] = field(default_factory=list)
    contexts: list[str] = field(default_factory=list)
    # descriptions of tasks the test runner cancelled after the test left them pending
    cancelled_tasks: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.threads or self.tasks or self.contexts or self.cancelled_tasks)

    def report(self) -> str:
        lines = ["tether: the test left work behind:"]
        for t in self.threads:
            stack = thread_stack(t)
            lines.append(f"  thread {t.name!r} (daemon={t.daemon}), now at:")
            if stack:
                lines.append(stack.rstrip("\n"))
        lines += [f"  {task_summary(t).rstrip()}" for t in self.tasks]
        lines += [
            f"  {d.rstrip()}\n{_INDENT}(pending when the test returned; the runner cancelled it)"
            for d in self.cancelled_tasks
        ]
        lines += [f"  live context {c}" for c in self.contexts]
        lines.append(
            "  cancel what you derive (with/async with), join threads, await tasks; "
            "mark deliberate leaks with @pytest.mark.tether_allow_leaks"
        )
        return "\n".join(lines)


def _pending_tasks() -> list[asyncio.Task[object]]:
    # Tasks on loops that are still open: asyncio.run() closes its loop (cancelling what
    # is left), so what remains here is a task on a loop somebody is still running.
    tasks = asyncio.tasks
    found: set[asyncio.Task[object]] = set()
    for name in ("_all_tasks", "_scheduled_tasks"):
        ws = getattr(tasks, name, None)
        if ws is not None:
            found.update(ws)
    found.update(getattr(tasks, "_eager_tasks", ()))
    return [t for t in found if not t.done() and not t.get_loop().is_closed()]


# Modules whose closing of an asyncio.Runner means "the test is over": what they cancel,
# the test left behind.
_TEST_RUNNER_MODULES = ("pytest_asyncio", "anyio.pytest_plugin", "anyio._backends")


def _called_by_test_runner() -> bool:
    f: FrameType | None = sys._getframe(2)
    while f is not None:
        if f.f_globals.get("__name__", "").startswith(_TEST_RUNNER_MODULES):
            return True
        f = f.f_back
    return False


def _runner_task(t: asyncio.Task[Any]) -> bool:
    # the runner's own task (anyio runs tests and fixtures from one long-lived task)
    frame = getattr(t.get_coro(), "cr_frame", None)
    return frame is not None and frame.f_globals.get("__name__", "").startswith(
        _TEST_RUNNER_MODULES
    )


def _current_tasks() -> set[asyncio.Task[object]]:
    # The tasks running right now (one per running loop): the test's own task under
    # pytest-asyncio/anyio, which is not a leak of itself.
    cur = getattr(asyncio.tasks, "_current_tasks", None)
    return set(cur.values()) if cur else set()


class LeakCheck:
    """Snapshot at ``start()``; ``finish()`` returns what is left after retrying.

    ``before_call()``/``after_call()`` bracket the test function itself (see the module
    docstring); calling them is optional.
    """

    def __init__(self) -> None:
        self._threads: set[int | None] = set()
        self._tasks: set[int] = set()
        self._before_call: set[int] = set()
        # tasks pending when the test returned -> their description at that moment (held
        # strongly until finish(): a runner's cleanup cancels them and drops the last ref)
        self._after_call: dict[asyncio.Task[object], str] = {}
        self._unpatch: tuple[Any, Any] | None = None

    def start(self) -> None:
        self._threads = {t.ident for t in threading.enumerate()}
        self._tasks = {id(t) for t in _pending_tasks()}
        _context._track = weakref.WeakKeyDictionary()

    def before_call(self) -> None:
        self._before_call = {id(t) for t in _pending_tasks()}
        runners: Any = asyncio.runners
        original = runners._cancel_all_tasks
        self._unpatch = (runners, original)

        def cancel_all_tasks(loop: asyncio.AbstractEventLoop) -> None:
            if _called_by_test_runner():
                for t in asyncio.all_tasks(loop):
                    if id(t) not in self._before_call and not _runner_task(t):
                        self._after_call.setdefault(t, task_summary(t))
            original(loop)

        runners._cancel_all_tasks = cancel_all_tasks

    def after_call(self) -> None:
        # Only tasks on a loop that is not running now: nothing will move them on until
        # a runner closes that loop (cancelling them). A loop running in another thread
        # (a server fixture) may still finish its tasks: the pending check covers it.
        running = _current_tasks()
        for t in _pending_tasks():
            if (
                id(t) not in self._before_call
                and t not in running
                and not t.get_loop().is_running()
                and not t.cancelling()
            ):
                self._after_call[t] = task_summary(t)

    def _collect(self, *, collect_garbage: bool) -> Leaks:
        if collect_garbage:
            gc.collect()
        leaks = Leaks()
        leaks.threads = [
            t
            for t in threading.enumerate()
            if t.ident not in self._threads
            and t.is_alive()
            and not t.name.startswith(IGNORED_THREAD_PREFIXES)
            and not _idle_pool_worker(t)
        ]
        leaks.tasks = [t for t in _pending_tasks() if id(t) not in self._tasks]
        leaks.cancelled_tasks = [d for t, d in list(self._after_call.items()) if t.cancelled()]
        track = _context._track
        if track is not None:
            for ctx, (code, lasti) in list(track.items()):
                if ctx._err is None:
                    filename, line = _context._site(code, lasti)
                    leaks.contexts.append(f"{ctx!r} created at {filename}:{line}")
        return leaks

    def finish(self, timeout: float = 2.0) -> Leaks:
        deadline = time.monotonic() + timeout
        delay = 0.001
        try:
            while True:
                leaks = self._collect(collect_garbage=False)
                if not leaks:
                    return leaks
                leaks = self._collect(collect_garbage=True)
                if not leaks or time.monotonic() >= deadline:
                    return leaks
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
        finally:
            _context._track = None
            self._after_call = {}
            if self._unpatch is not None:
                runners, original = self._unpatch
                runners._cancel_all_tasks = original
                self._unpatch = None
