"""docs/boundaries.md: every ```python block runs in a fresh interpreter, as pasted."""

from __future__ import annotations

from pathlib import Path

import pytest

import docblocks

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "boundaries.md"
BLOCKS = docblocks.blocks(DOC)


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
    proc = docblocks.run(code, timeout=90)
    for line in EXPECTED[i]:
        assert line in proc.stdout, proc.stdout + proc.stderr
