"""TTH005 good: sleeps that watch the context; blocking work off the event loop."""

from __future__ import annotations

import asyncio
import subprocess
import time

import requests

import tether


def poll(ctx: tether.Context) -> None:
    tether.sleep(ctx, 1)


async def apoll(ctx: tether.Context) -> None:
    await tether.asleep(ctx, 1)


async def off_loop() -> None:
    await asyncio.to_thread(lambda: time.sleep(0.1))


def script_main() -> None:
    time.sleep(0.1)  # no context here, not async: nothing to watch


def with_session(ctx: tether.Context, session: requests.Session, url: str) -> str:
    return session.get(url, timeout=5).text


def stamp(ctx: tether.Context) -> float:
    return time.monotonic()


def build(ctx: tether.Context) -> None:
    # sync code may block on purpose; give it the budget
    subprocess.run(["make"], check=True, timeout=ctx.remaining())


async def abuild(ctx: tether.Context) -> None:
    await tether.to_thread(ctx, lambda c: subprocess.run(["make"], check=True))
