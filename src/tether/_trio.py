"""``await ctx.done()`` under Trio (and AnyIO on Trio). Imported only when Trio runs.

The waiter is registered on the context like any other; when the context ends (on any
thread) it reschedules the sleeping task through the run's ``TrioToken``. A Trio
cancellation of the waiting task unregisters it — unless the context ended at the same
moment, in which case the reschedule wins and the cancellation is delivered at the
task's next checkpoint, as Trio's ``Abort.FAILED`` contract says.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from . import _context

if TYPE_CHECKING:
    from ._context import Context

__all__ = ["in_trio", "wait_done"]


def in_trio() -> bool:
    import sys

    trio = sys.modules.get("trio")
    if trio is None:
        return False
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True


class _TrioWaiter:
    __slots__ = ("_lock", "_state", "_task", "_token")

    def __init__(self, task: Any, token: Any) -> None:
        self._task = task
        self._token = token
        self._lock = threading.Lock()
        self._state = 0  # 0 waiting, 1 fired, 2 aborted

    def __call__(self) -> None:  # any thread: the context ended
        import trio

        with self._lock:
            if self._state:
                return
            self._state = 1
        try:
            self._token.run_sync_soon(trio.lowlevel.reschedule, self._task)
        except trio.RunFinishedError:  # pragma: no cover - the run is over; nobody waits
            pass

    def abort(self, raise_cancel: Any) -> Any:  # trio thread: the task is cancelled
        import trio

        with self._lock:
            if self._state == 1:
                return trio.lowlevel.Abort.FAILED  # the reschedule is already on its way
            self._state = 2
        return trio.lowlevel.Abort.SUCCEEDED


async def wait_done(c: Context) -> None:
    import trio

    if c._err is not None:
        await trio.lowlevel.checkpoint()
        return
    w = _TrioWaiter(trio.lowlevel.current_task(), trio.lowlevel.current_trio_token())
    if c is _context._BACKGROUND:  # never ends: sleep until cancelled
        await trio.sleep_forever()
        return
    if not _context._add_waiter(c, w):
        await trio.lowlevel.checkpoint()
        return
    try:
        await trio.lowlevel.wait_task_rescheduled(w.abort)
    finally:
        _context._remove_waiter(c, w)
