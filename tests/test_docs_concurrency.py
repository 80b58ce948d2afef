"""docs/concurrency.md: every ```python block runs in a fresh interpreter, as pasted."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "concurrency.md"
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
BLOCKS = FENCE.findall(DOC.read_text())


def test_the_guide_has_examples():
    assert len(BLOCKS) >= 8


def test_the_guide_has_measured_figures():
    text = DOC.read_text()
    assert "PLACEHOLDER" not in text
    assert "bench/bench_concurrency.py" in text


@pytest.mark.parametrize(
    "code", BLOCKS, ids=[f"{i}:{b.splitlines()[0][:30]}" for i, b in enumerate(BLOCKS)]
)
def test_example_runs(code: str):
    if "tenacity" in code and importlib.util.find_spec("tenacity") is None:
        pytest.skip("tenacity is not installed (pip install 'tether[tenacity]')")
    proc = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error::ResourceWarning", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout.strip(), "an example should show what it did"
