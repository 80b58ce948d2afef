"""Rows, targets and the printed tables."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from _harness import Result

__all__ = ["Row", "fmt", "print_row", "print_summary"]


@dataclass
class Row:
    """One line of the issue's Speed table (or an extra row), with what was measured.

    ``limit``: tether's primary figure (its minimum) must be <= this (seconds, bytes or a
    count, per ``unit``). ``ratio_limit``: tether / ``ratio_to`` (a peer's name, else the
    best peer) must be <= this. A row with neither has no target.
    """

    id: str
    title: str
    unit: str = "s"  # "s", "B" or "n"
    target: str = ""
    limit: float | None = None
    ratio_limit: float | None = None
    ratio_to: str | None = None
    exact: bool = False  # the limit is an exact count, not a ceiling
    note: str = ""
    results: list[Result] = field(default_factory=list)

    @property
    def tether(self) -> Result | None:
        for r in self.results:
            if r.impl == "tether" and r.primary:
                return r
        return next((r for r in self.results if r.impl == "tether"), None)

    @property
    def best_peer(self) -> Result | None:
        if self.ratio_to is not None:
            return next((r for r in self.results if r.impl == self.ratio_to), None)
        peers = [r for r in self.results if r.impl != "tether" and not r.reference]
        return min(peers, key=lambda r: r.best, default=None)

    def ratio(self, r: Result) -> float | None:
        best = self.best_peer
        if best is None or self.unit == "n" or best.best <= 0:
            return None
        return r.best / best.best

    @property
    def met(self) -> bool | None:
        t = self.tether
        if t is None:
            return None
        if self.limit is not None:
            if self.exact:
                return t.best == self.limit
            return t.best <= self.limit
        if self.ratio_limit is not None:
            ratio = self.ratio(t)
            return None if ratio is None else ratio <= self.ratio_limit
        return None

    def as_json(self) -> dict[str, Any]:
        t, best = self.tether, self.best_peer
        return {
            "id": self.id,
            "title": self.title,
            "unit": self.unit,
            "target": self.target,
            "note": self.note,
            "met": self.met,
            "tether": t.best if t else None,
            "best_peer": {"impl": best.impl, "label": best.label, "min": best.best}
            if best
            else None,
            "ratio": self.ratio(t) if t else None,
            "results": [r.as_json() for r in self.results],
        }


def fmt(x: float, unit: str) -> str:
    if unit == "n":
        return f"{x:g}"
    if unit == "B":
        return f"{x / 1e6:.1f} MB"
    for scale, name in ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs")):
        if x >= scale:
            return f"{x / scale:.3g} {name}"
    return f"{x / 1e-9:.3g} ns"


def _met(m: bool | None) -> str:
    return {True: "met", False: "NOT MET", None: "-"}[m]


def print_row(row: Row) -> None:
    head = f"{row.id}  {row.title}"
    if row.target:
        head += f"   [target: {row.target}]"
    print(head)
    if row.note:
        print(f"     ({row.note})")
    best = row.best_peer
    for r in row.results:
        ratio = row.ratio(r)
        mark = (
            "*"
            if r is row.tether and r.impl == "tether"
            else ("=" if r is best else (" " if not r.reference else "~"))
        )
        print(
            f"   {mark} {r.impl:<11} {fmt(r.best, row.unit):>10}  "
            f"(med {fmt(r.median, row.unit):>9})  "
            f"{(f'{ratio:.2f}x' if ratio is not None else ''):>7}  {r.label}"
        )
    print()


def print_summary(rows: list[Row]) -> None:
    print("Summary: tether's primary line vs the best peer (min over repeats)")
    print(
        f"{'row':<5} {'tether':>10} {'best peer':>10} {'':<11} {'ratio':>7}  {'target':<22} result"
    )
    for row in rows:
        t, best = row.tether, row.best_peer
        if t is None:
            continue
        ratio = row.ratio(t)
        print(
            f"{row.id:<5} {fmt(t.best, row.unit):>10} "
            f"{fmt(best.best, row.unit) if best else '-':>10} "
            f"{best.impl if best else '':<11} "
            f"{(f'{ratio:.2f}x' if ratio is not None else '-'):>7}  "
            f"{row.target or '-':<22} {_met(row.met)}"
        )
