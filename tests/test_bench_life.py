"""bench/bench_life.py --quick runs and reports every row against its peers (no timing
is asserted here: the figures belong in docs/benchmarks.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_bench_life_quick_reports_every_row():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_life.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line for line in proc.stdout.splitlines()[1:]}
    assert set(rows) == {"L1", "L2", "L3", "L4"}
    for line in rows.values():
        assert "x)" in line  # a ratio to a peer measured in the same run
