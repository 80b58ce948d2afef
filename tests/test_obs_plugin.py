"""The pytest plugin as users get it: leak reports, the opt-out marker, async runners.

Each test runs a small test suite in a fresh pytest subprocess (pytester), with the
plugin loaded through its ``pytest11`` entry point, as in a user's project.
"""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

INI = """
[pytest]
tether_leak_check = true
asyncio_default_fixture_loop_scope = function
"""


def run(pytester: pytest.Pytester, source: str, *args: str, ini: str = INI) -> pytest.RunResult:
    pytester.makeini(ini)
    pytester.makepyfile(test_user=source)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", *args, timeout=120)


def test_leaked_thread_is_reported_with_its_stack(pytester):
    res = run(
        pytester,
        """
        import threading

        def park(ev):
            ev.wait(5)   # the leaked thread waits here

        def test_leaks_a_thread():
            threading.Thread(target=park, args=(threading.Event(),), name="parked").start()
        """,
    )
    res.assert_outcomes(passed=1, errors=1)
    res.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_leaks_a_thread*",
            "tether: the test left work behind:",
            "  thread 'parked' (daemon=False), now at:",
            '*File "*test_user.py", line 4, in park',
            "*ev.wait(5)   # the leaked thread waits here",
            "*@pytest.mark.tether_allow_leaks",
        ]
    )


def test_leaked_context_is_reported_with_its_creation_line(pytester):
    res = run(
        pytester,
        """
        import tether

        KEEP = []

        def test_forgets_cancel():
            KEEP.append(tether.with_timeout(tether.background(), 60))
        """,
    )
    res.assert_outcomes(passed=1, errors=1)
    res.stdout.fnmatch_lines(
        ["  live context <tether.Context background.with_deadline(*) [[]live[]]> created at *:6"]
    )


ASYNC_LEAK = """
import asyncio
import pytest

async def forever():
    await asyncio.sleep(100)   # suspended here

{mark}
async def test_leaks_a_task():
    asyncio.get_running_loop().create_task(forever())

{mark}
async def test_clean():
    await asyncio.to_thread(lambda: None)
    task = asyncio.get_running_loop().create_task(forever())
    task.cancel()   # cancelled by the test itself: not a leak
    with pytest.raises(asyncio.CancelledError):
        await task
"""

TASK_REPORT = [
    "*ERROR at teardown of test_leaks_a_task*",
    "  asyncio task 'Task-*' running 'forever', suspended at:",
    '*File "*test_user.py", line 5, in forever',
    "*await asyncio.sleep(100)   # suspended here",
    "*(pending when the test returned; the runner cancelled it)",
]


def test_pytest_asyncio_leaked_task_is_reported_with_its_coroutine(pytester):
    pytest.importorskip("pytest_asyncio")
    res = run(pytester, ASYNC_LEAK.format(mark="@pytest.mark.asyncio"))
    res.assert_outcomes(passed=2, errors=1)
    res.stdout.fnmatch_lines(TASK_REPORT)


def test_pytest_asyncio_module_scoped_loop(pytester):
    pytest.importorskip("pytest_asyncio")
    # the loop (and its default executor's idle threads) outlive each test
    res = run(
        pytester,
        ASYNC_LEAK.format(mark='@pytest.mark.asyncio(loop_scope="module")'),
    )
    res.assert_outcomes(passed=2, errors=1)
    # still pending on the open loop: reported as such
    res.stdout.fnmatch_lines([*TASK_REPORT[:-1], "  cancel what you derive*"])


def test_anyio_plugin_asyncio_and_trio(pytester):
    pytest.importorskip("anyio")
    pytest.importorskip("trio")
    res = run(
        pytester,
        """
        import asyncio
        import anyio
        import pytest

        pytestmark = pytest.mark.anyio

        @pytest.fixture(params=["asyncio", "trio"])
        def anyio_backend(request):
            return request.param

        async def test_threads_and_tasks(anyio_backend):
            await anyio.to_thread.run_sync(lambda: None)
            async with anyio.create_task_group() as tg:
                tg.start_soon(anyio.sleep, 0)

        async def forever():
            await asyncio.sleep(100)   # suspended here

        async def test_leaks_a_task(anyio_backend):
            if anyio_backend == "asyncio":
                asyncio.get_running_loop().create_task(forever())
        """,
    )
    res.assert_outcomes(passed=4, errors=1)
    res.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_leaks_a_task[[]asyncio[]]*",
            "  asyncio task 'Task-*' running 'forever', suspended at:",
            "*(pending when the test returned; the runner cancelled it)",
        ]
    )


def test_allow_leaks_marker_and_default_off(pytester):
    source = """
        import threading
        import pytest
        import tether

        KEEP = []

        @pytest.mark.tether_allow_leaks  # deliberate: documented opt-out
        def test_allowed():
            KEEP.append(tether.with_cancel(tether.background()))
            threading.Thread(target=threading.Event().wait, args=(1,)).start()

        def test_not_allowed():
            KEEP.append(tether.with_cancel(tether.background()))
        """
    res = run(pytester, source)
    res.assert_outcomes(passed=2, errors=1)
    res.stdout.fnmatch_lines(["*ERROR at teardown of test_not_allowed*"])
    # off unless the ini or the command line turns it on
    off = run(pytester, source, ini="[pytest]\n")
    off.assert_outcomes(passed=2)
    on = run(pytester, source, "--tether-leak-check", ini="[pytest]\n")
    on.assert_outcomes(passed=2, errors=1)


def test_fixtures(pytester):
    res = run(
        pytester,
        """
        import tether

        def test_ctx(ctx):
            assert ctx.err() is None
            assert tether.current() is ctx

        def test_fake_clock(fake_clock):
            with tether.with_timeout(tether.background(), 5) as c:
                fake_clock.advance(5)
                assert isinstance(c.err(), tether.DeadlineExceeded)
        """,
    )
    res.assert_outcomes(passed=2)
