"""What a group's tasks raised, and what its ``wait()`` raises: errgroup's policy, once.

Shared by ``Group`` (threads) and ``TaskGroup`` (asyncio); ``_group.py``'s docstring and
``docs/design.md`` section 2.1 give the rules and the reasons. An ``Outcome`` does no
locking: ``Group`` calls it under its lock, ``TaskGroup`` from its loop only.
"""

from __future__ import annotations

__all__ = ["Outcome"]


class Outcome:
    __slots__ = ("collect", "errors", "fatal", "first")

    def __init__(self, cancel_on_error: bool) -> None:
        self.collect = not cancel_on_error  # collect-all mode
        self.first: BaseException | None = None  # the first error (an Exception)
        self.errors: list[Exception] = []  # every error, in collect-all mode
        self.fatal: BaseException | None = None  # the first non-Exception BaseException

    def record(self, e: BaseException) -> BaseException | None:
        """Record a task's (or the body's) exception; return the cause to cancel with.

        A fatal ``BaseException`` cancels in both modes; an error cancels only the first
        time, and only when not collecting.
        """
        if not isinstance(e, Exception):
            if self.fatal is None:
                self.fatal = e
                return e
            return None
        if self.collect:
            self.errors.append(e)
            if self.first is None:
                self.first = e
            return None
        if self.first is None:
            self.first = e
            return e
        return None

    def result(self) -> BaseException | None:
        """What ``wait()`` raises: the fatal one, else the first error or all of them."""
        if self.fatal is not None:
            return self.fatal
        if not self.collect:
            return self.first
        n = len(self.errors)
        if not n:
            return None
        return ExceptionGroup(
            f"{n} task{'s' if n > 1 else ''} of the group failed", list(self.errors)
        )

    def describe(self) -> str:
        """The part of a group's ``repr`` that tells what went wrong, if anything."""
        if self.fatal is not None:
            return f" fatal={type(self.fatal).__name__}"
        if self.first is not None:
            return f" error={type(self.first).__name__}"
        return ""
