"""sqlite3 queries that stop when their context ends.

::

    from tether.integrations import sqlite3 as tsqlite

    with tsqlite.bind(ctx, conn):
        rows = conn.execute("SELECT ...").fetchall()   # stopped if ctx ends meanwhile

Inside the block, when ``ctx`` ends, the running statement is interrupted
(``conn.interrupt()``, called from ``tether.after_func``) and the block raises the
context's error (``tether.Canceled`` or ``tether.DeadlineExceeded``) chained to
sqlite3's ``OperationalError: interrupted``. A progress handler also checks the context
every ``every`` virtual-machine instructions, so a statement still stops when the
deadline passed and the timer thread has not fired yet, and a statement that *starts*
after the interrupt (SQLite forgets an interrupt once no statement is running) stops
too. sqlite3 runs in the calling thread: there is no server, the interrupt is the
server-side stop.

The stdlib ``sqlite3`` module is all this needs; the ``sqlite3`` extra is empty and
exists so every integration installs the same way (``pip install 'tether[sqlite3]'``).

Added in 0.1.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .. import _clock
from .._context import _BACKGROUND, Context, _owner
from ._bind import Watch, chain, ended, entry_check, error, missing

if TYPE_CHECKING:
    import sqlite3

__all__ = ["bind"]

_SQLITE_INTERRUPT = 9

# The progress handler an enclosing bind installed, by connection (sqlite3 cannot report
# the installed handler, and its connections take no weak references). An entry lives
# exactly as long as a bind block on that connection, so an id is never stale.
_installed: dict[int, tuple[Callable[[], int], int]] = {}


def _sqlite3() -> Any:
    try:
        import sqlite3
    except ImportError as e:  # a Python built without _sqlite3
        raise missing("sqlite3", "sqlite3", e) from e
    return sqlite3


def _check_connection(conn: object) -> None:
    if not isinstance(conn, _sqlite3().Connection):
        raise TypeError(
            f"tether: bind(ctx, conn) needs a sqlite3.Connection, got "
            f"{type(conn).__name__}; pass the connection, e.g. sqlite3.connect(path)"
        )


class bind:
    """``with bind(ctx, conn):`` — statements on ``conn`` inside stop when ``ctx`` ends.

    On entry: raises ``ctx``'s error if ``ctx`` already ended (or its deadline already
    passed), before touching ``conn``; otherwise registers ``conn.interrupt()`` with
    ``tether.after_func`` and installs a progress handler that, every ``every`` SQLite VM
    instructions, interrupts the statement once ``ctx`` ended or its deadline passed,
    then calls the handler it replaced. Yields ``conn`` itself. A context that can never
    end (``background()``, ``todo()``, ``without_cancel(...)``) installs nothing.

    On exit: the watch is stopped (waiting for an interrupt already in flight, so none
    reaches a later statement) and the previous progress handler is restored: the one an
    enclosing ``bind`` installed, else ``previous`` (``(handler, n)``, for a handler you
    installed with ``conn.set_progress_handler``, which sqlite3 cannot report), else
    none. If the block raised sqlite3's ``OperationalError`` "interrupted" because
    ``ctx`` ended, it raises a fresh ``Canceled``/``DeadlineExceeded`` ``from`` it, after
    rolling back a transaction that began inside the block; every other exception
    passes through untouched, and the connection stays usable.

    Entering does not block (no I/O); exiting blocks only while an interrupt already
    started finishes (microseconds). Each call makes a new binding; it is not reentrant
    itself, but blocks nest on one connection. Use the block and ``conn`` on one thread
    (as sqlite3 requires); ``ctx`` may be cancelled from any thread. Raises
    ``TypeError`` for a ``None``/non-Context ``ctx`` or a ``conn`` that is not a
    ``sqlite3.Connection``, ``ValueError`` for ``every < 1``,
    ``ImportError`` on a Python built without ``sqlite3``.
    """

    __slots__ = (
        "_c",
        "_conn",
        "_every",
        "_key",
        "_nested",
        "_outer",
        "_previous",
        "_tripped",
        "_tx",
        "_watch",
    )

    def __init__(
        self,
        ctx: Context,
        conn: sqlite3.Connection,
        *,
        every: int = 1000,
        previous: tuple[Callable[[], int], int] | None = None,
    ) -> None:
        if type(every) is not int or every < 1:
            raise ValueError(
                f"tether: every must be a positive number of VM instructions, got {every!r}"
            )
        _check_connection(conn)
        _owner(ctx)
        self._c = ctx
        self._conn = conn
        self._every = every
        self._previous = previous

    def __enter__(self) -> sqlite3.Connection:
        c = self._c = entry_check(self._c)
        conn = self._conn
        if c is _BACKGROUND:  # background(), todo(), without_cancel(): can never end
            self._watch = None
            return conn
        key = self._key = id(conn)
        enclosing = _installed.get(key)
        self._nested = enclosing is not None
        self._outer = enclosing if enclosing is not None else self._previous
        self._tripped = False
        self._tx = conn.in_transaction
        outer = self._outer[0] if self._outer is not None else None
        deadline = c._deadline

        def progress() -> int:
            if c._err is not None or (deadline is not None and _clock.now() >= deadline):
                self._tripped = True
                return 1
            return outer() if outer is not None else 0

        conn.set_progress_handler(progress, self._every)  # raises on a closed connection
        _installed[key] = (progress, self._every)
        self._watch = Watch(c, conn.interrupt)
        return conn

    def __exit__(
        self,
        et: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn = self._conn
        if self._watch is None:
            return None
        self._watch.stop(5.0)
        outer = self._outer
        if self._nested:
            _installed[self._key] = outer  # type: ignore[assignment]
        else:
            _installed.pop(self._key, None)
        sqlite3 = _sqlite3()
        try:
            if outer is None:
                conn.set_progress_handler(None, 0)
            else:
                conn.set_progress_handler(outer[0], outer[1])
        except sqlite3.ProgrammingError:  # closed in the block: nothing left to restore
            if exc is None:
                raise
            return None
        if exc is None:
            return None
        if (
            isinstance(exc, sqlite3.OperationalError)
            and _interrupted(exc)
            and (self._tripped or ended(self._c))
        ):
            if conn.in_transaction and not self._tx:
                conn.rollback()
            raise chain(error(self._c), exc)
        return None


def _interrupted(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return bool(code == _SQLITE_INTERRUPT)
    return str(exc) == "interrupted"
