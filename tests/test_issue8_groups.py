"""Issue 8, items 6, 7 and 9: what a group does with the body's exception, set_limit,
and the errors for a function that does not take the context first.

Each test failed before its fix (the body's exception vanished; there was no
``set_limit``; Python's bare arity message, or "'coroutine' object is not callable").
"""

from __future__ import annotations

import asyncio
import threading
import time
import traceback
import warnings

import pytest

import tether

bg = tether.background


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def _chain(e: BaseException) -> list[BaseException]:
    out = []
    while e is not None and e not in out:
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


# -- item 6: the body's exception is never lost ---------------------------------------


def test_group_chains_the_body_exception_under_the_task_error():
    task_err = RuntimeError("task failed")
    body = LookupError("body failed")

    def task(ctx):
        raise task_err

    def block():
        with tether.Group(bg()) as g:
            g.go(task)
            assert g.ctx.done().wait(10)
            raise body

    with pytest.raises(RuntimeError) as info:
        block()
    assert info.value is task_err  # the first error still wins
    assert info.value.__context__ is body  # ...and the body's is chained, not lost
    text = "".join(traceback.format_exception(info.value))
    assert "LookupError: body failed" in text


def test_group_notes_the_body_exception_when_the_error_has_its_own_context():
    def task(ctx):
        try:
            raise KeyError("inner")
        except KeyError:
            raise ValueError("task failed") from None

    def task_with_context(ctx):
        try:
            raise KeyError("inner")
        except KeyError:
            raise ValueError("task failed")  # implicitly chained

    body = LookupError("body failed")

    def block():
        with tether.Group(bg()) as g:
            g.go(task_with_context)
            assert g.ctx.done().wait(10)
            raise body

    with pytest.raises(ValueError) as info:
        block()
    assert isinstance(info.value.__context__, KeyError)  # its own context is kept
    assert any("LookupError: body failed" in n for n in info.value.__notes__)
    assert "LookupError: body failed" in "".join(traceback.format_exception(info.value))


def test_group_body_consequence_of_the_task_error_is_noted_without_a_cycle():
    doom = RuntimeError("doomed")

    def task(ctx):
        raise doom

    def block():
        with tether.Group(bg()) as g:
            g.go(task)
            assert g.ctx.done().wait(10)
            g.ctx.check()  # Canceled, caused by doom

    with pytest.raises(RuntimeError) as info:
        block()
    assert info.value is doom
    assert doom.__context__ is None  # no cycle doom -> Canceled -> doom
    assert any("Canceled" in n for n in doom.__notes__)


def test_group_body_error_alone_propagates_unchanged():
    body = LookupError("body")

    def block():
        with tether.Group(bg()):
            raise body

    with pytest.raises(LookupError) as info:
        block()
    assert info.value is body
    assert not hasattr(body, "__notes__")


def test_taskgroup_chains_the_body_exception_under_the_task_error():
    task_err = RuntimeError("task failed")
    body = LookupError("body failed")

    async def task(ctx):
        raise task_err

    async def main():
        async with tether.TaskGroup(bg()) as g:
            g.go(task)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            # the group is failing: the body raises before the interruption lands
            raise body

    with pytest.raises(RuntimeError) as info:
        run(main())
    assert info.value is task_err
    assert info.value.__context__ is body
    assert "LookupError: body failed" in "".join(traceback.format_exception(info.value))


def test_taskgroup_interrupted_body_is_not_chained():
    task_err = RuntimeError("task failed")

    async def task(ctx):
        raise task_err

    async def main():
        async with tether.TaskGroup(bg()) as g:
            g.go(task)
            await asyncio.sleep(10)  # interrupted by the group

    with pytest.raises(RuntimeError) as info:
        run(main())
    assert info.value is task_err
    assert info.value.__context__ is None  # the group's own CancelledError is noise


# -- item 7: set_limit, errgroup's rule -------------------------------------------------


def test_group_set_limit_between_waits():
    g = tether.Group(bg())
    assert g.limit is None
    g.set_limit(1)
    assert g.limit == 1
    gate = threading.Event()
    h = g.go(lambda ctx: gate.wait(10))
    assert g.try_go(lambda ctx: None) is None  # the new limit holds
    gate.set()
    h.result(10)
    g.wait()
    g.set_limit(None)
    assert g.limit is None


def test_group_set_limit_while_tasks_are_active_is_an_error():
    gate = threading.Event()
    g = tether.Group(bg(), limit=2)
    g.go(lambda ctx: gate.wait(10))
    with pytest.raises(RuntimeError, match=r"^tether: .*set_limit.*active.*wait\(\)"):
        g.set_limit(4)
    assert g.limit == 2
    gate.set()
    g.wait()
    g.set_limit(4)
    assert g.limit == 4


@pytest.mark.parametrize("bad", [-1, 1.5, "2", True])
def test_group_set_limit_rejects_bad_values(bad):
    g = tether.Group(bg())
    with pytest.raises((TypeError, ValueError), match=r"^tether: limit"):
        g.set_limit(bad)


def test_taskgroup_set_limit_rule():
    async def main():
        g = tether.TaskGroup(bg())
        g.set_limit(1)
        assert g.limit == 1
        gate = asyncio.Event()

        async def blocked(ctx):
            await gate.wait()

        async with g:
            g.go(blocked)
            assert g.try_go(blocked) is None
            with pytest.raises(RuntimeError, match=r"^tether: .*set_limit.*active"):
                g.set_limit(3)
            gate.set()
        g.set_limit(3)
        assert g.limit == 3
        with pytest.raises(ValueError, match=r"^tether: limit"):
            g.set_limit(-2)

    run(main())


# -- item 9: a function that does not take the context, a coroutine for a function ----


def test_group_go_with_a_function_that_does_not_take_ctx():
    with pytest.raises(TypeError) as info:
        with tether.Group(bg()) as g:
            g.go(time.sleep, 0.01)
    msg = str(info.value)
    assert msg.startswith("tether: ")
    assert "fn(ctx, *args)" in msg
    assert "sleep" in msg
    assert isinstance(info.value.__cause__, TypeError)  # Python's own message, chained


def test_group_go_error_inside_the_function_is_not_rewritten():
    def fn(ctx):
        raise TypeError("mine")

    with pytest.raises(TypeError, match=r"^mine$"):
        with tether.Group(bg()) as g:
            g.go(fn)


def test_taskgroup_go_error_inside_the_function_is_not_rewritten():
    mine = TypeError("mine")

    def fn(ctx):  # a plain function that raises TypeError itself
        raise mine

    async def main():
        async with tether.TaskGroup(bg()) as g:
            with pytest.raises(TypeError) as info:
                g.go(fn)
            assert info.value is mine
            assert info.value.__cause__ is None
            assert not info.value.__suppress_context__

    run(main())


def test_group_go_with_a_coroutine_object():
    async def fetch(ctx):
        return 1

    coro = fetch(bg())
    g = tether.Group(bg())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "never awaited" warning either
        with pytest.raises(TypeError, match=r"^tether: .*coroutine.*TaskGroup"):
            g.go(coro)
    g.wait()


def test_group_go_with_an_async_function():
    async def fetch(ctx):
        return 1

    g = tether.Group(bg())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the coroutine is closed: no never-awaited warning
        h = g.go(fetch)
        with pytest.raises(TypeError, match=r"^tether: .*async function.*TaskGroup"):
            g.wait()
    with pytest.raises(TypeError):
        h.result(10)


def test_to_thread_with_a_function_that_does_not_take_ctx():
    async def main():
        await tether.to_thread(bg(), time.sleep, 0.01)

    with pytest.raises(TypeError) as info:
        run(main())
    assert str(info.value).startswith("tether: ")
    assert "fn(ctx, *args)" in str(info.value)


def test_taskgroup_go_with_a_coroutine_object():
    async def fetch(ctx):
        return 1

    async def main():
        async with tether.TaskGroup(bg()) as g:
            with pytest.raises(TypeError, match=r"^tether: .*not a coroutine.*g\.go\(fetch"):
                g.go(fetch(g.ctx))

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(main())


def test_taskgroup_go_with_a_function_that_does_not_take_ctx():
    async def fetch(url):
        return url

    async def main():
        async with tether.TaskGroup(bg()) as g:
            with pytest.raises(TypeError, match=r"^tether: .*fn\(ctx, \*args\)"):
                g.go(fetch, "u")

    run(main())
