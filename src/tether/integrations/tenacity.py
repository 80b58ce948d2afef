"""tenacity hooks that retry only as long as a context lives, and sleep with it.

tether does not ship a retry library: tenacity is a good one. What it lacks is the
context: a retry loop that outlives the request's deadline, or sleeps through its
cancellation, is the bug this module removes. Four hooks and two conveniences::

    from tenacity import stop_after_attempt, wait_exponential
    from tether.integrations.tenacity import retrying

    for attempt in retrying(ctx, wait=wait_exponential(0.1), stop=stop_after_attempt(5)):
        with attempt:
            charge(ctx, order)

``retrying(ctx, **kw)`` is ``tenacity.Retrying(**kw)`` with:

- ``stop = stop_when_ended(ctx) | stop``: stop once ``ctx`` ended, or when its remaining
  budget cannot cover the next sleep (plus ``margin``): there is no point sleeping only
  to be cut off. tenacity then raises ``RetryError`` (or, with ``reraise=True``, the last
  attempt's exception), as for any other stop;
- ``retry = retry_unless_ended(ctx) & retry``: never retry once ``ctx`` ended, so the
  attempt's own exception (typically ``ctx.check()``'s ``Canceled`` or
  ``DeadlineExceeded``) is raised as it is, not wrapped in ``RetryError``;
- ``sleep = sleep_with(ctx)``: sleeps with ``tether.sleep(ctx, s)``, so a cancel or the
  deadline interrupts the sleep at once, raising ``ctx``'s error.

``async_retrying`` is the same over ``tenacity.AsyncRetrying`` with ``asleep_with``.
tenacity is imported when one of these functions is called; without it they raise
``ImportError`` naming the extra: ``pip install 'tether[tenacity]'``.

Added in 0.1.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .._context import Context, _owner, _seconds
from .._sleep import asleep, sleep

if TYPE_CHECKING:
    import tenacity

__all__ = [
    "asleep_with",
    "async_retrying",
    "retry_unless_ended",
    "retrying",
    "sleep_with",
    "stop_when_ended",
]


def _tenacity() -> Any:
    try:
        import tenacity
    except ImportError as e:
        raise ImportError(
            "tether: tether.integrations.tenacity needs tenacity; "
            "install it with: pip install 'tether[tenacity]'"
        ) from e
    return tenacity


def _failed(retry_state: Any) -> bool:
    """tenacity's default retry condition: the attempt raised an ``Exception``."""
    o = retry_state.outcome
    return o is not None and o.failed and isinstance(o.exception(), Exception)


class _StopWhenEnded:
    """A tenacity stop condition: see ``stop_when_ended``."""

    __slots__ = ("ctx", "margin")

    def __init__(self, ctx: Context, margin: float) -> None:
        self.ctx = ctx
        self.margin = margin

    def __call__(self, retry_state: Any) -> bool:
        ctx = self.ctx
        if ctx.err() is not None:
            return True
        rem = ctx.remaining()
        if rem is None:
            return False
        upcoming = getattr(retry_state, "upcoming_sleep", 0.0) or 0.0
        return rem <= upcoming + self.margin

    def __or__(self, other: Any) -> Any:
        return _tenacity().stop_any(self, other)

    def __ror__(self, other: Any) -> Any:
        return _tenacity().stop_any(other, self)

    def __and__(self, other: Any) -> Any:
        return _tenacity().stop_all(self, other)

    def __rand__(self, other: Any) -> Any:
        return _tenacity().stop_all(other, self)

    def __repr__(self) -> str:
        return f"<tether stop_when_ended margin={self.margin} {self.ctx!r}>"


class _RetryUnlessEnded:
    """A tenacity retry condition: see ``retry_unless_ended``."""

    __slots__ = ("ctx", "then")

    def __init__(self, ctx: Context, then: Callable[[Any], Any] | None) -> None:
        self.ctx = ctx
        self.then = then

    def __call__(self, retry_state: Any) -> Any:
        if self.ctx.err() is not None:
            return False
        then = self.then
        return _failed(retry_state) if then is None else then(retry_state)

    def __and__(self, other: Any) -> Any:
        return _tenacity().retry_all(self, other)

    def __rand__(self, other: Any) -> Any:
        return _tenacity().retry_all(other, self)

    def __or__(self, other: Any) -> Any:
        return _tenacity().retry_any(self, other)

    def __ror__(self, other: Any) -> Any:
        return _tenacity().retry_any(other, self)

    def __repr__(self) -> str:
        return f"<tether retry_unless_ended {self.ctx!r}>"


class _ARetryUnlessEnded(_RetryUnlessEnded):
    """The same, for ``AsyncRetrying``: awaits a user predicate that is async."""

    __slots__ = ()

    async def __call__(self, retry_state: Any) -> Any:
        if self.ctx.err() is not None:
            return False
        then = self.then
        if then is None:
            return _failed(retry_state)
        r = then(retry_state)
        if inspect.isawaitable(r):
            r = await r
        return r


def _margin(margin: object) -> float:
    m = _seconds(margin, "margin")
    if m < 0:
        raise ValueError(f"tether: margin must be >= 0 seconds, got {margin!r}")
    return m


def stop_when_ended(ctx: Context, *, margin: float = 0.0) -> Any:
    """A tenacity stop condition: stop once ``ctx`` ended or its budget is too short.

    It says stop when ``ctx`` has ended, or when ``ctx`` has a deadline and the time
    remaining is not more than the next sleep plus ``margin`` seconds (keep ``margin``
    for the attempt itself). Combine it with others by ``|``/``&`` as any tenacity stop.
    With tenacity older than 8.3 (which decides to stop before computing the sleep),
    only ``margin`` is compared.

    Making it never blocks; calling it (tenacity does) never blocks, is idempotent
    (a pure read of the context and the retry state) and thread-safe. If ``ctx``
    already ended, it says stop at the first check. Raises ``TypeError`` for a
    ``None``/non-Context ``ctx`` or a non-number ``margin``, ``ValueError`` for a negative or
    non-finite one; composing it raises ``ImportError`` without tenacity.
    """
    _owner(ctx)
    return _StopWhenEnded(ctx, _margin(margin))


def retry_unless_ended(ctx: Context, retry: Callable[[Any], Any] | None = None) -> Any:
    """A tenacity retry condition: retry as ``retry`` says, but never once ``ctx`` ended.

    Once ``ctx`` ended, the failed attempt is not retried, so tenacity raises that
    attempt's own exception (the ``Canceled``/``DeadlineExceeded`` of ``ctx.check()``,
    typically) rather than a ``RetryError``. ``retry=None`` means retry on any exception
    (tenacity's default). ``retry_unless_ended(ctx, r)`` is ``retry_unless_ended(ctx) &
    r``, evaluated in that order.

    Never blocks; calling it is idempotent (a read) and thread-safe. If ``ctx`` already
    ended, the first failure is final. Raises ``TypeError`` for a ``None``/non-Context
    ``ctx`` or a non-callable ``retry``.
    """
    _owner(ctx)
    if retry is not None and not callable(retry):
        raise TypeError(f"tether: retry must be a tenacity retry condition, got {retry!r}")
    return _RetryUnlessEnded(ctx, retry)


def sleep_with(ctx: Context) -> Callable[[float], None]:
    """A tenacity ``sleep=`` function that sleeps with ``ctx``: ``tether.sleep(ctx, s)``.

    The sleep it makes blocks the thread for ``s`` seconds (tether's clock, so a
    ``FakeClock`` drives it in tests) and raises ``ctx``'s error (fresh, as
    ``ctx.check()``) as soon as ``ctx`` ends, or at once if it already ended. Making it
    never blocks and is idempotent; the function is thread-safe. Raises ``TypeError``
    for a ``None``/non-Context ``ctx``.
    """
    _owner(ctx)

    def _sleep(seconds: float) -> None:
        sleep(ctx, seconds)

    return _sleep


def asleep_with(ctx: Context) -> Callable[[float], Awaitable[None]]:
    """A tenacity ``AsyncRetrying(sleep=...)`` function: ``await tether.asleep(ctx, s)``.

    The sleep it makes blocks (suspends) the task for ``s`` seconds and raises
    ``ctx``'s error as soon as ``ctx`` ends, or at once if it already ended. Making it
    never blocks and is idempotent; usable from any event loop and thread. Raises
    ``TypeError`` for a ``None``/non-Context ``ctx``.
    """
    _owner(ctx)

    async def _asleep(seconds: float) -> None:
        await asleep(ctx, seconds)

    return _asleep


def _combine(
    ctx: Context, kwargs: dict[str, Any], margin: float, retry_cls: type[_RetryUnlessEnded]
) -> dict[str, Any]:
    if "sleep" in kwargs:
        raise TypeError(
            "tether: retrying() sleeps with the context; do not pass sleep= "
            "(use tenacity.Retrying(sleep=tether.integrations.tenacity.sleep_with(ctx)) "
            "to combine it yourself)"
        )
    _owner(ctx)
    stop = _StopWhenEnded(ctx, _margin(margin))
    user_stop = kwargs.pop("stop", None)
    kwargs["stop"] = stop if user_stop is None else stop | user_stop
    kwargs["retry"] = retry_cls(ctx, kwargs.pop("retry", None))
    return kwargs


def retrying(ctx: Context, *, margin: float = 0.0, **kwargs: Any) -> tenacity.Retrying:
    """``tenacity.Retrying(**kwargs)`` that stops, retries and sleeps with ``ctx``.

    Adds ``stop_when_ended(ctx, margin=margin)`` to ``stop`` (with ``|``), puts
    ``retry_unless_ended(ctx)`` before ``retry``, and sleeps with ``sleep_with(ctx)``;
    every other keyword is tenacity's. Use it as tenacity's object: ``for attempt in
    retrying(ctx, ...)``, ``retrying(ctx, ...)(fn, ...)``, or as a decorator.

    Making it never blocks; each call makes a new object (use one per operation, since
    it holds ``ctx``); thread-safe as tenacity is. If ``ctx`` already ended, the first
    attempt still runs (give it ``ctx``: it should check it) and is not retried. Raises
    ``ImportError`` without tenacity, ``TypeError`` if ``sleep=`` is given or for a
    ``None``/non-Context ``ctx``, ``ValueError`` for a negative ``margin``.
    """
    t = _tenacity()
    kw = _combine(ctx, dict(kwargs), margin, _RetryUnlessEnded)
    kw["sleep"] = sleep_with(ctx)
    return t.Retrying(**kw)  # type: ignore[no-any-return]


def async_retrying(ctx: Context, *, margin: float = 0.0, **kwargs: Any) -> tenacity.AsyncRetrying:
    """``tenacity.AsyncRetrying(**kwargs)`` that stops, retries and sleeps with ``ctx``.

    As ``retrying``, with ``asleep_with(ctx)`` as the sleep (it suspends the task, and
    raises ``ctx``'s error as soon as ``ctx`` ends) and a retry condition that awaits an
    async ``retry=`` predicate. Use it as tenacity's: ``async for attempt in
    async_retrying(ctx, ...)``. Making it never blocks; a new object per call (not
    idempotent state: one per operation); usable from any loop and thread. If ``ctx``
    already ended, the first attempt still runs and is not retried. Raises as
    ``retrying``.
    """
    t = _tenacity()
    kw = _combine(ctx, dict(kwargs), margin, _ARetryUnlessEnded)
    kw["sleep"] = asleep_with(ctx)
    return t.AsyncRetrying(**kw)  # type: ignore[no-any-return]
