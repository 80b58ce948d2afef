"""docs/observability.md: every ```python block runs in a fresh interpreter, as pasted,
and prints what the guide says it prints (the ``` block that follows it)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import docblocks

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "observability.md"
TEXT = DOC.read_text()
FENCE = re.compile(r"^```python\n(.*?)^```\n(?:\n[^`]*?\n)?\n?```\n(.*?)^```", re.S | re.M)
PAIRS = FENCE.findall(TEXT)
BLOCKS = re.findall(r"^```python\n(.*?)^```", TEXT, re.S | re.M)

NEEDS = {1: "structlog", 2: "prometheus_client", 3: "opentelemetry.sdk", 5: "uvicorn"}


def test_every_example_has_its_output():
    assert len(BLOCKS) == len(PAIRS) == 6


@pytest.mark.parametrize(
    ("i", "code", "expected"),
    [(i, c, e) for i, (c, e) in enumerate(PAIRS)],
    ids=[f"{i}:{c.splitlines()[0][:30]}" for i, (c, _) in enumerate(PAIRS)],
)
def test_example_prints_what_the_guide_says(i: int, code: str, expected: str):
    if i in NEEDS:
        pytest.importorskip(NEEDS[i])
    proc = docblocks.run(code, timeout=120)
    got = proc.stdout.splitlines()
    want = expected.splitlines()
    if i == 0:  # thread names vary: compare the request id and the message
        strip = re.compile(r" \S+: ")
        assert sorted(strip.sub(" ", line) for line in got) == sorted(
            strip.sub(" ", line) for line in want
        )
    else:
        assert got == want
