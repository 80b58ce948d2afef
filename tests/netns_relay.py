"""A TCP relay that delays each direction by a fixed time (run as a script in a namespace).

``python netns_relay.py LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT DELAY_MS``: every
connection accepted on LISTEN is relayed to TARGET; each chunk read from either side is
timestamped on arrival and written to the other side at arrival + DELAY_MS, in order
(one queue per direction), so a request/response exchange through the relay takes at
least 2 x DELAY_MS longer, as through a link delayed DELAY_MS each way. An end of stream
is forwarded (half-close) after the same delay. This stands in for ``tc netem`` where the
kernel has no ``sch_netem`` (tests/test_http_netns.py; docs/design.md 7.7).

Stdlib only, so that it starts in tens of milliseconds. It runs until killed (SIGTERM).
``python netns_relay.py --measure [DELAY_MS]`` prints the round trip of small echoes
through a relay of 0 and of DELAY_MS (default 20) on 127.0.0.1: what it really adds.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Copy reader to writer, each chunk released ``delay`` seconds after it arrived."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def release() -> None:
        while True:
            at, data = await queue.get()
            while (wait := at - loop.time()) > 0:
                await asyncio.sleep(wait)
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    releaser = asyncio.create_task(release())
    try:
        while data := await reader.read(65536):
            queue.put_nowait((loop.time() + delay, data))
        queue.put_nowait((loop.time() + delay, b""))
        await releaser
    finally:
        releaser.cancel()


async def _relay(
    client_r: asyncio.StreamReader,
    client_w: asyncio.StreamWriter,
    target: tuple[str, int],
    delay: float,
) -> None:
    try:
        upstream_r, upstream_w = await asyncio.open_connection(*target)
    except OSError:
        client_w.close()
        return
    pumps = [
        asyncio.create_task(_pump(client_r, upstream_w, delay)),
        asyncio.create_task(_pump(upstream_r, client_w, delay)),
    ]
    try:
        # both directions end (normal close), or one fails (reset): then drop both
        await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for t in pumps:
            t.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        for w in (client_w, upstream_w):
            w.close()
            with contextlib.suppress(OSError):
                await w.wait_closed()


async def main(listen: tuple[str, int], target: tuple[str, int], delay: float) -> None:
    async def on_client(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await _relay(r, w, target, delay)

    server = await asyncio.start_server(on_client, *listen, reuse_address=True)
    async with server:
        await server.serve_forever()


async def measure(delay: float, n: int = 200) -> list[float]:
    """Round trips of 100-byte echoes through a relay of ``delay``, all on 127.0.0.1."""

    async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
        w.close()

    handlers: set[asyncio.Task[object]] = set()

    async def on_client(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if task := asyncio.current_task():
            handlers.add(task)
        await _relay(r, w, ("127.0.0.1", echo_port), delay)

    loop = asyncio.get_running_loop()
    echo_server = await asyncio.start_server(echo, "127.0.0.1", 0)
    echo_port = echo_server.sockets[0].getsockname()[1]
    relay_server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    r, w = await asyncio.open_connection(*relay_server.sockets[0].getsockname()[:2])
    rtts = []
    for _ in range(n):
        t0 = loop.time()
        w.write(b"x" * 100)
        await r.readexactly(100)
        rtts.append(loop.time() - t0)
    w.close()
    await w.wait_closed()
    await asyncio.wait(handlers, timeout=5)  # the close goes through the relay
    for server in (relay_server, echo_server):
        server.close()
    return rtts


if __name__ == "__main__":
    if sys.argv[1:2] == ["--measure"]:
        # python tests/netns_relay.py --measure [DELAY_MS]: what the relay really adds
        for ms in [0.0, float(sys.argv[2]) if len(sys.argv) > 2 else 20.0]:
            xs = sorted(asyncio.run(measure(ms / 1e3)))
            p50, p90 = xs[len(xs) // 2], xs[len(xs) * 9 // 10]
            print(f"relay {ms:g} ms each way, {len(xs)} echoes: round trip min "
                  f"{xs[0] * 1e3:.2f}, p50 {p50 * 1e3:.2f}, p90 {p90 * 1e3:.2f}, "
                  f"max {xs[-1] * 1e3:.2f} ms")  # fmt: skip
        sys.exit()
    lhost, lport, thost, tport, delay_ms = sys.argv[1:]
    asyncio.run(main((lhost, int(lport)), (thost, int(tport)), float(delay_ms) / 1e3))
