"""bench/bench_boundaries.py --quick runs and reports every row (no timing asserted)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_boundaries_quick(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    script = ROOT / "bench" / "bench_boundaries.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Summary" in proc.stdout
    rows = {r["id"]: r for r in json.loads(out.read_text())["rows"]}
    want = {"B1", "B2", "B3m", "B4"} | ({"B3"} if shutil.which("wrk") else set())
    assert set(rows) == want
    for r in rows.values():
        assert r["tether"] > 0
    if "B3" in rows:
        assert rows["B3"]["bare"] > 0
        assert rows["B3"]["peer"] > 0
    assert rows["B4"]["trials"] == 20
    assert 0 < rows["B4"]["p50"] <= rows["B4"]["p99"]
