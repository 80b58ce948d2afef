"""docs/consumers.md: every ```python block runs in a fresh interpreter, as pasted,
against the Redis and NATS servers on localhost."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import require_service

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "consumers.md"
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
BLOCKS = FENCE.findall(DOC.read_text())

SLOPPY = ("Exception ignored", "Task was destroyed", "ResourceWarning", "LostCancelWarning")

EXPECTED = {
    0: [
        "charged: ['o-0', 'o-1', 'o-2', 'o-3', 'o-4'] - request ids: True",
        "acked: 5 - still pending: 0",
        "exit code 0",
    ],
    1: [
        "calls: {'ok': 1, 'flaky': 3, 'bad': 1}",
        "acked 2, dead-lettered 1, retries 2",
        "dead letter: bad ValueError('no such product')",
    ],
    2: ["handled (n, deliveries): [('0', 2), ('1', 2), ('2', 1)]", "pending: 0"],
    3: ["building report q3 - delivery 1", "acked 1; redelivered 0"],
}


def test_the_guide_has_examples():
    assert len(BLOCKS) == len(EXPECTED)


@pytest.mark.parametrize(
    ("i", "code"),
    list(enumerate(BLOCKS)),
    ids=[f"{i}:{b.splitlines()[0][:30]}" for i, b in enumerate(BLOCKS)],
)
def test_example_runs(i: int, code: str):
    if "nats" in code:
        require_service("127.0.0.1", 4222, "NATS (JetStream)")
    if "redis" in code:
        require_service("127.0.0.1", 6379, "Redis")
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
        assert line in proc.stdout, proc.stdout + proc.stderr
