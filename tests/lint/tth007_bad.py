"""TTH007 bad: seed 003, "swallowing ctx.err() and retrying forever"."""

from __future__ import annotations

import tether
from tether import ContextError as CE

from ._helpers import log, work


def consume(ctx: tether.Context) -> None:
    while True:
        try:
            work(ctx)
        except Exception:  # expect: TTH007
            log("retrying")
            continue


def retry(ctx: tether.Context, attempts: int) -> None:
    for _ in range(attempts):
        try:
            work(ctx)
            return
        except TimeoutError:  # expect: TTH007
            log("timed out, again")


def swallow_context_errors(ctx: tether.Context) -> None:
    while True:
        try:
            work(ctx)
        except CE:  # expect: TTH007
            pass


def bare(ctx) -> None:
    while True:
        try:
            tether.sleep(ctx, 1)
        except:  # expect: TTH007
            pass


async def aconsume(ctx: tether.Context) -> None:
    while True:
        try:
            await work(ctx)
        except (ValueError, OSError):  # expect: TTH007
            log("again")


def attempts(ctx: tether.Context) -> None:
    for attempt in range(10):
        try:
            work(ctx, attempt)
        except Exception:  # expect: TTH007
            log("attempt failed")
