"""Timing machinery: timeit-style cases, event-loop runners, interleaved repeats.

A *micro case* is a statement timed in a loop, as ``timeit`` does it: the setup runs
once per batch inside a generated function (so the names it binds are fast locals), the
statement runs once untimed (a warm-up: the first use of a library on a fresh event loop
can pay for lazy imports and per-loop state), then ``n`` times (``unroll`` copies per
loop turn, to amortise the ``for``), then the teardown runs. The function is ``async``
when the case runs on an event loop (``asyncio``, ``trio``), and each batch gets a fresh
loop; only the loop over the statement is timed, never the loop's start-up or the setup.

A *macro case* is a plain function ``fn(scale) -> seconds`` that does its own setup
and times only the operation of interest (one event-loop run per call).

Every batch of every case of a row is run in turn, ``repeats`` times, with the order
rotated each turn, so that the peers and tether see the same machine noise; the figure
reported is the minimum over the repeats (the least-disturbed run), with the median
beside it. The garbage collector is left on, as users run it (``timeit`` switches it
off): a cycle that only the collector can free is a real cost. A full collection runs
before every batch so that one case does not pay for another's garbage.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Case", "Macro", "Result", "measure_macro", "measure_micro"]

_TIMER = time.perf_counter

_TEMPLATE = """\
{kw}def _bench(_n, _timer):
{setup}
{warmup}
    _t0 = _timer()
    for _i in range(_n):
{stmt}
    _t1 = _timer()
{teardown}
    return _t1 - _t0
"""


@dataclass
class Result:
    """What one case measured: seconds per operation (or per run, for macro cases)."""

    impl: str  # "tether", "cantok", "asyncio", "anyio", "trio", "python", ...
    label: str  # what exactly was timed
    values: list[float] = field(default_factory=list)
    primary: bool = False  # the tether line that the row's target is checked on
    reference: bool = False  # a reference point, not a peer: excluded from "best peer"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def best(self) -> float:
        return min(self.values)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def as_json(self) -> dict[str, Any]:
        return {
            "impl": self.impl,
            "label": self.label,
            "min": self.best,
            "median": self.median,
            "values": self.values,
            "primary": self.primary,
            "reference": self.reference,
            **({"extra": self.extra} if self.extra else {}),
        }


@dataclass
class Case:
    """A statement timed per operation, timeit-style (see the module docstring).

    ``compile`` returns ``run(n)``: the seconds taken by ``n`` turns of the loop, that is
    ``n * unroll`` executions of the statement.
    """

    impl: str
    label: str
    stmt: str
    setup: str = ""
    teardown: str = ""
    runner: str = "sync"  # "sync" | "asyncio" (anyio runs on it too) | "trio"
    unroll: int = 1
    primary: bool = False
    reference: bool = False

    def compile(self, namespace: dict[str, Any]) -> Callable[[int], float]:
        kw = "" if self.runner == "sync" else "async "
        stmt = textwrap.dedent(self.stmt).strip()
        src = _TEMPLATE.format(
            kw=kw,
            warmup=textwrap.indent(stmt, " " * 4),
            setup=textwrap.indent(textwrap.dedent(self.setup).strip() or "pass", " " * 4),
            stmt=textwrap.indent("\n".join([stmt] * self.unroll), " " * 8),
            teardown=textwrap.indent(textwrap.dedent(self.teardown).strip() or "pass", " " * 4),
        )
        ns = dict(namespace)
        exec(compile(src, f"<bench {self.impl}: {self.label}>", "exec"), ns)
        fn = ns["_bench"]
        if self.runner == "sync":
            return lambda n: fn(n, _TIMER)
        if self.runner == "asyncio":
            return lambda n: asyncio.run(fn(n, _TIMER))
        if self.runner == "trio":
            import trio

            return lambda n: trio.run(fn, n, _TIMER)
        raise ValueError(f"unknown runner {self.runner!r}")


@dataclass
class Macro:
    """A whole-operation benchmark: ``fn()`` sets up, times the operation, returns seconds."""

    impl: str
    label: str
    fn: Callable[[], float]
    primary: bool = False
    reference: bool = False


def _batch(run: Callable[[int], float], n: int) -> float:
    gc.collect()
    return run(n)


def _calibrate(run: Callable[[int], float], target: float) -> int:
    """The smallest loop count (1, 2, 5 x 10^k) whose batch takes >= ``target`` seconds."""
    n = 1
    while True:
        for m in (1, 2, 5):
            k = n * m
            if _batch(run, k) >= target or k >= 10_000_000:
                return k
        n *= 10


def measure_micro(
    cases: list[Case], namespace: dict[str, Any], *, repeats: int, batch_seconds: float
) -> list[Result]:
    """Time every case ``repeats`` times, interleaved; seconds per operation."""
    runs = [c.compile(namespace) for c in cases]
    counts = [_calibrate(r, batch_seconds) for r in runs]
    results = [Result(c.impl, c.label, primary=c.primary, reference=c.reference) for c in cases]
    order = list(range(len(cases)))
    for rep in range(repeats):
        k = rep % len(order)
        for i in order[k:] + order[:k]:
            ops = counts[i] * cases[i].unroll
            results[i].values.append(_batch(runs[i], counts[i]) / ops)
    for res, n, case in zip(results, counts, cases, strict=True):
        res.extra["loops"] = n * case.unroll
    return results


def measure_macro(cases: list[Macro], *, repeats: int) -> list[Result]:
    """Run every macro case ``repeats`` times, interleaved; seconds per run."""
    results = [Result(c.impl, c.label, primary=c.primary, reference=c.reference) for c in cases]
    order = list(range(len(cases)))
    for rep in range(repeats):
        k = rep % len(order)
        for i in order[k:] + order[:k]:
            gc.collect()
            results[i].values.append(cases[i].fn())
    return results
