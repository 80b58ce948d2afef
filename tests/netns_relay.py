"""A TCP relay that delays each direction by a fixed time (run as a script in a namespace).

``python netns_relay.py LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT DELAY_MS``: every
connection accepted on LISTEN is relayed to TARGET; each chunk read from either side is
timestamped on arrival and written to the other side at arrival + DELAY_MS, in order
(one queue per direction), so a request/response exchange through the relay takes at
least 2 x DELAY_MS longer, as through a link delayed DELAY_MS each way. An end of stream
is forwarded (half-close) after the same delay. This stands in for ``tc netem`` where the
kernel has no ``sch_netem`` (tests/test_http_netns.py; docs/design.md 7.7).

Stdlib only, so that it starts in tens of milliseconds. It runs until killed (SIGTERM).
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


if __name__ == "__main__":
    lhost, lport, thost, tport, delay_ms = sys.argv[1:]
    asyncio.run(main((lhost, int(lport)), (thost, int(tport)), float(delay_ms) / 1e3))
