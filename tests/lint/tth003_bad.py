"""TTH003 bad: "Do not store Contexts inside a struct type" (Go's context package doc)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import tether
from tether import Context

CURRENT = tether.background()


class Worker:
    ctx: tether.Context  # expect: TTH003
    fallback = tether.background()  # expect: TTH003

    def __init__(self, ctx: tether.Context) -> None:
        self.ctx = ctx  # expect: TTH003

    def start(self, ctx: tether.Context) -> None:
        self._child, self._cancel = tether.with_cancel(ctx)  # expect: TTH003

    def detach(self) -> None:
        self.root = tether.background()  # expect: TTH003


@dataclass
class Request:
    url: str
    ctx: Optional[Context] = None  # expect: TTH003


def remember(ctx: tether.Context) -> None:
    global CURRENT
    CURRENT = ctx  # expect: TTH003
