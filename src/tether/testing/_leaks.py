"""Leak detection for tests: threads, asyncio tasks and live contexts left behind.

goleak-style: a snapshot before the test, a check after it that retries for a while
(work that is finishing is not a leak; work that never finishes is), ignoring tether's
own service threads.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field

from .. import _context

__all__ = ["LeakCheck", "Leaks"]

# tether's own threads come and go with the work (the timer exits when idle, the
# after_func workers after IDLE_SECONDS), and pytest-timeout's watchdog is not ours.
# Group/to_thread workers are renamed tether-worker-idle-N while idle (not a leak); one
# still named tether-worker-N after a test is running a task the test left behind.
IGNORED_THREAD_PREFIXES = (
    "tether-timer",
    "tether-after-func-",
    "tether-worker-idle-",
    "pytest_timeout",
)


@dataclass
class Leaks:
    """What a test left behind."""

    threads: list[threading.Thread] = field(default_factory=list)
    tasks: list[asyncio.Task[object]] = field(default_factory=list)
    contexts: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.threads or self.tasks or self.contexts)

    def report(self) -> str:
        lines = ["tether: the test left work behind:"]
        lines += [f"  thread {t.name!r} (daemon={t.daemon})" for t in self.threads]
        lines += [f"  asyncio task {t!r}" for t in self.tasks]
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


class LeakCheck:
    """Snapshot at ``start()``; ``finish()`` returns what is left after retrying."""

    def __init__(self) -> None:
        self._threads: set[int | None] = set()
        self._tasks: set[int] = set()

    def start(self) -> None:
        self._threads = {t.ident for t in threading.enumerate()}
        self._tasks = {id(t) for t in _pending_tasks()}
        _context._track = weakref.WeakKeyDictionary()

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
        ]
        leaks.tasks = [t for t in _pending_tasks() if id(t) not in self._tasks]
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


def _self_check() -> None:  # pragma: no cover - debugging aid
    lc = LeakCheck()
    lc.start()
    print(lc.finish().report(), file=sys.stderr)
