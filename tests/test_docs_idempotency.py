"""docs/idempotency.md: every ```python block runs in a fresh interpreter, as pasted,
and prints what the ```text block after it says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tests.conftest import require_service

import docblocks

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "idempotency.md"
BLOCK = re.compile(r"^```(python|text)\n(.*?)^```", re.S | re.M)


def examples() -> list[tuple[str, str]]:
    """(code, expected output) pairs: each python block and the text block after it."""
    out: list[tuple[str, str]] = []
    blocks = BLOCK.findall(DOC.read_text())
    for i, (kind, body) in enumerate(blocks):
        if kind == "python":
            nxt = blocks[i + 1] if i + 1 < len(blocks) else ("", "")
            assert nxt[0] == "text", f"python block {len(out)} has no output block after it"
            out.append((body, nxt[1]))
    return out


EXAMPLES = examples()


def test_the_guide_has_examples() -> None:
    assert len(EXAMPLES) == 5


@pytest.mark.parametrize(("code", "expected"), EXAMPLES, ids=[f"{i}" for i in range(len(EXAMPLES))])
def test_example_prints_what_the_guide_says(code: str, expected: str) -> None:
    if "RedisStore(" in code:
        require_service("127.0.0.1", 6379, "Redis")
    proc = docblocks.run(code, timeout=120)
    assert proc.stdout == expected, proc.stdout
