"""TTH004 good: the root is made once, in main(); handlers derive from their context."""

from __future__ import annotations

import tether

from ._helpers import work


def handler(ctx: tether.Context, user: str) -> None:
    with tether.with_timeout(ctx, 5) as child:
        work(child, user)


def detached_audit(ctx: tether.Context) -> None:
    work(tether.without_cancel(ctx))  # keeps values, drops cancellation, on purpose


def main() -> None:
    ctx = tether.background()
    handler(ctx, "alice")


def background() -> tether.Context:  # not tether's
    return tether.todo()


def uses_a_same_named_function(ctx: tether.Context) -> None:
    work(background())


def optional_parent(ctx: tether.Context | None = None) -> None:
    if ctx is None:
        ctx = tether.background()  # no caller context on this path: nothing is lost
    work(ctx)
