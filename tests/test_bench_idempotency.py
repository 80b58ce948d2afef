"""bench/bench_idempotency.py --quick runs and reports every row (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_idempotency_quick(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "bench_idempotency.py"),
            "--quick",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Summary:" in proc.stdout
    rows = {r["id"]: r for r in json.loads(out.read_text())["rows"]}
    assert {"H-bare", "H-sqlite", "A-bare", "A-sqlite"} <= set(rows)
    for r in rows.values():
        assert r["p50"] > 0
        assert r["n"] == 200
    assert rows["H-sqlite"]["target_ms"] == 1.0
