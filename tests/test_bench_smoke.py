"""The benchmark runs: ``bench/run.py --quick`` exits 0 and reports every row.

No timing is asserted here (the machine is shared; figures belong in
docs/benchmarks.md): only that each row of the issue's Speed table, and the extra rows,
was measured for tether and at least one other implementation.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ROWS = [
    "R1",
    "R2",
    "R3a",
    "R3b",
    "R4a",
    "R4b",
    "R5a",
    "R5b",
    "R6a",
    "R6b",
    "R6c",
    "R6d",
    "R7",
    "X1",
    "X2",
    "X3",
    "X4a",
    "X4b",
]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_quick_runs_every_row(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    printed = {line.split()[0] for line in proc.stdout.splitlines() if line.strip()}
    assert set(ROWS) <= printed, sorted(set(ROWS) - printed)
    assert "Summary" in proc.stdout
    doc = json.loads(out.read_text())
    rows = {r["id"]: r for r in doc["rows"]}
    assert set(rows) == set(ROWS)
    for row_id, row in rows.items():
        impls = {r["impl"] for r in row["results"]}
        assert "tether" in impls, row_id
        assert len(impls) >= 2, row_id
        assert all(r["values"] and r["min"] >= 0 for r in row["results"]), row_id
    # one timer thread for all the deadlines, whatever their number
    assert rows["R6d"]["tether"] == 1
