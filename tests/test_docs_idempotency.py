"""docs/idempotency.md: every ```python block runs in a fresh interpreter, as pasted,
and prints what the ```text block after it says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import require_service

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "idempotency.md"
BLOCK = re.compile(r"^```(python|text)\n(.*?)^```", re.S | re.M)
SLOPPY = ("Exception ignored", "Task was destroyed", "ResourceWarning", "LostCancelWarning")


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
    proc = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error::ResourceWarning", "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for bad in SLOPPY:
        assert bad not in proc.stderr, proc.stderr
    assert proc.stdout == expected, proc.stdout
