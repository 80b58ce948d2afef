"""bench/bench_concurrency.py --quick runs and reports every row (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ROWS = {"C1", "C2", "C2s", "C3", "C3s", "C4", "C5"}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_concurrency_quick(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    script = ROOT / "bench" / "bench_concurrency.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Summary" in proc.stdout
    printed = {line.split()[0] for line in proc.stdout.splitlines() if line[:1] == "C"}
    assert printed >= ROWS, sorted(ROWS - printed)
    rows = {r["id"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == ROWS
    for r in rows.values():
        assert r["tether"] > 0
        assert r["peer"] > 0
        assert r["ratio"] > 0
