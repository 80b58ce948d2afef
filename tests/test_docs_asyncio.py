"""docs/asyncio.md: every ```python block runs in a fresh interpreter, as pasted."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "asyncio.md"
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
BLOCKS = FENCE.findall(DOC.read_text())

SLOPPY = ("Exception ignored", "Task was destroyed", "ResourceWarning", "LostCancelWarning")

EXPECTED = {
    0: ["never early: True"],
    1: ["fallback served; still cancelling: 0", "result: cached"],
    2: ["shutdown passed through as CancelledError"],
}


def test_the_guide_has_examples():
    assert len(BLOCKS) == len(EXPECTED)


@pytest.mark.parametrize(
    ("i", "code"),
    list(enumerate(BLOCKS)),
    ids=[f"{i}:{b.splitlines()[0][:30]}" for i, b in enumerate(BLOCKS)],
)
def test_example_runs(i: int, code: str):
    proc = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error::ResourceWarning", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for bad in SLOPPY:
        assert bad not in proc.stderr, proc.stderr
    for line in EXPECTED[i]:
        assert line in proc.stdout, proc.stdout
