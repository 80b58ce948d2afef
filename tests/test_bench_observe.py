"""bench/bench_observe.py --quick runs every row and mode, against a baseline revision too
(no timing asserted: speed targets live in bench/, not in unit tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_observe_quick(tmp_path: Path) -> None:
    pytest.importorskip("prometheus_client")
    out = tmp_path / "bench.json"
    have_git = (
        subprocess.run(
            ["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=ROOT, capture_output=True
        ).returncode
        == 0
    )
    args = ["--baseline", "HEAD"] if have_git else []
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "bench_observe.py"),
            "--quick",
            "--json",
            str(out),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Summary:" in proc.stdout
    rows = json.loads(out.read_text())["rows"]
    modes = {"none", "prometheus", "debug", "both"} | ({"no-hook"} if have_git else set())
    assert {(r["row"], r["mode"]) for r in rows} == {(o, m) for o in ("O1", "O2") for m in modes}
    for r in rows:
        assert r["best"] > 0
        assert r["ratio"] > 0
