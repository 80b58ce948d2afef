"""Stand-ins the corpus calls; the checker only reads the corpus, never runs it."""

from __future__ import annotations

from typing import Any

import tether


def work(ctx: tether.Context, *args: Any) -> Any:
    return ctx, args


async def awork(ctx: tether.Context, *args: Any) -> Any:
    return ctx, args


def log(*args: Any) -> None:
    del args
