"""The small error hierarchy of tether.

``ContextError`` is the base of what an ended context reports. ``Canceled`` and
``DeadlineExceeded`` are the only two kinds, as in Go; ``DeadlineExceeded`` is also a
``TimeoutError`` so that code written against the standard library's timeouts catches it.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

__all__ = [
    "BlockingCallWarning",
    "Canceled",
    "ContextError",
    "DeadlineExceeded",
    "LostCancelWarning",
]


class ContextError(Exception):
    """Base class of the errors an ended context reports (``ctx.err()``, ``ctx.check()``).

    Added in 0.1.
    """

    __module__ = "tether"


class Canceled(ContextError):
    """The context was cancelled: its cancel function was called, or an ancestor's was.

    ``str()`` is ``"context canceled"``, as Go's ``context.Canceled``. The reason, if the
    canceller gave one, is ``tether.cause(ctx)``; ``ctx.check()`` chains it as
    ``__cause__``.

    Added in 0.1.
    """

    __module__ = "tether"

    def __str__(self) -> str:
        return super().__str__() if self.args else "context canceled"


class DeadlineExceeded(ContextError, TimeoutError):
    """The context's deadline (or an ancestor's) passed before it was cancelled.

    Also a ``TimeoutError``, so ``except TimeoutError`` catches it. ``str()`` is
    ``"context deadline exceeded"``, as Go's ``context.DeadlineExceeded``.

    Added in 0.1.
    """

    __module__ = "tether"

    def __str__(self) -> str:
        return ContextError.__str__(self) if self.args else "context deadline exceeded"


class LostCancelWarning(ResourceWarning):
    """A derived context's cancel function was garbage-collected without being called.

    The context was still live, so it stays registered with its parent (and in the
    timer heap, if it has a deadline) until the parent ends or the deadline fires: the
    run-time form of Go's ``go vet`` *lostcancel* check. The warning's location is the
    line that created the context. A cancel function freed by the cycle collector (say,
    with a generator suspended inside its block) is judged at the end of that
    collection, once every finalizer of the same garbage has run: if one of them
    cancelled the context, nothing is reported. Unlike other ``ResourceWarning``s it is
    shown by default: ``import tether`` adds a "default" filter for it just ahead of
    Python's own "ignore ``ResourceWarning``" filter, unless warning options were given
    (``-W``, ``PYTHONWARNINGS``) or the filters were already changed; filters set later,
    by code or ``-W ignore::ResourceWarning``, take precedence.

    Added in 0.1.
    """

    __module__ = "tether"


class BlockingCallWarning(RuntimeWarning):
    """A blocking tether call was made on a thread that runs an event loop (asyncio, Trio).

    ``tether.sleep``, ``ctx.done().wait(t)``, ``Limiter.acquire``, ``with Group(...)``,
    ``Group.wait()`` and ``Handle.result()`` block the calling thread; on an event loop's
    thread they freeze every task of that loop for as long as they wait. The message
    names the asynchronous form to use instead (``await tether.asleep``, ``await
    ctx.done()``, ``await limiter.aacquire``, ``TaskGroup``). A call that does not wait
    (a zero timeout, an ended context, a free slot) is not reported.

    A ``RuntimeWarning``, so Python shows it by default, once per call site; make it
    an error with ``warnings.simplefilter("error", tether.BlockingCallWarning)``,
    pytest's ``filterwarnings = ["error::tether.BlockingCallWarning"]``, or
    ``python -W error::RuntimeWarning`` (``-W`` cannot name a class of a module that is
    not imported yet). A warning rather than an error because interactive kernels
    (Jupyter, IPython's autoawait) run every cell on the loop's thread, where a
    blocking call is expected; ``docs/design.md`` ("newcomer") records the choice.

    Added in 0.2.
    """

    __module__ = "tether"


def _show_lost_cancels() -> None:
    """Show ``LostCancelWarning`` by default, as asyncio's "never awaited" is shown.

    Python ignores ``ResourceWarning`` unless asked; a lost cancel is a bug worth a line
    on stderr. The filter goes just before Python's default "ignore ResourceWarning" one:
    only when the user gave no ``-W``/``PYTHONWARNINGS`` option and that default entry
    is still there (otherwise the user chose; tether does not override).
    """
    if sys.warnoptions:
        return
    fs: list[Any] = warnings.filters  # type: ignore[assignment]  # a list at run time
    for i, f in enumerate(fs):
        if f[0] == "ignore" and f[2] is ResourceWarning and f[1] is None and f[3] is None:
            fs.insert(i, ("default", None, LostCancelWarning, None, 0))
            mutated = getattr(warnings, "_filters_mutated", None)
            if mutated is not None:
                mutated()
            return


_show_lost_cancels()
