"""Observability overhead: derive+cancel with nothing, Prometheus, tether.debug.

Run: ``python bench/bench_observe.py [--quick] [--baseline REV] [--json PATH]``

Rows (issue 11's speed targets):

- O1  ``c, cancel = with_cancel(parent); cancel()`` under a cancellable parent
- O2  ``with with_timeout(parent, 60): pass`` (arms and disarms a timer too)

Modes, each measured in its own fresh interpreter (one process per measurement, the
modes rotated round after round so that they share the machine's noise; the figure is
the best round, the median beside it):

- ``none``        the hook present, nothing observing (the default);
- ``prometheus``  ``tether.integrations.prometheus.instrument()``    target <= 2x none
- ``debug``       ``tether.debug.enable()``                          target <= 3x none
- ``both``        both at once                                       (no target)
- ``no-hook``     with ``--baseline REV``: the same ``none`` case on ``src/tether`` of
                  git revision REV (e.g. the commit before the core's observer hook),
                  to show what the hook costs when nothing observes   target <= 1.03x
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"

CHILD = r"""
import gc, sys, time
mode, row, n, batches = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
import tether
if mode in ("prometheus", "both"):
    from prometheus_client import CollectorRegistry
    from tether.integrations import prometheus
    prometheus.instrument(CollectorRegistry())
if mode in ("debug", "both"):
    from tether import debug
    debug.enable(limit=100_000)
parent, cancel_parent = tether.with_cancel(tether.background())
with_cancel, with_timeout = tether.with_cancel, tether.with_timeout

def o1(n):
    t0 = time.perf_counter()
    for _ in range(n):
        c, cancel = with_cancel(parent); cancel()
    return time.perf_counter() - t0

def o2(n):
    t0 = time.perf_counter()
    for _ in range(n):
        with with_timeout(parent, 60):
            pass
    return time.perf_counter() - t0

fn = o1 if row == "O1" else o2
fn(n // 10 + 1)  # warm-up
best = float("inf")
for _ in range(batches):
    gc.collect()
    best = min(best, fn(n) / n)
print(best)
cancel_parent()
"""

TARGETS = {"prometheus": 2.0, "debug": 3.0, "no-hook": None}


def baseline_tree(rev: str, into: Path) -> Path:
    """``src/tether`` of git revision ``rev``, extracted under ``into``."""
    archive = into / "baseline.tar"
    subprocess.run(
        ["git", "archive", "--format=tar", "-o", str(archive), rev, "src/tether"],
        cwd=ROOT,
        check=True,
    )
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def measure(src: Path, mode: str, row: str, n: int, batches: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, row, str(n), str(batches)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run: few, short rounds")
    ap.add_argument("--baseline", metavar="REV", help="also time src/tether of git REV")
    ap.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    args = ap.parse_args()
    n, batches, rounds = (2_000, 2, 1) if args.quick else (50_000, 5, 5)

    modes = ["none", "prometheus", "debug", "both"]
    trees = dict.fromkeys(modes, SRC)
    with tempfile.TemporaryDirectory() as tmp:
        if args.baseline:
            trees["no-hook"] = baseline_tree(args.baseline, Path(tmp))
            modes.append("no-hook")
        results: dict[str, dict[str, list[float]]] = {
            r: {m: [] for m in modes} for r in ("O1", "O2")
        }
        for i in range(rounds):
            order = modes[i % len(modes) :] + modes[: i % len(modes)]
            for row in results:
                for m in order:
                    mode = "none" if m == "no-hook" else m
                    results[row][m].append(measure(trees[m], mode, row, n, batches))

    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cpus")
    print(f"{n} operations x {batches} batches per process, {rounds} rounds; best (median)")
    labels = {
        "O1": "with_cancel(parent) + cancel()",
        "O2": "with with_timeout(parent, 60): pass",
    }
    rows = []
    ok = True
    for row, per_mode in results.items():
        base = min(per_mode["none"])
        print(f"\n{row}  {labels[row]}")
        for m, vals in per_mode.items():
            best, med = min(vals), statistics.median(vals)
            ratio = best / base
            target = TARGETS.get(m)
            if m == "no-hook":  # the hook's cost: none over no-hook
                ratio = base / best
                target = 1.03
                verdict = "ok" if ratio <= target else "over"
                note = f"none / no-hook = {ratio:.3f}x (target <= {target}x): {verdict}"
            elif target is not None:
                verdict = "ok" if ratio <= target else "over"
                note = f"{ratio:.2f}x none (target <= {target}x): {verdict}"
            else:
                note = f"{ratio:.2f}x none"
            if target is not None and ratio > target:
                ok = False
            print(f"  {m:<11} {best * 1e9:8.0f} ns  ({med * 1e9:.0f})  {note}")
            rows.append({"row": row, "mode": m, "best": best, "median": med, "ratio": ratio})
    print("\nSummary:", "all targets met" if ok else "some targets missed (see 'over')")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "n": n, "rounds": rounds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
