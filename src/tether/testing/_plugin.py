"""tether's pytest plugin (entry point ``pytest11``): fixtures and a leak check.

Fixtures: ``ctx`` (a cancellable context, cancelled after the test) and ``fake_clock``
(a ``FakeClock`` installed for the test).

Leak check (opt in with ``--tether-leak-check`` or ``tether_leak_check = true`` in the
ini file): after each test, and after its fixtures are torn down, the test fails if it
left a thread (reported with its current stack), an asyncio task (with its coroutine
and where it is suspended; also one that pytest-asyncio or anyio's plugin cancelled
when closing its loop after the test), or a live context it derived (with the line
that derived it). Mark a test ``@pytest.mark.tether_allow_leaks`` to skip the check
for it. User guide: ``docs/testing.md``.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator

import pytest

import tether
from tether.testing import FakeClock
from tether.testing._leaks import LeakCheck

_KEY = pytest.StashKey[LeakCheck]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "tether_leak_check",
        "fail tests that leave threads, asyncio tasks or live tether contexts behind",
        type="bool",
        default=False,
    )
    group = parser.getgroup("tether")
    group.addoption(
        "--tether-leak-check",
        action="store_true",
        default=False,
        help="fail tests that leave threads, asyncio tasks or live tether contexts behind",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "tether_allow_leaks: skip tether's leak check for this test")


def _enabled(item: pytest.Item) -> bool:
    cfg = item.config
    on = cfg.getoption("--tether-leak-check") or cfg.getini("tether_leak_check")
    return bool(on) and item.get_closest_marker("tether_allow_leaks") is None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    if _enabled(item):
        check = LeakCheck()
        check.start()
        item.stash[_KEY] = check
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    check = item.stash.get(_KEY, None)
    if check is not None:
        check.before_call()
    try:
        return (yield)
    finally:
        if check is not None:
            check.after_call()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    result = yield
    check = item.stash.get(_KEY, None)
    if check is not None:
        del item.stash[_KEY]
        leaks = check.finish()
        if leaks:
            pytest.fail(leaks.report(), pytrace=False)
    return result


@pytest.fixture
def ctx() -> Iterator[tether.Context]:
    """A cancellable context for one test, cancelled when the test ends."""
    with tether.with_cancel(tether.background()) as c:
        yield c


@pytest.fixture
def fake_clock() -> Iterator[FakeClock]:
    """A FakeClock installed for the test."""
    with FakeClock() as clock:
        yield clock
