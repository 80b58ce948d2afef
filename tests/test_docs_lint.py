"""docs/lint.md: every bad example produces its code (and only it), every good one nothing.

The blocks are checked as written in the guide. Each good block is also run in a fresh
interpreter (they define functions and, at most, call them with a background context).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tether.lint import CODES, check_source

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "lint.md"
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
BLOCKS = FENCE.findall(DOC.read_text())
BAD = [(b.splitlines()[0].split(":")[1].strip(), b) for b in BLOCKS if b.startswith("# bad:")]
GOOD = [b for b in BLOCKS if b.startswith("# good")]


def test_every_code_has_a_bad_and_a_good_example():
    assert len(BAD) + len(GOOD) == len(BLOCKS), "each block starts with # bad: TTH00N or # good"
    codes = [c for c in CODES if c != "TTH000"]
    assert sorted({code for code, _ in BAD}) == codes
    for code in codes:
        section = DOC.read_text().split(f"## {code}")[1].split("\n## ")[0]
        assert "# good" in section, f"{code} has no good example"


@pytest.mark.parametrize(("code", "block"), BAD, ids=[f"{c}-{i}" for i, (c, _) in enumerate(BAD)])
def test_bad_example_produces_its_code(code: str, block: str):
    found = check_source(block, "docs/lint.md")
    assert found, f"no finding for a {code} example"
    assert {f.code for f in found} == {code}, [str(f) for f in found]


@pytest.mark.parametrize("block", GOOD, ids=[f"good-{i}" for i in range(len(GOOD))])
def test_good_example_is_clean_and_runs(block: str):
    assert check_source(block, "docs/lint.md") == []
    proc = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error::ResourceWarning", "-c", block],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_tth002_message_in_the_guide_is_the_real_one():
    block = next(b for c, b in BAD if c == "TTH002")
    (finding,) = check_source(block, "docs/lint.md")
    quoted = re.search(r'# "(.*)"', block)
    assert quoted
    assert quoted.group(1) in finding.message
