"""TTH001 good: the context comes first; keyword-only contexts are exempt."""

from __future__ import annotations

from typing import Any

import tether


def fetch(ctx: tether.Context, url: str) -> str:
    return url


def fetch_unannotated(ctx, url):
    return url


def with_keyword_context(url: str, *, ctx: tether.Context) -> str:
    return url


def two_contexts(ctx: tether.Context, other: tether.Context) -> None:
    pass


def not_a_context(url: str, ctx: dict[str, Any]) -> str:  # annotated, but not a Context
    return url


def local_ctx(url: str) -> None:
    ctx = tether.background()  # a local named ctx does not make a context parameter
    del ctx


class Client:
    def get(self, ctx: tether.Context, url: str) -> str:
        return url

    @staticmethod
    def helper(ctx: tether.Context, n: int) -> int:
        return n


def callback(*args: Any, **kwargs: Any) -> None:
    pass


def method_of(cls: type) -> Any:
    def attach(fn: Any) -> Any:
        setattr(cls, fn.__name__, fn)
        return fn

    return attach


@method_of(Client)
def fetch_all(client: Client, ctx: tether.Context, urls: list[str]) -> None:
    # attached to Client by a decorator naming it: `client` is the receiver (pygolang's @func)
    pass
