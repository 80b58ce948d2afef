"""A requests adapter that sends the context's budget and request id.

::

    import requests
    from tether.integrations.requests import ContextAdapter

    session = requests.Session()
    adapter = ContextAdapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    with tether.with_timeout(ctx, 2.0):
        session.get(url)            # the context is tether.current()

Each request sends ``x-request-id`` and ``x-request-timeout``
(``propagation.inject``); a call whose budget is below ``policy.floor`` is not sent
(``tether.DeadlineExceeded`` locally); the connect and read timeouts are clamped to
the remaining budget; when the budget is what ran out, ``tether.DeadlineExceeded`` is
raised (chained to requests' ``Timeout``), and an already cancelled context raises
``tether.Canceled`` before sending.

requests does blocking I/O and cannot be interrupted: a read timeout bounds each
socket read, not the whole response, so a server trickling bytes can overshoot the
deadline by up to one read. Use httpx's ``AsyncContextTransport`` where that matters.

Added in 0.1.
"""

from __future__ import annotations

from typing import Any

try:
    import requests
    import requests.adapters
except ImportError as e:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "tether: tether.integrations.requests needs the 'requests' extra: "
        "pip install 'tether[requests]'"
    ) from e

from .. import propagation
from .._context import current
from .._errors import DeadlineExceeded
from ..propagation import Policy, PolicyHolder

__all__ = ["ContextAdapter"]

_LATE = 0.005  # a timeout firing this close to the deadline is the deadline's


def _clamp(timeout: Any, remaining: float) -> tuple[Any, bool]:
    if timeout is None:
        return (remaining, remaining), True
    if isinstance(timeout, tuple):
        connect, read = timeout
    elif isinstance(timeout, int | float):
        connect = read = timeout
    else:  # a urllib3 Timeout object
        connect = getattr(timeout, "connect_timeout", None)
        read = getattr(timeout, "read_timeout", None)
        if not isinstance(connect, int | float):
            connect = None
        if not isinstance(read, int | float):
            read = None
    clamped = False
    if connect is None or connect > remaining:
        connect, clamped = remaining, True
    if read is None or read > remaining:
        read, clamped = remaining, True
    return (connect, read), clamped


class ContextAdapter(requests.adapters.HTTPAdapter):
    """A ``requests`` transport adapter carrying ``tether.current()`` (see the module).

    ``policy`` is a ``propagation.Policy`` or ``PolicyHolder`` (its ``margin`` and
    ``floor`` apply); other keyword arguments go to ``HTTPAdapter``.

    Added in 0.1.
    """

    def __init__(self, policy: Policy | PolicyHolder | None = None, **kwargs: Any) -> None:
        """Make the adapter.

        Non-blocking; each call makes a new adapter; thread-safe. No context is involved
        yet, so none can have already ended. Raises ``TypeError`` for a bad ``policy``.
        """
        propagation._resolve(policy)
        super().__init__(**kwargs)
        self._tether_policy = policy

    def send(  # noqa: PLR0917 - HTTPAdapter.send's signature
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: bool | str = True,
        cert: Any = None,
        proxies: dict[str, str] | None = None,
    ) -> requests.Response:
        """Send ``request`` under ``tether.current()``.

        Blocks until the response arrives (or its headers, with ``stream=True``); each
        call sends one new request; thread-safe as ``HTTPAdapter`` is. If the context already
        ended, raises its error without sending. Raises ``tether.DeadlineExceeded``
        below ``policy.floor`` or when the budget ran out during the call, and
        requests' own exceptions otherwise.
        """
        ctx = current()
        propagation.inject(ctx, request.headers, policy=self._tether_policy)  # type: ignore[arg-type]
        remaining = ctx.remaining()
        clamped = False
        if remaining is not None:
            timeout, clamped = _clamp(timeout, remaining)
        try:
            return super().send(
                request, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies=proxies
            )
        except (requests.exceptions.Timeout, requests.exceptions.ConnectionError) as e:
            err = ctx.err()
            if err is not None:
                raise type(err)() from e
            left = ctx.remaining()
            if (
                clamped
                and left is not None
                and left <= _LATE
                and (isinstance(e, requests.exceptions.Timeout) or "timed out" in str(e))
            ):
                raise DeadlineExceeded() from e
            raise
