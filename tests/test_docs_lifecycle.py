"""docs/lifecycle.md: every ```python block runs in a fresh interpreter, as pasted."""

from __future__ import annotations

from pathlib import Path

import pytest

import docblocks

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "lifecycle.md"
BLOCKS = docblocks.blocks(DOC)


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
    proc = docblocks.run(code)
    for line in EXPECTED[i]:
        assert line in proc.stdout, proc.stdout
