"""docs/boundaries.md: every ```python block runs in a fresh interpreter, as pasted."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "boundaries.md"
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
BLOCKS = FENCE.findall(DOC.read_text())

SLOPPY = ("Exception ignored", "Task was destroyed", "ResourceWarning", "LostCancelWarning")

# The HTTP examples come first; sections appended later (gRPC) add their own entries.
EXPECTED = {
    0: [
        "250m 90S 1n",
        "0.25 None None",
        "['x-request-id', 'x-request-timeout']",
        "id: order-7 - budget under 2 s: True",
    ],
    1: [
        "203.0.113.9: budget 30 s, user None",
        "10.1.2.3: budget 3600 s, user admin",
        "now: 20.0",
        "tether: Policy.default_timeout (60.0) must not exceed max_timeout (20.0)",
    ],
    2: ["checkout-42 True", "504 checkout-42 within budget: True"],
    3: ["504 after about 200 ms: True"],
    4: ["cancelled: RuntimeError('the user left')", "deadline exceeded, not httpx.ReadTimeout"],
}


def test_the_guide_has_examples():
    assert len(BLOCKS) >= len(EXPECTED)


@pytest.mark.parametrize(
    ("i", "code"),
    list(enumerate(BLOCKS[: len(EXPECTED)])),
    ids=[f"{i}:{b.splitlines()[0][:30]}" for i, b in enumerate(BLOCKS[: len(EXPECTED)])],
)
def test_example_runs(i: int, code: str):
    proc = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error::ResourceWarning", "-c", code],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for bad in SLOPPY:
        assert bad not in proc.stderr, proc.stderr
    for line in EXPECTED[i]:
        assert line in proc.stdout, proc.stdout + proc.stderr
