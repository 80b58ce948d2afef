"""The one way tether starts a thread.

Every thread tether starts (the timer, the ``after_func`` runner, the worker pool and
its monitor, the lifecycle components) goes through ``new``/``start`` here, so that a
failure to start one (``RuntimeError: can't start new thread`` when the process is out
of threads or memory, or while the interpreter shuts down) is handled the same way
everywhere: the caller learns of it before anything records the thread as running, and
rolls back what it had reserved. Fault-injection tests make ``threading.Thread.start``
fail once at each caller.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

__all__ = ["new", "start"]


def new(target: Callable[..., object], *args: Any, name: str) -> threading.Thread:
    """A daemon thread that will run ``target(*args)``, not started yet."""
    return threading.Thread(target=target, args=args, name=name, daemon=True)


def start(target: Callable[..., object], *args: Any, name: str) -> threading.Thread:
    """Start a daemon thread running ``target(*args)`` and return it.

    Blocks only while the interpreter starts the thread. Raises ``RuntimeError`` whose
    message starts ``tether:`` and names the thread, chained to the interpreter's error,
    if the thread cannot be started; nothing is left running then.
    """
    t = new(target, *args, name=name)
    try:
        t.start()
    except RuntimeError as e:
        raise RuntimeError(
            f"tether: could not start thread {name!r} ({e}); the process is out of "
            "threads or memory, or the interpreter is shutting down"
        ) from e
    return t
