"""tether: Go's ``context.Context`` for Python.

One tree of contexts carries cancellation, deadlines and request-scoped values through
threads, asyncio tasks and service boundaries.

Rules of use
------------
1. Pass ``ctx`` explicitly as the first parameter, named ``ctx``.
2. Do not store a context on a long-lived object.
3. Values are for request-scoped data (request id, trace, authenticated principal),
   never for optional parameters or dependencies.
4. Never pass ``None``: use ``tether.background()`` or ``tether.todo()``.
5. Always cancel what you derive: by ``with``/``async with``, or by calling ``cancel``
   on every path. A derived context that is never cancelled lives until its parent ends.

Example::

    import tether

    def handler(ctx: tether.Context) -> None:
        with tether.with_timeout(ctx, 2.5) as ctx:
            fetch(ctx)          # fetch watches ctx: ctx.check(), ctx.done().wait(...)

``import tether`` imports only the standard library.
"""

import types as _types

from ._context import (
    CancelFunc,
    Context,
    Done,
    Key,
    Scope,
    after_func,
    background,
    cause,
    current,
    todo,
    with_cancel,
    with_deadline,
    with_timeout,
    with_value,
    without_cancel,
)
from ._errors import (
    BlockingCallWarning,
    Canceled,
    ContextError,
    DeadlineExceeded,
    LostCancelWarning,
)
from ._group import Group, Handle
from ._keys import REQUEST_ID
from ._limiter import Limiter
from ._sleep import asleep, sleep
from ._taskgroup import TaskGroup, TaskHandle
from ._thread import to_thread
from .lifecycle._signals import signal_context

__version__ = "0.1.0"

__all__ = [
    "BlockingCallWarning",
    "CancelFunc",
    "Canceled",
    "Context",
    "ContextError",
    "DeadlineExceeded",
    "Done",
    "Group",
    "Handle",
    "Key",
    "Limiter",
    "LostCancelWarning",
    "REQUEST_ID",
    "Scope",
    "TaskGroup",
    "TaskHandle",
    "after_func",
    "asleep",
    "background",
    "cause",
    "current",
    "signal_context",
    "sleep",
    "to_thread",
    "todo",
    "with_cancel",
    "with_deadline",
    "with_timeout",
    "with_value",
    "without_cancel",
]

# Tracebacks, reprs and docs show the public path (the classes set it themselves).
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type | _types.FunctionType) and _obj.__module__.startswith("tether._"):
        _obj.__module__ = __name__
del _name, _obj, _types
