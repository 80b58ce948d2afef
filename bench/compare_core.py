"""The core's hot paths, this tree against an earlier commit, in one run.

    python bench/compare_core.py --base REV [--repeats 7] [--observe]

Extracts ``src/`` of git revision ``REV`` into a temporary folder and times, in fresh
interpreters that alternate between the two trees (so both see the same machine):

- derive a cancellable child of a cancellable parent, cancel it;
- derive a child with a 60 s deadline, cancel it;
- ``err()`` on a live leaf at depth 10;
- cancel a root with 10,000 live children.

With ``--observe`` the current tree is also timed with an observer registered (the
``tether._observe`` hook that metrics and the live view use): "hook present, nothing
observing" against the base (no hook at all) and against an observing run.

Prints the median of the repeats for each side and the ratio current / base.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = r"""
import json, sys, timeit
import tether
observe = sys.argv[1] == "1"
if observe:
    from tether import _observe
    class Nop:
        def on_create(self, ctx, parent, kind): pass
        def on_end(self, ctx, reason): pass
    _observe.add_observer(Nop())
bg = tether.background()
parent, cancel_parent = tether.with_cancel(bg)
wc, wt = tether.with_cancel, tether.with_timeout
def derive_cancel():
    c, f = wc(parent)
    f()
def deadline_cancel():
    c, f = wt(parent, 60)
    f()
leaf = parent
cancels = []
for _ in range(10):
    leaf, f = wc(leaf)
    cancels.append(f)
err = leaf.err
def cancel_10k():
    root, f = wc(bg)
    fs = [wc(root)[1] for _ in range(10_000)]
    t = timeit.default_timer()
    f()
    dt = timeit.default_timer() - t
    for g in fs:
        g()
    return dt
out = {}
n = 20000
out["derive+cancel"] = min(timeit.repeat(derive_cancel, number=n, repeat=5)) / n
out["deadline derive+cancel"] = min(timeit.repeat(deadline_cancel, number=n, repeat=5)) / n
out["err() depth 10"] = min(timeit.repeat(err, number=200000, repeat=5)) / 200000
out["cancel 10k children"] = min(cancel_10k() for _ in range(5))
print(json.dumps(out))
"""


def extract(rev: str, dest: Path) -> Path:
    data = subprocess.run(
        ["git", "archive", rev, "src"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    return dest / "src"


def probe(src: Path, observe: bool) -> dict[str, float]:
    env = {"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"}
    p = subprocess.run(
        [sys.executable, "-c", PROBE, "1" if observe else "0"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(p.stdout)  # type: ignore[no-any-return]


def fmt(x: float) -> str:
    return f"{x * 1e9:8.0f} ns" if x < 1e-5 else f"{x * 1e3:8.3f} ms"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True, help="git revision to compare against")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--observe", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base_src = extract(args.base, Path(tmp))
        sides = {"base": (base_src, False), "current": (ROOT / "src", False)}
        if args.observe:
            sides["current+observer"] = (ROOT / "src", True)
        runs: dict[str, list[dict[str, float]]] = {k: [] for k in sides}
        for _ in range(args.repeats):
            for name, (src, obs) in sides.items():
                runs[name].append(probe(src, obs))
    rows = list(runs["base"][0])
    head = f"{'operation':26}" + "".join(f"{k:>20}" for k in sides) + "   current/base"
    print(f"base = {args.base}, medians of {args.repeats} alternating runs\n{head}")
    for row in rows:
        med = {k: statistics.median(r[row] for r in v) for k, v in runs.items()}
        line = f"{row:26}" + "".join(f"{fmt(med[k]):>20}" for k in sides)
        ratio = med["current"] / med["base"]
        extra = ""
        if args.observe:
            extra = f"   observed/current {med['current+observer'] / med['current']:.2f}x"
        print(f"{line}   {ratio:.2f}x{extra}")


if __name__ == "__main__":
    main()
