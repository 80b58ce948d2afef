"""docs/boundaries-grpc.md: every ```python block runs in a fresh interpreter, as pasted."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import docblocks

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "boundaries-grpc.md"
BLOCKS = docblocks.blocks(DOC)


# What each example must print (the doc shows the same lines after each block).
EXPECTED = {
    0: [r"middle: 4\d\d ms left\nleaf: 4\d\d ms left, request order-42"],
    1: [
        r"caller: Canceled: context canceled",
        r"handler: context canceled, because the gRPC client cancelled the call",
    ],
    2: [
        r"handler interrupted: context deadline exceeded",
        # up to 2 s on a busy machine
        r"caller: context deadline exceeded after (0\.(2[5-9]|[3-9]\d)|1\.\d\d) s",
    ],
    3: [r"asked 60 s, got 2\.0\nafter the update: 0\.5\nfrom a trusted peer: (59\.9|60\.0|60\.1)"],
    4: [
        r"0\.2505 s left -> timeout 0\.247 s",
        r"1\.2301 s left -> timeout 1\.227 s",
        r"12\.3456 s left -> timeout 12\.297 s",
    ],
    5: [r"\['x-request-id', 'x-request-timeout'\] order-42"],
}


def test_the_guide_has_examples():
    assert len(BLOCKS) == len(EXPECTED)


@pytest.mark.realtime
@pytest.mark.parametrize(
    ("i", "code"),
    list(enumerate(BLOCKS)),
    ids=[f"{i}:{b.splitlines()[0][:30]}" for i, b in enumerate(BLOCKS)],
)
def test_example_runs(i: int, code: str):
    proc = docblocks.run(code)
    for pattern in EXPECTED[i]:
        assert re.search(pattern, proc.stdout), (pattern, proc.stdout)
