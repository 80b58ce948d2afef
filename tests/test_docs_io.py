"""docs/io.md: every ```python block runs in a fresh interpreter, as pasted."""

from __future__ import annotations

from pathlib import Path

import pytest

import docblocks
from conftest import require_service

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "io.md"
BLOCKS = docblocks.blocks(DOC)

POSTGRES = ("127.0.0.1", 5432, "PostgreSQL")
REDIS = ("127.0.0.1", 6379, "Redis")

# block -> (services it needs, lines its output must contain)
EXPECTED: dict[int, tuple[tuple[tuple[str, int, str], ...], list[str]]] = {
    0: (
        (),
        [
            "stopped: context deadline exceeded (sqlite3 said: interrupted)",
            "the connection still works: 42",
        ],
    ),
    1: (
        (POSTGRES,),
        [
            "stopped: context deadline exceeded, from QueryCanceled",
            "status: IDLE",
            "next query: 42",
        ],
    ),
    2: ((POSTGRES,), ["stopped: context canceled, from QueryCanceled", "next query: 1"]),
    3: ((POSTGRES,), ["stopped: context deadline exceeded", "next query: 42"]),
    4: (
        (REDIS,),
        [
            "BLPOP: context deadline exceeded",
            "BLPOP: context canceled, from ConnectionError",
            "client still works: True",
        ],
    ),
    5: ((REDIS,), ["XREAD: context deadline exceeded", "client still works: True"]),
    6: ((), ["total: 600", "not run: context canceled"]),
}


def test_the_guide_has_examples():
    assert len(BLOCKS) == len(EXPECTED)
    assert DOC.read_text().startswith("# Real I/O that stops when its context ends\n")


@pytest.mark.parametrize(
    ("i", "code"),
    list(enumerate(BLOCKS)),
    ids=[f"{i}:{b.splitlines()[0][:30]}" for i, b in enumerate(BLOCKS)],
)
def test_example_runs(i: int, code: str):
    services, lines = EXPECTED[i]
    for host, port, what in services:
        require_service(host, port, what)
    proc = docblocks.run(code)
    for line in lines:
        assert line in proc.stdout, proc.stdout
