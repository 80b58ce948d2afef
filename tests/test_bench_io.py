"""bench/bench_io.py --quick runs and reports its sqlite3 rows (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_io_quick(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_io.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Summary" in proc.stdout
    rows = {r["id"]: r for r in json.loads(out.read_text())["rows"]}
    assert {"S1", "S2", "S3"} <= set(rows)
    for r in rows.values():
        assert r["bare_us"] > 0
        assert r["bound_us"] > 0
    assert rows["S1"]["target_us"] == 10.0
