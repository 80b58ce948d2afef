"""tether's benchmark: every row of the Speed table of issue 2, against its peers.

    python bench/run.py [--quick] [--json out.json] [--only R1,R6a,...]

(``make bench`` runs it in the project's virtual environment.) tether, cantok, asyncio,
anyio (on asyncio) and trio run in this one process, interleaved, so that they see the
same machine; each row prints the absolute figures (the minimum over the repeats, with
the median beside it) and each line's ratio to the best peer (``1.00x`` marks that peer;
tether's line therefore reads "tether / best peer"). A summary table at the end checks
tether's figure against the issue's target. ``--quick`` shrinks every row (row 6 to
10,000 deadlines, with its targets scaled down to match) and finishes in well under a
minute; it is what the smoke test runs. The memory of row 6 is measured in a fresh
subprocess per implementation (``_mem.py``).

Line marks: ``*`` tether's line checked against the target, ``=`` the best peer, ``~`` a
reference point that is not a peer (not counted as best peer).

How each operation maps onto each peer is documented in ``_micro.py``, ``_macro.py`` and
``_deadlines.py``, and summarised in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import threading
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import _deadlines
import _macro
from _harness import Macro, Result, measure_macro, measure_micro
from _micro import NAMESPACE, micro_rows
from _report import Row, fmt, print_row, print_summary

HERE = Path(__file__).resolve().parent

ROWS: dict[str, dict[str, Any]] = {
    "R1": {
        "title": "derive a cancellable child, cancel it, observe it",
        "target": "<= 2.0 µs",
        "limit": 2.0e-6,
    },
    "R2": {
        "title": "derive a child with a 60 s deadline and cancel it",
        "target": "<= 2.5 µs",
        "limit": 2.5e-6,
    },
    "R3a": {"title": "err() on a live leaf at depth 10", "target": "<= 50 ns", "limit": 50e-9},
    "R3b": {"title": "err() on a live leaf at depth 100", "target": "<= 50 ns", "limit": 50e-9},
    "R4a": {"title": "value(key) at depth 10", "target": "<= 100 ns", "limit": 100e-9},
    "R4b": {"title": "value(key) at depth 100", "target": "<= 150 ns", "limit": 150e-9},
    "R5a": {
        "title": "cancel a root with 10,000 live children (and observe each)",
        "target": "<= 10 ms",
        "limit": 10e-3,
    },
    "R5b": {"title": "cancel a root whose 10,000 children each have a waiting task"},
    "R6a": {"title": "{n} live distinct deadlines: create", "target": "<= 0.4 s", "limit": 0.4},
    "R6b": {
        "title": "{n} live distinct deadlines: cancel all",
        "target": "<= 0.15 s",
        "limit": 0.15,
        "note": "cantok arms no timer (each poll compares the clock): its cancel is a flag store",
    },
    "R6c": {
        "title": "{n} live distinct deadlines: memory (RSS growth, fresh process)",
        "target": "<= 60 MB",
        "limit": 60e6,
        "unit": "B",
    },
    "R6d": {
        "title": "{n} live distinct deadlines: extra OS threads",
        "target": "exactly 1 (the timer)",
        "limit": 1,
        "exact": True,
        "unit": "n",
    },
    "R7": {
        "title": "10,000 tasks, each a 50 ms timeout around await sleep(10): wall time",
        "target": "<= 1.2x asyncio.timeout",
        "ratio_limit": 1.2,
        "ratio_to": "asyncio",
    },
    "X1": {"title": "ctx.check() on a live context (extra)"},
    "X2": {"title": "ctx.done().is_set() on a live context (extra)"},
    "X3": {"title": "a `with` block with a 60 s timeout: enter + exit (extra)"},
    "X4a": {"title": "wake-up latency of an awaiting task, cancelled from a thread (extra)"},
    "X4b": {"title": "wake-up latency of a waiting thread, cancelled from a thread (extra)"},
}

FULL = {
    "batch": 0.05,
    "repeats": 15,
    "children": 10_000,
    "r5a_repeats": 15,
    "r5b_repeats": 7,
    "deadlines": 100_000,
    "r6_repeats": 3,
    "tasks": 10_000,
    "r7_repeats": 9,
    "trials": 200,
    "latency_repeats": 7,
}
QUICK = {
    "batch": 0.01,
    "repeats": 3,
    "children": 10_000,
    "r5a_repeats": 3,
    "r5b_repeats": 2,
    "deadlines": 10_000,
    "r6_repeats": 2,
    "tasks": 10_000,
    "r7_repeats": 2,
    "trials": 30,
    "latency_repeats": 2,
}


def make_row(row_id: str, results: list[Result], scale: float = 1.0, n: int = 0) -> Row:
    spec = dict(ROWS[row_id])
    spec["title"] = spec["title"].format(n=f"{n:,}")
    if scale != 1.0 and spec.get("limit") is not None and not spec.get("exact"):
        spec["limit"] *= scale
        spec["target"] += f" x {scale:g} = {fmt(spec['limit'], spec.get('unit', 's'))}"
        quick = f"--quick: {n:,} deadlines, the target scaled to match"
        spec["note"] = f"{spec['note']}; {quick}" if spec.get("note") else quick
    return Row(row_id, results=results, **spec)


def _git(src: Path) -> str:
    """The commit tether was imported from, "+dirty" if its sources differ from it."""

    def run(*args: str) -> str:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, cwd=src, timeout=10, check=False
        ).stdout.strip()

    try:
        rev = run("rev-parse", "--short", "HEAD")
        dirty = run("status", "--porcelain", "--untracked-files=no", "--", ".")
    except (OSError, subprocess.SubprocessError):
        return ""
    return rev + ("+dirty" if rev and dirty else "")


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import tether

    src = Path(tether.__file__).resolve().parent
    git = _git(src)
    return {
        "tether_source": str(src),
        "git": git or "not a git checkout",
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "versions": {p: version(p) for p in ("tether", "cantok", "anyio", "trio")},
    }


class _Threads:
    """Row 6 timing pass hooks: note the threads alive once everything is live."""

    def __init__(self) -> None:
        self.timer_threads = 0

    def start(self) -> None:
        pass

    def live(self) -> None:
        self.timer_threads = sum(t.name == "tether-timer" for t in threading.enumerate())


def deadline_rows(n: int, repeats: int, scale: float) -> list[Row]:
    names = list(_deadlines.IMPLS)
    create = {k: Result(k.split("-")[0], _deadlines.LABELS[k]) for k in names}
    cancel = {k: Result(k.split("-")[0], _deadlines.LABELS[k]) for k in names}
    for k in names:
        ref = _deadlines.IMPLS[k][2]
        create[k].reference = cancel[k].reference = ref
        create[k].primary = cancel[k].primary = k == "tether"
    for rep in range(repeats):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for k in order:
            gc.collect()
            hooks = _Threads()
            c, x = _deadlines.IMPLS[k][0](n, hooks)
            create[k].values.append(c)
            cancel[k].values.append(x)
            if k == "tether":
                create[k].extra["timer_threads"] = hooks.timer_threads
    rows = [
        make_row("R6a", list(create.values()), scale, n),
        make_row("R6b", list(cancel.values()), scale, n),
    ]
    mem: list[Result] = []
    threads: list[Result] = []
    for k in names:
        proc = subprocess.run(
            [sys.executable, str(HERE / "_mem.py"), k, str(n)],
            capture_output=True,
            text=True,
            check=True,
            cwd=HERE,
        )
        out = json.loads(proc.stdout)
        impl, label, ref = k.split("-")[0], _deadlines.LABELS[k], _deadlines.IMPLS[k][2]
        mem.append(Result(impl, label, [out["rss_growth"]], k == "tether", ref, out))
        threads.append(Result(impl, label, [out["extra_threads"]], k == "tether", ref, out))
    rows.append(make_row("R6c", mem, scale, n))
    row = make_row("R6d", threads, 1.0, n)
    tether_out = threads[0].extra
    if tether_out.get("timer_threads") != 1:
        row.note = f"tether-timer threads alive: {tether_out.get('timer_threads')}"
        row.limit = -1  # not met: the extra thread is not the timer
    rows.append(row)
    return rows


def macro_row(row_id: str, cases: list[Macro], repeats: int) -> Row:
    return make_row(row_id, measure_macro(cases, repeats=repeats))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, < 60 s (smoke test)")
    ap.add_argument("--json", metavar="FILE", help="also write every figure as JSON")
    ap.add_argument("--only", metavar="IDS", help="comma-separated row ids (e.g. R1,R6a)")
    args = ap.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    only = set(args.only.split(",")) if args.only else None

    def wanted(*ids: str) -> bool:
        return only is None or any(i in only for i in ids)

    info = machine()
    t_start = time.perf_counter()
    print(
        f"tether bench ({'quick' if args.quick else 'full'}): Python {info['python']} "
        f"on {info['cpu'] or platform.machine()}, {info['cpus']} CPUs, "
        f"load {info['loadavg'][0]:.2f}"
    )
    print("  " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    print(f"  tether from {info['tether_source']} ({info['git']})")
    print("  figures: min over repeats (median in parentheses); ratio = line / best peer\n")

    rows: list[Row] = []

    def emit(row: Row) -> None:
        rows.append(row)
        print_row(row)
        sys.stdout.flush()

    for row_id, cases in micro_rows():
        if row_id.startswith("X") or not wanted(row_id):
            continue
        results = measure_micro(
            cases, NAMESPACE, repeats=cfg["repeats"], batch_seconds=cfg["batch"]
        )
        emit(make_row(row_id, results))

    n = cfg["children"]
    if wanted("R5a"):
        emit(macro_row("R5a", _macro.cancel_root_sync(n), cfg["r5a_repeats"]))
    if wanted("R5b"):
        emit(macro_row("R5b", _macro.cancel_root_async(n), cfg["r5b_repeats"]))
    if wanted("R6a", "R6b", "R6c", "R6d"):
        nd = cfg["deadlines"]
        for row in deadline_rows(nd, cfg["r6_repeats"], nd / 100_000):
            emit(row)
    if wanted("R7"):
        emit(macro_row("R7", _macro.timeouts_10k(cfg["tasks"]), cfg["r7_repeats"]))

    for row_id, cases in micro_rows():
        if row_id.startswith("X") and wanted(row_id):
            results = measure_micro(
                cases, NAMESPACE, repeats=cfg["repeats"], batch_seconds=cfg["batch"]
            )
            emit(make_row(row_id, results))
    for row_id, macros in _macro.latency(cfg["trials"]):
        if wanted(row_id):
            emit(macro_row(row_id, macros, cfg["latency_repeats"]))

    print_summary(rows)
    elapsed = time.perf_counter() - t_start
    info["loadavg_end"] = os.getloadavg()
    print(f"\n{len(rows)} rows in {elapsed:.1f} s; load at the end {info['loadavg_end'][0]:.2f}")
    if args.json:
        doc = {
            "command": "python bench/run.py" + (" --quick" if args.quick else ""),
            "quick": args.quick,
            "config": cfg,
            "machine": info,
            "elapsed": elapsed,
            "rows": [r.as_json() for r in rows],
        }
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
