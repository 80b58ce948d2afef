"""The README's examples run, each in a fresh interpreter, as a user would paste them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def blocks(path: Path) -> list[str]:
    return FENCE.findall(path.read_text())


README_BLOCKS = blocks(ROOT / "README.md")


def test_readme_has_examples():
    assert len(README_BLOCKS) >= 2


@pytest.mark.parametrize("code", README_BLOCKS, ids=lambda c: c.splitlines()[0][:40])
def test_readme_example_runs(code: str):
    proc = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error::ResourceWarning", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr


def test_first_example_output():
    proc = subprocess.run(
        [sys.executable, "-c", README_BLOCKS[0]], capture_output=True, text=True, timeout=60
    )
    assert proc.stdout.strip() == "gave up after 100 ms: context deadline exceeded"


def test_demo_runs_and_reports_every_worker():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for who in ("inventory", "pricing", "payments", "recommendations", "audit", "answers 504"):
        assert who in out, out
