"""An elastic pool of daemon threads that runs ``after_func`` callbacks off the canceller.

Go starts a goroutine per ``AfterFunc`` call. A thread per call is too dear in Python,
and a fixed pool would let one blocking callback delay every other one. So: reuse an
idle worker when there is one, start a new worker when there is none, and let a worker
that stayed idle for ``IDLE_SECONDS`` exit. The pool is empty when nothing runs.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable

from . import _threads

__all__ = ["IDLE_SECONDS", "submit"]

IDLE_SECONDS = 2.0


class _Runner:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        # _lock protects the following fields.
        self._idle = 0  # workers blocked in _jobs.get() that no job has been promised to
        self._started = 0  # workers ever started, for thread names
        self._jobs: queue.SimpleQueue[Callable[[], object]] = queue.SimpleQueue()

    def submit(self, fn: Callable[[], object]) -> bool:
        """Run ``fn()`` on a runner thread soon. Never blocks for long; any thread.

        The job is queued first. Returns False if no worker was idle and a new one could
        not be started: the job then waits in the queue for the next worker (started by a
        later ``submit``), and the failure is logged.
        """
        with self._lock:
            self._jobs.put(fn)
            if self._idle:
                self._idle -= 1
                return True
            self._started += 1
            n = self._started
        try:
            _threads.start(self._work, name=f"tether-after-func-{n}")
        except RuntimeError:
            import logging  # only on this path: `import tether` stays light

            logging.getLogger("tether").exception(
                "tether: an after_func callback waits for a runner thread"
            )
            return False
        return True

    def _work(self) -> None:
        get = self._jobs.get
        while True:
            try:
                fn = get(timeout=IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    # A job promised to an idle worker may have arrived just now.
                    if not self._jobs.empty():
                        continue
                    self._idle -= 1
                    return
            try:
                fn()
            except BaseException:
                import logging  # only on this path: `import tether` stays light

                logging.getLogger("tether").exception("tether: an after_func callback raised")
            del fn
            with self._lock:
                self._idle += 1

    def _after_fork_in_child(self) -> None:
        # The workers did not survive the fork; queued jobs belong to the parent.
        self.__init__()  # type: ignore[misc]


_runner = _Runner()
submit = _runner.submit

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_runner._after_fork_in_child)
