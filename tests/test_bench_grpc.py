"""bench/bench_grpc.py --quick runs and reports every row (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ROWS = {"G1", "G1n", "G1m", "G1t", "G2", "G2n", "G2m", "G2t", "G3"}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_grpc_quick(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_grpc.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Summary" in proc.stdout
    printed = {line.split()[0] for line in proc.stdout.splitlines() if line[:1] == "G"}
    assert printed == ROWS | {"G4s", "G4a"}
    rows = {r["id"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == ROWS
    for r in rows.values():
        assert r["tether"] > 0
        assert r["peer"] > 0
        assert r["ratio"] > 0
    lat = json.loads(out.read_text())["cancel_latency_ms"]
    assert set(lat) == {"sync", "aio"}
    for v in lat.values():
        assert 0 < v["p50"] <= v["p99"] <= v["max"]
