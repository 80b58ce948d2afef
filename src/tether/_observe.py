"""The core's one hook point: observers of contexts being created and ending.

Metrics (``tether.integrations.prometheus``) and the live view (``tether.debug``)
register an observer here. With none registered, the core pays one global check on
derive and one per ended owner (``bench/`` measures it); with some, each is told:

- ``on_create(ctx, parent, kind)`` on the deriving thread, right after an owning context
  was derived (``with_cancel``, ``with_timeout``/``with_deadline`` — both report
  ``"with_deadline"`` —, ``to_thread``'s child, ``signal_context``...). ``with_value``
  and ``without_cancel`` make no owner and are not reported.
- ``on_end(ctx, reason)`` once per ended owner, outside the core's lock, on the thread
  that ended it (the canceller, the timer thread, ``FakeClock.advance``). ``reason`` is
  ``"canceled"``, ``"deadline"`` or ``"parent"`` (an ancestor's end ended it).

An observer that raises is logged on the ``tether`` logger and ignored; it must not
block. Contexts created while no observer was registered are never reported as created
but are reported when they end if an observer is registered by then.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Protocol

from . import _context

if TYPE_CHECKING:
    from ._context import Context

__all__ = ["Observer", "add_observer", "creation_site", "observers", "remove_observer"]


class Observer(Protocol):
    """What ``add_observer`` takes."""

    def on_create(self, ctx: Context, parent: Context, kind: str) -> None: ...

    def on_end(self, ctx: Context, reason: str) -> None: ...


class _FanOut:
    """The object the core calls: forwards to every registered observer, isolated."""

    __slots__ = ("observers",)

    def __init__(self, observers: tuple[Observer, ...]) -> None:
        self.observers = observers

    def created(self, ctx: Context, parent: Context, kind: str) -> None:
        for o in self.observers:
            try:
                o.on_create(ctx, parent, kind)
            except Exception:
                _context._log_exception("tether: an observer's on_create raised")

    def ended(self, items: list[tuple[Context, str]]) -> None:
        obs = self.observers
        for ctx, reason in items:
            for o in obs:
                try:
                    o.on_end(ctx, reason)
                except Exception:
                    _context._log_exception("tether: an observer's on_end raised")


_lock = threading.Lock()
_observers: tuple[Observer, ...] = ()


def add_observer(obs: Observer) -> None:
    """Register ``obs``; registering the same object again does nothing.

    Non-blocking (a short lock); idempotent; thread-safe. Contexts that already exist
    are not replayed. Raises ``TypeError`` if ``obs`` lacks ``on_create``/``on_end``.
    """
    if not (callable(getattr(obs, "on_create", None)) and callable(getattr(obs, "on_end", None))):
        raise TypeError(
            f"tether: an observer needs on_create() and on_end() methods, got {type(obs).__name__}"
        )
    global _observers
    with _lock:
        if any(o is obs for o in _observers):
            return
        _observers = (*_observers, obs)
        _context._observer = _FanOut(_observers)


def remove_observer(obs: Observer) -> None:
    """Unregister ``obs``; unregistering one that is not registered does nothing.

    Non-blocking (a short lock); idempotent; thread-safe. A notification already under
    way on another thread may still reach it. Raises nothing.
    """
    global _observers
    with _lock:
        kept = tuple(o for o in _observers if o is not obs)
        if len(kept) == len(_observers):
            return
        _observers = kept
        _context._observer = _FanOut(kept) if kept else None


def observers() -> tuple[Observer, ...]:
    """The registered observers, in registration order. Non-blocking; thread-safe."""
    return _observers


def creation_site(ctx: Context) -> tuple[str, int] | None:
    """``(filename, line)`` of the call that derived owner ``ctx``, or ``None``.

    Known for owners derived while an observer was registered (the core records the
    site then, at no cost otherwise). Non-blocking; thread-safe. Raises nothing.
    """
    c = ctx._c or ctx
    label: Any = getattr(c, "_label", None)
    if c._kind == "with_value" or type(label) is not tuple:
        return None
    code, lasti = label
    return _context._site(code, lasti)
