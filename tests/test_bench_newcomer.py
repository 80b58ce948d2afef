"""bench/bench_newcomer.py --quick runs and reports every row against its peer (no
timing is asserted: figures go in docs/benchmarks.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_newcomer_quick_reports_every_row():
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_newcomer.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    rows = [line.split()[0] for line in out.stdout.splitlines() if line.strip()]
    assert rows == ["N1", "N2", "N3", "N3s", "N4", "N5"]
    assert all(line.rstrip().endswith("x") for line in out.stdout.splitlines() if line.strip())
