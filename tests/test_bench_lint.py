"""bench/bench_lint.py --quick runs, reports both rows and the summary (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_lint_quick(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_lint.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Summary: L1 " in proc.stdout
    rows = {r["id"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"L1", "L2"}
    for r in rows.values():
        assert r["files"] == 10
        assert r["lines"] > 0
        assert r["lines_per_s"]["tether lint"] > 0
        assert r["lines_per_s"]["ast.parse"] > 0
