"""Real servers on loopback for the HTTP integration tests (not a test module).

``serve(app, kind)`` runs an ASGI app under uvicorn (``"h11"``/``"httptools"``) or
hypercorn, or a WSGI app under waitress, in a thread with its own event loop, on a port
the kernel picks; it yields the base URL and stops (and joins) the server on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import tether

ASGI_SERVERS = ["uvicorn-h11", "uvicorn-httptools", "hypercorn"]


def _listener() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def _wait_listening(port: int, thread: threading.Thread, deadline: float = 15.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if not thread.is_alive():
            raise RuntimeError("the server thread died while starting")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.01)
    raise RuntimeError(f"no server listening on {port} after {deadline} s")


@contextlib.contextmanager
def serve(
    app: Any, kind: str = "uvicorn-h11", parent: tether.Context | None = None
) -> Iterator[str]:
    """Serve ``app``; ``parent``, if given, is ``tether.current()`` in the server."""
    sock = _listener()
    port = sock.getsockname()[1]
    stop: Any
    errors: list[BaseException] = []

    def in_parent(main: Any) -> None:
        try:
            if parent is None:
                main()
            else:
                with tether.with_cancel(parent):
                    main()
        except BaseException as e:
            errors.append(e)

    if kind.startswith("uvicorn"):
        import uvicorn

        config = uvicorn.Config(
            app,
            http=kind.split("-", 1)[1],
            lifespan="off",
            log_level="warning",
            access_log=False,
            loop="asyncio",
            timeout_graceful_shutdown=3,
        )
        server = uvicorn.Server(config)

        def run() -> None:
            in_parent(lambda: asyncio.run(server.serve(sockets=[sock])))

        def stop() -> None:
            server.should_exit = True

    elif kind == "hypercorn":
        from hypercorn.asyncio import serve as hypercorn_serve
        from hypercorn.config import Config

        config = Config()
        config.bind = [f"fd://{os.dup(sock.fileno())}"]
        config.graceful_timeout = 3
        config.accesslog = None
        holder: dict[str, Any] = {}
        ready = threading.Event()

        async def main() -> None:
            holder["loop"] = asyncio.get_running_loop()
            holder["event"] = asyncio.Event()
            ready.set()
            await hypercorn_serve(app, config, shutdown_trigger=holder["event"].wait)

        def run() -> None:
            in_parent(lambda: asyncio.run(main()))

        def stop() -> None:
            ready.wait(10)
            holder["loop"].call_soon_threadsafe(holder["event"].set)

    elif kind == "waitress":
        import waitress.server

        sock.listen(64)
        wsgi_server = waitress.server.create_server(
            app, sockets=[sock], threads=8, clear_untrusted_proxy_headers=True
        )

        def run() -> None:
            in_parent(wsgi_server.run)

        def stop() -> None:
            wsgi_server.task_dispatcher.shutdown(timeout=10)  # joins its worker threads
            # Stop the asyncore loop before closing what it selects on: a socket closed
            # under a running select() makes it raise EBADF in the server thread. The loop
            # runs while its map has entries; empty it, wake the select, wait for the loop.
            leftover = dict(wsgi_server._map)
            wsgi_server._map.clear()
            wsgi_server.pull_trigger()
            thread.join(20)
            wsgi_server.close()
            for disp in leftover.values():  # connections still open when the server stopped
                if disp is not wsgi_server and disp is not wsgi_server.trigger:
                    with contextlib.suppress(OSError):
                        disp.close()

    else:
        raise ValueError(kind)

    thread = threading.Thread(target=run, name=f"test-server-{kind}", daemon=True)
    thread.start()
    try:
        _wait_listening(port, thread)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop()
        thread.join(20)
        sock.close()
        assert not thread.is_alive(), f"{kind} did not stop"
    if errors:
        raise errors[0]
