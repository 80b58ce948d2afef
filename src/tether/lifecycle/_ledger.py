"""The one place where "accepted ⇒ done or reported" is kept.

Every component that accepts work (``WorkerPool``, ``DetachedRunner``) records each
accepted item here, and each item makes exactly one terminal transition, whichever
path gets there first (a worker that finished it, the drain that cancelled or dropped
it, the grace that gave up on it, a thread that could not start)::

    accept() ──▶ open ──settle(outcome)──▶ succeeded                     (done)
                     └─────────────────────▶ failed | timed_out | cancelled
                                              | dropped | abandoned      (reported)

A second ``settle`` of the same item returns ``False`` and changes nothing (an abandoned
item that finishes late is logged by its component, not counted twice). Reporting an
item not done is, in this order: counted (under the lock, with the transition), logged
(one record per item, tagged with the item and the reason), then handed to the
``on_unprocessed(item, reason)`` callback. The callback is the only user code here; it
runs outside the lock, any exception it raises (``BaseException`` included) is logged
and counted (``handover_failed``) and the remaining items are still reported; a fatal
one (``SystemExit``, ``KeyboardInterrupt``) is kept in ``fatal`` for the component to
re-raise once it stopped. A batch handed over under a ``budget`` context stops calling
the callback when the budget ends: the rest were logged, and are counted
``not_handed_over``.

Invariant, at every instant: ``accepted == open + succeeded + failed + timed_out +
cancelled + dropped + abandoned`` and, once the callback returned for every item,
``failed + timed_out + cancelled + dropped + abandoned == handed_over + handover_failed
+ not_handed_over`` (when there is a callback).
"""

from __future__ import annotations

import logging
import reprlib
import threading
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from .._context import Context
from ._common import is_fatal

__all__ = ["NOT_DONE", "OUTCOMES", "Entry", "Ledger", "describe"]

T = TypeVar("T")

OUTCOMES = ("succeeded", "failed", "timed_out", "cancelled", "dropped", "abandoned")
NOT_DONE = OUTCOMES[1:]

_EVENT = {
    "failed": "failed",
    "timed_out": "timeout",
    "cancelled": "cancelled",
    "dropped": "dropped",
    "abandoned": "abandoned",
}

_REPR = reprlib.Repr()
_REPR.maxstring = 60
_REPR.maxother = 60


def describe(item: object) -> str:
    """How an item appears in the logs: its own (shortened) repr, never our numbering."""
    try:
        return _REPR.repr(item)
    except Exception:
        return f"<{type(item).__name__} object>"


class Entry(Generic[T]):
    """One accepted item. ``outcome`` is ``None`` while open, set exactly once."""

    __slots__ = ("item", "label", "outcome", "seq")

    def __init__(self, seq: int, item: T, label: str) -> None:
        self.seq = seq
        self.item = item
        self.label = label
        self.outcome: str | None = None


class Ledger(Generic[T]):
    """Accepted items and their single terminal transition; see the module docstring."""

    def __init__(
        self,
        *,
        what: str,
        event_prefix: str,
        log: logging.Logger,
        on_unprocessed: Callable[[T, str], object] | None,
        noun: str = "item",
    ) -> None:
        self._noun = noun
        self._what = what  # "worker pool 'p'", "detached runner 'd'"
        self._prefix = event_prefix
        self._worker = what.split("'")[1] if "'" in what else what
        self._log = log
        self._on_unprocessed = on_unprocessed
        self._lock = threading.Lock()
        # _lock protects the following.
        self._seq = 0
        self._open = 0
        self._n = dict.fromkeys(
            (*OUTCOMES, "accepted", "handed_over", "handover_failed", "not_handed_over"), 0
        )
        self._fatal: BaseException | None = None

    # -- transitions ---------------------------------------------------------------------

    def accept(self, item: T, label: str | None = None) -> Entry[T]:
        """Record one accepted item. Non-blocking, thread-safe (callers may hold a lock)."""
        with self._lock:
            self._seq += 1
            self._open += 1
            self._n["accepted"] += 1
            return Entry(self._seq, item, describe(item) if label is None else label)

    def settle(
        self,
        entry: Entry[T],
        outcome: str,
        reason: str,
        *,
        error: BaseException | None = None,
        extra: dict[str, Any] | None = None,
    ) -> bool:
        """The terminal transition of ``entry``; ``False`` if it already made one.

        ``succeeded`` is only counted; any other outcome is logged and handed over.
        Call it without holding the component's lock (it may call user code).
        """
        if not self._close([entry], outcome):
            return False
        if outcome != "succeeded":
            self._log_one(entry, outcome, reason, error, extra)
            self._hand_over([entry], reason, None)
        return True

    def settle_many(
        self,
        entries: Iterable[Entry[T]],
        outcome: str,
        reason: str,
        *,
        budget: Context | None = None,
    ) -> int:
        """Settle a batch (``dropped``, ``abandoned``): count all, log all, hand over.

        Every record is written before the callback is called for the first one, so a
        slow or failing callback cannot hide an item. With ``budget``, the callback is
        not called any more once it ended. Returns how many entries this call settled.
        """
        mine = self._close(entries, outcome)
        for e in mine:
            self._log_one(e, outcome, reason, None, None)
        self._hand_over(mine, reason, budget)
        return len(mine)

    def _close(self, entries: Iterable[Entry[T]], outcome: str) -> list[Entry[T]]:
        assert outcome in OUTCOMES, outcome
        mine = []
        with self._lock:
            for e in entries:
                if e.outcome is None:
                    e.outcome = outcome
                    mine.append(e)
            self._open -= len(mine)
            self._n[outcome] += len(mine)
        return mine

    # -- reporting -----------------------------------------------------------------------

    def _log_one(
        self,
        e: Entry[T],
        outcome: str,
        reason: str,
        error: BaseException | None,
        extra: dict[str, Any] | None,
    ) -> None:
        tags: dict[str, Any] = {"worker": self._worker}
        tags.update(extra or {})
        tags.update(event=self._prefix + _EVENT[outcome], item=e.label, reason=reason)
        level = logging.ERROR if outcome in ("failed", "abandoned") else logging.WARNING
        words = outcome.replace("_", " ")
        self._log.log(
            level,
            "%s: %s %s %s%s%s",
            self._what,
            self._noun,
            e.label,
            words,
            f" ({reason})" if reason != outcome else "",
            f": {error!r}" if error is not None else "",
            exc_info=error if outcome == "failed" else None,
            extra=tags,
        )

    def _hand_over(self, entries: list[Entry[T]], reason: str, budget: Context | None) -> None:
        cb = self._on_unprocessed
        if cb is None or not entries:
            return
        for i, e in enumerate(entries):
            if budget is not None and budget.err() is not None:
                left = len(entries) - i
                with self._lock:
                    self._n["not_handed_over"] += left
                self._log.error(
                    "%s: on_unprocessed was not called for %d item(s) (its time ran out); "
                    "they are in the log above",
                    self._what,
                    left,
                    extra={"worker": self._worker, "event": "unprocessed_not_handed_over"},
                )
                return
            try:
                cb(e.item, reason)
            except BaseException as exc:  # user code: log it, report the rest
                with self._lock:
                    self._n["handover_failed"] += 1
                    if is_fatal(exc) and self._fatal is None:
                        self._fatal = exc
                self._log.error(
                    "%s: on_unprocessed raised for %s %s: %r",
                    self._what,
                    self._noun,
                    e.label,
                    exc,
                    exc_info=exc,
                    extra={"worker": self._worker, "event": "on_unprocessed_failed"},
                )
            else:
                with self._lock:
                    self._n["handed_over"] += 1

    # -- fatal errors and counters ---------------------------------------------------------

    def note_fatal(self, exc: BaseException) -> None:
        """Keep the first fatal exception, for the component to re-raise when it stops."""
        with self._lock:
            if self._fatal is None:
                self._fatal = exc

    @property
    def fatal(self) -> BaseException | None:
        with self._lock:
            return self._fatal

    def counts(self) -> dict[str, int]:
        """``accepted``, ``open``, one per outcome, and the hand-over counters."""
        with self._lock:
            return {**self._n, "open": self._open}
