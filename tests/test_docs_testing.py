"""docs/testing.md: each example test file runs under pytest with the plugin, and does
what the guide says (passes, or fails the leak check with the report it shows)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
BLOCKS = re.findall(
    r"^```python\n(.*?)^```", (ROOT / "docs" / "testing.md").read_text(), re.S | re.M
)

INI = "[pytest]\ntether_leak_check = true\nasyncio_default_fixture_loop_scope = function\n"

# block -> (outcomes, lines the report must contain)
EXPECTED: dict[int, tuple[dict[str, int], list[str]]] = {
    0: ({"passed": 2}, []),
    1: (
        {"passed": 1, "errors": 1},
        [
            "  thread 'waiter' (daemon=False), now at:",
            '*File "*test_example.py", line 5, in wait_forever',
            "*event.wait(5)                 # nobody sets it",
        ],
    ),
    2: (
        {"passed": 1, "errors": 1},
        [
            "  asyncio task 'Task-*' running 'poll', suspended at:",
            '*File "*test_example.py", line 8, in poll',
            "*(pending when the test returned; the runner cancelled it)",
        ],
    ),
    3: ({"passed": 1, "errors": 1}, ["  live context <tether.Context background.with_deadline(*"]),
    4: ({"passed": 1}, []),
}


def test_the_guide_has_examples():
    assert len(BLOCKS) == len(EXPECTED)


@pytest.mark.parametrize("i", sorted(EXPECTED))
def test_example(pytester: pytest.Pytester, i: int):
    if i == 2:
        pytest.importorskip("pytest_asyncio")
    pytester.makeini(INI)
    pytester.makepyfile(test_example=BLOCKS[i])
    res = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", timeout=120)
    outcomes, lines = EXPECTED[i]
    res.assert_outcomes(**outcomes)
    if lines:
        res.stdout.fnmatch_lines(lines)
    if i == 3:
        res.stdout.fnmatch_lines(["*created at *test_example.py:7"])
