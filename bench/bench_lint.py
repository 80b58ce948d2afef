"""tether lint speed: lines per second on one core, against peers in the same run.

Run: ``python bench/bench_lint.py [--quick] [--json PATH]``

The sources are read into memory first (no disk time is measured), then each tool checks
all of them, interleaved, ``--repeat`` times; the best run is reported with the median.
The process is pinned to one CPU. Rows:

- L1  the stdlib's ``asyncio`` and ``email`` packages (a large code base that does not
      use tether: parse + one walk)                        target >= 20,000 lines/s
- L2  tether's own ``tests/`` (context-heavy: every derive goes through the TTH002
      path analysis)                                                      (no target)

Peers on the same sources: ``ast.parse`` alone (the floor any AST checker pays) and
pyflakes (flake8's default checker; skipped if not installed). Ratios are tether's
lines/s over the peer's.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from tether.lint import check_source, iter_python_files  # noqa: E402

STDLIB = Path(ast.__file__).parent


def load(paths: list[Path]) -> list[tuple[str, str]]:
    out = []
    for f in iter_python_files([str(p) for p in paths]):
        try:
            out.append((f, Path(f).read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError):
            continue
    return out


def tool_tether(files: list[tuple[str, str]]) -> None:
    for path, src in files:
        check_source(src, path, module="")


def tool_parse(files: list[tuple[str, str]]) -> None:
    for path, src in files:
        ast.parse(src, path)


def make_pyflakes() -> Callable[[list[tuple[str, str]]], None] | None:
    try:
        from pyflakes import checker
    except ImportError:
        return None

    def run(files: list[tuple[str, str]]) -> None:
        for path, src in files:
            checker.Checker(ast.parse(src, path), filename=path)

    return run


def measure(
    tools: dict[str, Callable[[list[tuple[str, str]]], None]],
    files: list[tuple[str, str]],
    repeat: int,
) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in tools}
    for _ in range(repeat):
        for name, fn in tools.items():  # interleaved: drift hits every tool alike
            t0 = time.perf_counter()
            fn(files)
            times[name].append(time.perf_counter() - t0)
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one small run (a smoke test)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    repeat = 1 if args.quick else args.repeat
    corpora = {
        "L1": ("stdlib asyncio + email", [STDLIB / "asyncio", STDLIB / "email"]),
        "L2": ("tether tests/", [ROOT / "tests"]),
    }
    tools: dict[str, Callable[[list[tuple[str, str]]], None]] = {
        "tether lint": tool_tether,
        "ast.parse": tool_parse,
    }
    pyflakes = make_pyflakes()
    if pyflakes is not None:
        tools["pyflakes"] = pyflakes
    print(f"Python {platform.python_version()} on {platform.machine()}, one core, best of {repeat}")
    rows = []
    for rid, (label, paths) in corpora.items():
        files = load(paths)
        if args.quick:
            files = files[:10]
        lines = sum(src.count("\n") + 1 for _, src in files)
        times = measure(tools, files, repeat)
        best = {name: lines / min(ts) for name, ts in times.items()}
        med = {name: lines / statistics.median(ts) for name, ts in times.items()}
        print(f"{rid}  {label}: {len(files)} files, {lines:,} lines")
        for name in tools:
            ratio = best["tether lint"] / best[name]
            print(
                f"    {name:<12} {best[name]:>12,.0f} lines/s (median {med[name]:,.0f})"
                + ("" if name == "tether lint" else f"   tether/{name} = {ratio:.2f}x")
            )
        rows.append(
            {
                "id": rid,
                "corpus": label,
                "files": len(files),
                "lines": lines,
                "lines_per_s": best,
                "median_lines_per_s": med,
            }
        )
    l1 = rows[0]["lines_per_s"]["tether lint"]
    verdict = "met" if l1 >= 20_000 else "NOT met"
    print(f"Summary: L1 {l1:,.0f} lines/s on one core, target >= 20,000: {verdict}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
