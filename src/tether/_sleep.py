"""``sleep`` and ``asleep``: a pause that a context can cut short.

Each is a one-liner over the core: wait for a child ``with_timeout(ctx, seconds)`` to
end, then tell its own deadline (return) from the parent's end (raise). The child's
deadline is armed on tether's clock, so both run on fake time under ``FakeClock``, and
no thread or timer is added: the one timer thread fires the child.
"""

from __future__ import annotations

from datetime import timedelta

from ._context import (
    Context,
    _block,
    _fresh_error,
    _on_loop_thread,
    _owner,
    _seconds,
    _warn_blocking,
    with_timeout,
)

__all__ = ["asleep", "sleep"]

_INF = float("inf")


def sleep(ctx: Context, seconds: float | timedelta) -> None:
    """Block the calling thread for ``seconds``, or raise as soon as ``ctx`` ends.

    Returns ``None`` once ``seconds`` have passed on tether's clock (a ``FakeClock``
    in tests). If ``ctx`` ends first — cancelled, or its deadline passes — it raises at
    once a fresh error of ``ctx.err()``'s type, as ``ctx.check()`` (so a sleep longer
    than the remaining budget raises ``DeadlineExceeded`` when the budget runs out, not
    before). If ``ctx`` already ended it raises at once; ``seconds <= 0`` returns at once
    for a live ``ctx``. Go's ``select { case <-ctx.Done(): case <-time.After(d): }``.

    Blocks; each call sleeps anew (nothing to make idempotent); thread-safe. Do not
    call it on an event loop's thread: ``await tether.asleep(ctx, seconds)`` (there it
    warns, ``tether.BlockingCallWarning``, unless it returns at once). Expands
    to ``with tether.with_timeout(ctx, seconds) as c: c.done().wait()``, then
    ``ctx.check()``. Raises ``Canceled``/``DeadlineExceeded`` as said, ``TypeError``
    for a ``None``/non-Context ``ctx`` or a non-number ``seconds``, ``ValueError`` for
    NaN or ``-inf``, ``KeyboardInterrupt`` if interrupted. ``math.inf`` means "until
    ``ctx`` ends" (as ``ctx.done().wait(math.inf)``): it never returns, only raises.

    Added in 0.1.
    """
    if type(seconds) is float and seconds == _INF:  # until ctx ends, as done().wait(inf)
        c = _owner(ctx)
        if c._err is None and _on_loop_thread():
            _warn_blocking("tether.sleep(ctx, seconds)", "await tether.asleep(ctx, seconds)")
        _block(c, None)
        raise _fresh_error(c)
    s = _seconds(seconds)
    c = _owner(ctx)
    if c._err is None and s > 0:
        if _on_loop_thread():
            _warn_blocking("tether.sleep(ctx, seconds)", "await tether.asleep(ctx, seconds)")
        child, cancel = with_timeout(ctx, s)
        try:
            _block(child._c or child, None)
        finally:
            cancel()
    if c._err is not None:
        raise _fresh_error(c)


async def asleep(ctx: Context, seconds: float | timedelta) -> None:
    """Suspend the calling task for ``seconds``, or raise as soon as ``ctx`` ends.

    The asyncio form of ``sleep``, same semantics: returns after ``seconds`` on
    tether's clock (fake under ``FakeClock``); raises a fresh ``ctx.err()``-type error
    the moment ``ctx`` ends (from any thread); raises at once if ``ctx`` already ended.
    ``seconds <= 0`` yields to the loop once (as ``asyncio.sleep(0)``) and returns.

    Blocks (suspends) only the calling task, on any event loop in any thread; each call
    sleeps anew (nothing to make idempotent). If the task is cancelled,
    ``CancelledError`` propagates. Raises ``Canceled``/``DeadlineExceeded``,
    ``CancelledError``, ``TypeError`` for a ``None``/non-Context ``ctx`` or a
    non-number ``seconds``, ``ValueError`` for NaN or ``-inf``. ``math.inf`` means
    "until ``ctx`` ends": it never returns, only raises.

    Added in 0.1.
    """
    if type(seconds) is float and seconds == _INF:  # until ctx ends
        c = _owner(ctx)
        await c.done()
        raise _fresh_error(c)
    s = _seconds(seconds)
    c = _owner(ctx)
    if c._err is None:
        if s > 0:
            child, cancel = with_timeout(ctx, s)
            try:
                await child.done()
            finally:
                cancel()
        else:
            from asyncio import sleep as _yield

            await _yield(0)
    if c._err is not None:
        raise _fresh_error(c)
