"""TTH001: the context is not the first parameter (Go: "context should be the first parameter")."""

from __future__ import annotations

import tether
from tether import Context as Ctx

Context = tether.Context  # a module-level alias


def fetch(url: str, ctx: tether.Context) -> str:  # expect: TTH001
    return url


def fetch_aliased(url: str, parent: Ctx) -> str:  # expect: TTH001
    return url


def fetch_unannotated(url, ctx):  # expect: TTH001
    return url


def fetch_optional(url: str, ctx: tether.Context | None) -> str:  # expect: TTH001
    return url


class Client:
    def get(self, url: str, ctx: tether.Context) -> str:  # expect: TTH001
        return url

    @classmethod
    def make(cls, name: str, ctx: "tether.Context") -> Client:  # expect: TTH001
        return cls()

    @staticmethod
    def helper(n: int, ctx: tether.Context) -> int:  # expect: TTH001
        return n


def fetch_module_alias(url: str, ctx: Context) -> str:  # expect: TTH001
    return url
