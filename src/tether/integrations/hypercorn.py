"""Hypercorn as a Supervisor component that leaves signals to tether.

``hypercorn.asyncio.serve(app, config)`` installs SIGINT/SIGTERM handlers unless it is
given a ``shutdown_trigger``; ``Server`` gives it one — the component's ``ctx`` — so the
supervisor keeps the signals, its ``ready()`` and its drain deadline::

    from tether import lifecycle
    from tether.integrations import hypercorn as tether_hypercorn

    sup = lifecycle.Supervisor(drain_timeout=20)
    sup.add("api", tether_hypercorn.Server(app, host="0.0.0.0", port=8000).serve)
    sup.main()

When ``ctx`` ends Hypercorn closes its listening socket (no new connection is
accepted) and lets the requests in flight finish; at the drain deadline the server is
cancelled and the component returns. Hypercorn's own ``graceful_timeout`` is set out
of the way (the supervisor's drain deadline bounds the drain). Hypercorn is imported
when ``serve`` runs; without it, ``ImportError`` names the extra: ``pip install
'tether[hypercorn]'``.

Added in 0.1.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from .._context import Context
from ._asgi_server import bind, check_host_port, serve_until

__all__ = ["Server"]

_FOREVER = 365 * 24 * 3600.0  # graceful_timeout: the supervisor's deadline is the bound


def _hypercorn() -> tuple[Any, Any]:
    try:
        from hypercorn.asyncio import serve
        from hypercorn.config import Config
    except ImportError as e:
        raise ImportError(
            "tether: tether.integrations.hypercorn needs the 'hypercorn' extra: "
            "pip install 'tether[hypercorn]'"
        ) from e
    return Config, serve


_RESERVED = ("bind", "insecure_bind", "quic_bind", "workers", "use_reloader")


class Server:
    """An ASGI app served by Hypercorn as a ``Supervisor`` component: ``sup.add("api",
    Server(app, port=8000).serve)``.

    ``config`` sets attributes of ``hypercorn.config.Config`` (``keep_alive_timeout``,
    ``h11_max_incomplete_size``, ``accesslog`` …), except the address (``host``,
    ``port`` are this class's own; ``port=0`` picks a free port, read it from
    ``port`` once serving) and the process options (``bind``, ``workers``,
    ``use_reloader``). Constructing one checks the arguments only (no Hypercorn import,
    no socket). Non-blocking, thread-safe, each call a new independent component; no
    context is involved (so none can have already ended). Raises
    ``TypeError``/``ValueError`` with a ``tether:`` message for a bad address or a
    reserved option.

    Added in 0.1.
    """

    __module__ = "tether.integrations.hypercorn"

    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int = 8000, **config: Any):
        self._host, self._port = check_host_port(host, port)
        bad = [k for k in config if k in _RESERVED]
        if bad:
            raise TypeError(
                f"tether: Server() does not take {', '.join(bad)}: pass host= and port=, and "
                "run one process per Server (a Supervisor is the process)"
            )
        self._app = app
        self._config = config
        self._bound: int | None = None

    @property
    def port(self) -> int | None:
        """The port it listens on once ``serve`` bound it (``port=0`` resolved), else
        ``None``. Non-blocking, thread-safe, idempotent; raises nothing; still the last
        port after the context already ended."""
        return self._bound

    async def serve(self, ctx: Context) -> None:
        """Serve until ``ctx`` ends, then stop accepting and drain; a component.

        Suspends the calling task (never blocks the loop) for the life of the server. When
        ``ctx`` ends, the listening socket closes and the requests in flight finish; when
        the drain context ends (``drain_scope``: the supervisor's drain deadline; without
        one, at once) the server is cancelled and ``serve`` returns. Hypercorn never
        installs signal handlers here. If ``ctx`` already ended, returns at once without
        binding. Once per instance is the intended use (not idempotent: each call binds and
        serves again); thread-safe as far as it touches no shared state. Raises
        ``TypeError`` if ``ctx`` is not a Context or a config attribute is unknown,
        ``OSError`` if the address cannot be bound, ``ImportError`` without Hypercorn, and
        Hypercorn's own startup errors.

        Added in 0.1.
        """
        if type(ctx) is not Context:
            raise TypeError(f"tether: serve needs a tether.Context, got {type(ctx).__name__}")
        config_cls, hypercorn_serve = _hypercorn()
        if ctx.err() is not None:
            return
        config = config_cls()
        for k, v in self._config.items():
            if not hasattr(config, k):
                raise TypeError(f"tether: hypercorn.config.Config has no option {k!r}")
            setattr(config, k, v)
        config.graceful_timeout = _FOREVER
        sock = bind(self._host, self._port)
        self._bound = sock.getsockname()[1]
        config.bind = [f"fd://{os.dup(sock.fileno())}"]  # Hypercorn closes its copy
        what = f"hypercorn on {self._host}:{self._bound}"
        trigger = asyncio.Event()
        box: list[asyncio.Task[Any]] = []

        async def run() -> None:
            task = asyncio.current_task()
            assert task is not None
            box.append(task)
            await hypercorn_serve(self._app, config, shutdown_trigger=trigger.wait)

        def stop() -> None:
            trigger.set()

        def force() -> None:
            for t in box:
                t.cancel()

        try:
            await serve_until(ctx, what=what, run=run, stop=stop, force=force)
        finally:
            sock.close()

    def __repr__(self) -> str:
        where = f"{self._host}:{self._bound if self._bound is not None else self._port}"
        return f"<tether.integrations.hypercorn.Server {where}>"
