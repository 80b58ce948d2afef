"""bench/bench_consumer.py --quick runs against the local Redis and reports every row
(no timing asserted: speed targets live in the benchmark, not in unit tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import require_service

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_consumer_quick(tmp_path: Path) -> None:
    require_service("127.0.0.1", 6379, "Redis")
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_consumer.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Summary" in proc.stdout
    rows = {r["id"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"Q1", "Q2", "Q3", "Q4"}
    for r in rows.values():
        assert r["tether"] > 0
        assert r["peer"] > 0
        assert r["ratio"] > 0
