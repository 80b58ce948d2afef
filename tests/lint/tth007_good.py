"""TTH007 good: context errors are let through, or the loop stops when the context ends."""

from __future__ import annotations

import tether

from ._helpers import log, work


def consume(ctx: tether.Context) -> None:
    while True:
        try:
            work(ctx)
        except tether.ContextError:
            raise
        except Exception:
            log("retrying")


def consume_until_done(ctx: tether.Context) -> None:
    while ctx.err() is None:
        try:
            work(ctx)
        except Exception:
            log("retrying")


def reraise_on_err(ctx: tether.Context) -> None:
    while True:
        try:
            work(ctx)
        except Exception:
            if ctx.err() is not None:
                raise
            log("retrying")


def check_in_handler(ctx: tether.Context) -> None:
    while True:
        try:
            work(ctx)
        except OSError:
            ctx.check()


def gives_up(ctx: tether.Context) -> None:
    for _ in range(3):
        try:
            work(ctx)
            break
        except Exception:
            log("failed")
            return


def narrow(ctx: tether.Context) -> None:
    while True:
        try:
            work(ctx)
        except ValueError:
            log("bad input, next")


def no_context_in_the_try(items: list[str]) -> None:
    for item in items:
        try:
            int(item)
        except Exception:
            log("skip", item)


def each_item(ctx: tether.Context, items: list[str]) -> None:
    # not a retry: a failure moves on to the next item, and the loop ends
    for item in items:
        try:
            work(ctx, item)
        except Exception:
            log("failed", item)
