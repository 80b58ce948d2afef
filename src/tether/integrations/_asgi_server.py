"""What the uvicorn and hypercorn components share: bind, serve, stop in two steps.

A server component runs under a Supervisor like any other: it serves until its ``ctx``
ends, then stops *accepting* (listening sockets closed, idle keep-alive connections
closed) and lets the requests in flight finish; when the drain context ends (the
supervisor's drain deadline, ``drain_scope``) it stops waiting and cancels what still
runs. The server never installs a signal handler: signals are the supervisor's, so its
``ready()``, drain deadline and exit code stay true.

Stdlib only; the server library is imported by the public module that uses this.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from .._context import Context
from ..lifecycle._common import drain_scope

LOG = logging.getLogger("tether.integrations")


def check_host_port(host: object, port: object) -> tuple[str, int]:
    if not isinstance(host, str) or not host:
        raise TypeError(f"tether: host must be a non-empty str, got {host!r:.40}")
    if type(port) is not int:
        raise TypeError(f"tether: port must be an int (0 picks a free one), got {port!r:.40}")
    if not 0 <= port <= 65535:
        raise ValueError(f"tether: port must be in 0..65535, got {port}")
    return host, port


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (IPv6 if ``host`` has a colon)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve_until(
    ctx: Context,
    *,
    what: str,
    run: Callable[[], Awaitable[Any]],
    stop: Callable[[], None],
    force: Callable[[], None],
) -> None:
    """Run ``run()`` until ``ctx`` ends; then ``stop()``; at the drain's end ``force()``.

    A server that stops by itself (a
    startup failure) ends this with its error; ``SystemExit`` from it (uvicorn exits
    on a lifespan startup failure) becomes a ``RuntimeError`` so it cannot tear down
    the event loop.
    """
    work, cancel_work = drain_scope(ctx)

    async def guarded() -> None:
        try:
            await run()
        except SystemExit as e:
            raise RuntimeError(f"tether: {what} exited during startup (code {e.code})") from e

    task = asyncio.ensure_future(guarded())
    try:
        await _first(task, ctx)
        if not task.done():
            LOG.info(
                "%s: stopped accepting; draining requests in flight",
                what,
                extra={"event": "server_draining"},
            )
            stop()
            await _first(task, work)
        if not task.done():
            force()
            LOG.error(
                "%s: the drain deadline passed: the requests still in flight are cancelled",
                what,
                extra={"event": "server_drain_timeout"},
            )
        await task  # raises the server's own error, if it failed
    finally:
        cancel_work()
        if not task.done():
            task.cancel()
            await asyncio.wait({task})


async def _first(task: asyncio.Future[None], ctx: Context) -> None:
    """Until ``task`` is done or ``ctx`` ended."""
    if ctx.err() is not None:
        return

    async def ended() -> None:
        await ctx.done()

    watcher = asyncio.ensure_future(ended())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not watcher.done():
            watcher.cancel()
            await asyncio.wait({watcher})
