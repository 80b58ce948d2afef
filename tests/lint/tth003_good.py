"""TTH003 good: contexts travel as parameters; objects hold cancel functions or plain data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import tether

from ._helpers import work

ROOT = tether.background()  # a module-level root made at import is not a stored request context


class Worker:
    def __init__(self, name: str) -> None:
        self.name = name
        self.cancels: list[Any] = []

    def run(self, ctx: tether.Context) -> None:
        child, cancel = tether.with_cancel(ctx)
        self.cancels.append(cancel)
        work(child, self.name)

    def handle(self, ctx: tether.Context, item: str) -> None:
        local = ctx  # a local is fine
        work(local, item)


@dataclass
class Request:
    url: str
    timeout: float


def counter() -> None:
    global ROOT_COUNT
    ROOT_COUNT = 1


ROOT_COUNT = 0
