"""bench/bench_aio.py --quick runs and reports every row of issue 7 against asyncio.timeout
(no timing is asserted here: the figures belong in docs/benchmarks.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_bench_aio_quick_reports_every_row(tmp_path: Path) -> None:
    out = tmp_path / "aio.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_aio.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert set(rows) == {"a", "a0", "b", "e", "f", "g", "g-wall", "h"}
    for row in rows.values():
        assert row["tether"] > 0
        assert row["asyncio"] > 0
        assert row["ratio"] == pytest.approx(row["tether"] / row["asyncio"])
    for impl in ("tether", "asyncio"):
        lat = rows["g"]["lateness"][impl]
        assert 0 <= lat["median"] <= lat["p99"] <= lat["max"]
