"""bench/aio_census.py counts what one open scope keeps alive, for tether and asyncio.timeout
(the figures belong in docs/benchmarks.md; here: it runs and its counts add up)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_census_counts_each_scope_kind(tmp_path: Path) -> None:
    out = tmp_path / "census.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "aio_census.py"),
            "--tasks",
            "300",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert set(rows) == {"chain", "deadline", "asyncio"}
    for r in rows.values():
        assert r["tracked"] >= 1
        assert r["bytes"] > 0
        # the types listed are the tracked objects counted (each at least one per two tasks)
        assert sum(r["types"].values()) == pytest.approx(r["tracked"], abs=0.5)
    # each side's own objects are seen: tether's cancel function, asyncio's Timeout
    assert rows["chain"]["types"].get("CancelFunc") == pytest.approx(1.0, abs=0.05)
    assert rows["deadline"]["types"].get("CancelFunc") == pytest.approx(1.0, abs=0.05)
    assert rows["asyncio"]["types"].get("Timeout") == pytest.approx(1.0, abs=0.05)
