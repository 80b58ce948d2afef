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


@pytest.mark.slow
@pytest.mark.timeout(200)
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="B3i needs valgrind")
def test_b3i_counts_a_real_server_under_callgrind(tmp_path: Path) -> None:
    """B3i's measuring step: a real uvicorn under callgrind answers every request it is
    sent (``_send_requests`` raises on a missing or wrong answer), and the total is read
    from callgrind's output."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import bench_boundaries as b
    finally:
        sys.path.remove(str(ROOT / "bench"))
    total = b._callgrind_server("tether", [(b._REQ_BUDGET, 5), (b._REQ_PLAIN, 5)], tmp_path)
    assert total > 10_000_000  # at least a Python process that started uvicorn
