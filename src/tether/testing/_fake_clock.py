"""A clock that moves only when the test says so."""

from __future__ import annotations

import threading
import time
from types import TracebackType

from .. import _clock, _context

__all__ = ["FakeClock"]


class FakeClock:
    """Replace tether's clock for a block; time moves only by ``advance()``.

    ``with FakeClock() as clock:`` installs it process-wide (every thread sees it):
    ``ctx.remaining()``, new deadlines and ``tether.sleep`` then run on fake time, and
    deadlines fire only inside ``clock.advance(seconds)``, deterministically, in
    deadline order, on the calling thread, before it returns (waking waiting threads
    and tasks as a real expiry would; ``after_func`` callbacks still start on other
    threads). No timer thread runs for deadlines armed inside the block.

    The fake time starts at the real ``time.monotonic()`` value, so contexts made
    before the block keep sensible deadlines; but they are not fired by ``advance``,
    and contexts made inside the block with a deadline that is still live at exit will
    not fire afterwards: end them inside the block. ``Done.wait(timeout)`` still counts
    its timeout in real seconds. One FakeClock at a time; entering a second raises
    ``RuntimeError``. ``now()``/``advance()`` are thread-safe.

    Added in 0.1.
    """

    __module__ = "tether.testing"

    _installed: FakeClock | None = None

    def __init__(self, start: float | None = None) -> None:
        self._t = time.monotonic() if start is None else _context._seconds(start, "start")
        self._timers = _clock.TimerQueue(
            _context._enter, _context._leave, _context._defer, _context._expire, threaded=False
        )
        self._advance_lock = threading.Lock()
        self._saved: tuple[object, object] | None = None

    def now(self) -> float:
        """The fake time, in seconds. Non-blocking."""
        return self._t

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` (>= 0) and fire every deadline now due.

        Blocks only while it ends the due contexts (and their subtrees). Thread-safe:
        concurrent calls are serialised. Raises ``ValueError`` for negative or
        non-finite ``seconds``, ``TypeError`` for non-numbers, ``RuntimeError`` if the
        clock is not installed.
        """
        s = _context._seconds(seconds, "duration")
        if s < 0:
            raise ValueError(f"tether: time only moves forward; got advance({seconds!r})")
        if FakeClock._installed is not self:
            raise RuntimeError(
                "tether: advance() needs the clock installed: `with FakeClock() as clock:`"
            )
        with self._advance_lock:
            self._t += s
            while True:
                with _context._section:
                    due = self._timers.pop_due(self._t)
                if not due:
                    return
                _context._expire(due)

    def timers(self) -> int:
        """How many deadlines are armed and not yet fired or cancelled."""
        with _context._section:
            return self._timers.live()

    def __enter__(self) -> FakeClock:
        with _context._section:
            if FakeClock._installed is not None:
                raise RuntimeError("tether: a FakeClock is already installed; use one at a time")
            FakeClock._installed = self
            self._saved = (_clock.now, _clock.timers)
            _clock.now = self.now
            _clock.timers = self._timers
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with _context._section:
            assert self._saved is not None
            _clock.now, _clock.timers = self._saved  # type: ignore[assignment]
            FakeClock._installed = None

    def __repr__(self) -> str:
        return f"<tether.testing.FakeClock t={self._t:.6f}>"
