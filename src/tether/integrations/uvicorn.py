"""uvicorn as a Supervisor component that leaves signals to tether.

``uvicorn.run(app)`` (and ``Server.serve``) install their own SIGINT/SIGTERM handlers,
replacing the supervisor's: the service then drains on uvicorn's schedule, ignores the
supervisor's ``drain_timeout`` and stays ``ready()`` while it does. ``Server`` runs
uvicorn without its signal handlers, as a component::

    from tether import lifecycle
    from tether.integrations import uvicorn as tether_uvicorn

    sup = lifecycle.Supervisor(drain_timeout=20)
    api = tether_uvicorn.Server(app, host="0.0.0.0", port=8000)
    sup.add("api", api.serve)
    sup.main()

On SIGTERM (or any shutdown trigger) the supervisor turns ``ready()`` off and ends the
component's ``ctx``: uvicorn closes its listening socket and idle connections at once
(no new request is accepted) and the requests in flight finish; at the drain deadline
the ones still running are cancelled and the component returns, within the
supervisor's ``close_timeout``. uvicorn's lifespan shutdown runs when the drain was
complete. uvicorn is imported when ``serve`` runs; without it, ``ImportError`` names
the extra: ``pip install 'tether[uvicorn]'``.

Added in 0.1.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from .._context import Context
from ._asgi_server import bind, check_host_port, serve_until

__all__ = ["Server"]


def _uvicorn() -> Any:
    try:
        import uvicorn
    except ImportError as e:
        raise ImportError(
            "tether: tether.integrations.uvicorn needs the 'uvicorn' extra: "
            "pip install 'tether[uvicorn]'"
        ) from e
    return uvicorn


_RESERVED = ("host", "port", "fd", "uds", "workers", "reload")


class Server:
    """An ASGI app served by uvicorn as a ``Supervisor`` component: ``sup.add("api",
    Server(app, port=8000).serve)``.

    ``config`` is passed to ``uvicorn.Config`` (``log_level``, ``lifespan``,
    ``timeout_keep_alive``, ``proxy_headers`` …), except the address (``host``,
    ``port`` are this class's own; ``port=0`` picks a free port, read it from
    ``port`` once serving) and the process options (``workers``, ``reload``, ``fd``,
    ``uds``), which a component does not own. ``log_config`` defaults to ``None``:
    uvicorn then leaves the application's logging configuration alone.

    Constructing one checks the arguments only (no uvicorn import, no socket).
    Non-blocking, thread-safe, each call a new independent component; no context is
    involved (so none can have already ended).
    Raises ``TypeError``/``ValueError`` with a ``tether:`` message for a bad address or
    a reserved option.

    Added in 0.1.
    """

    __module__ = "tether.integrations.uvicorn"

    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int = 8000, **config: Any):
        self._host, self._port = check_host_port(host, port)
        bad = [k for k in config if k in _RESERVED]
        if bad:
            raise TypeError(
                f"tether: Server() does not take {', '.join(bad)}: pass host= and port=, and "
                "run one process per Server (a Supervisor is the process)"
            )
        config.setdefault("log_config", None)
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

        Suspends the calling task (never blocks the loop) for the life of the server,
        on the loop that should run uvicorn (a Supervisor's). When ``ctx`` ends, the
        listening socket closes, idle connections close, and the requests in flight
        finish; when the drain context ends (``drain_scope``: the supervisor's drain
        deadline; without one, at once) the ones still running are cancelled and
        ``serve`` returns. uvicorn never installs signal handlers here. If ``ctx``
        already ended, returns at once without binding. Once per instance is the
        intended use (not idempotent: each call binds and serves again); thread-safe
        as far as it touches no shared state. Raises ``TypeError`` if ``ctx`` is not a
        Context, ``OSError`` if the address cannot be bound, ``ImportError`` without
        uvicorn, and uvicorn's own startup error (a failed lifespan startup as
        ``RuntimeError``).

        Added in 0.1.
        """
        if type(ctx) is not Context:
            raise TypeError(f"tether: serve needs a tether.Context, got {type(ctx).__name__}")
        uvicorn = _uvicorn()
        if ctx.err() is not None:
            return
        server = _quiet_server_class(uvicorn)(uvicorn.Config(self._app, **self._config))
        sock = bind(self._host, self._port)
        self._bound = sock.getsockname()[1]
        what = f"uvicorn on {self._host}:{self._bound}"

        async def run() -> None:
            await server.serve(sockets=[sock])

        def stop() -> None:
            server.should_exit = True

        def force() -> None:
            server.force_exit = True
            for t in list(server.server_state.tasks):
                t.cancel()

        try:
            await serve_until(ctx, what=what, run=run, stop=stop, force=force)
        finally:
            sock.close()

    def __repr__(self) -> str:
        where = f"{self._host}:{self._bound if self._bound is not None else self._port}"
        return f"<tether.integrations.uvicorn.Server {where}>"


def _quiet_server_class(uvicorn: Any) -> Any:
    class QuietServer(uvicorn.Server):  # type: ignore[misc]
        """uvicorn.Server without its signal handlers: the Supervisor has them."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:  # uvicorn >= 0.29
            yield

        def install_signal_handlers(self) -> None:  # uvicorn < 0.29
            pass

    return QuietServer
