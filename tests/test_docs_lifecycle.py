"""docs/lifecycle.md: every ```python block runs in a fresh interpreter, as pasted."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "lifecycle.md"
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
BLOCKS = FENCE.findall(DOC.read_text())

# Logged errors print their traceback on stderr (two examples show a failure on
# purpose); these would mean the example itself is sloppy.
SLOPPY = ("Exception ignored", "Task was destroyed", "ResourceWarning", "LostCancelWarning")

EXPECTED = {
    0: ["cause: received SIGTERM", "previous handler restored: True"],
    1: ["interrupted by SIGUSR1"],
    2: ["consumer: stopping, received SIGTERM", "database: closed", "exit code 0"],
    3: ["api stopping because: component 'broker' failed", "exit code 1"],
    4: ["server: drained", "client got: 200 OK", "exit code 0"],
    5: ["pool: shipped 42", "client got: 200 ordered; ready=False", "exit code 0"],
    6: ["3 runs, 1 failed, 3 distinct request ids"],
    7: ["shed 11", "accepted 11: 8 done, 2 cancelled, 1 dropped"],
    8: ["request: done, its context: context canceled\naudit: alice login; its context live: True"],
    9: ["audit written", "exit code 0 - detached: 1 done"],
    10: [
        "with after_func: [('order-1', 'cancelled')], run() returned",
        "ignoring ctx: [('order-1', 'abandoned')], run() returned 2.",
    ],
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
