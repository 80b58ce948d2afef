"""TTH004 bad: "creating a new context loses the parent's cancellation" (contextcheck)."""

from __future__ import annotations

import tether
from tether import todo

from ._helpers import work


def handler(ctx: tether.Context, user: str) -> None:
    work(tether.background(), user)  # expect: TTH004


def handler_unannotated(ctx, user):
    with tether.with_timeout(tether.background(), 5) as child:  # expect: TTH004
        work(child, user)


def later(ctx: tether.Context) -> None:
    work(todo())  # expect: TTH004


async def async_handler(ctx: tether.Context) -> None:
    await work(tether.background())  # expect: TTH004
