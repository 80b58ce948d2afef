"""Bad input fails loudly: TypeError/ValueError (RuntimeError for misuse of state) whose
message starts ``tether:`` and says what to pass or do instead (DESIGN.md section 3).

Each case names the hint its message must contain, so a message that stops telling the
user what to do fails here.
"""

from __future__ import annotations

import asyncio
import math
import threading
from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction

import pytest

import tether

bg = tether.background


def raises(exc: type[Exception], hint: str):
    """pytest.raises for a tether misuse error: prefix, and the hint it must give."""
    return pytest.raises(exc, match=rf"^tether: (?s:.*){hint}")


# --------------------------------------------------------------------------------------
# None (and non-Context) parents


def _after_func(p):
    return tether.after_func(p, lambda: None)


PARENT_TAKERS = {
    "with_cancel": tether.with_cancel,
    "with_timeout": lambda p: tether.with_timeout(p, 1),
    "with_deadline": lambda p: tether.with_deadline(p, 1.0),
    "with_value": lambda p: tether.with_value(p, "k", "v"),
    "without_cancel": tether.without_cancel,
    "cause": tether.cause,
    "after_func": _after_func,
}


@pytest.mark.parametrize("fn", PARENT_TAKERS.values(), ids=PARENT_TAKERS.keys())
def test_none_parent(fn):
    with raises(TypeError, r"tether\.background\(\)"):
        fn(None)


@pytest.mark.parametrize("fn", PARENT_TAKERS.values(), ids=PARENT_TAKERS.keys())
@pytest.mark.parametrize("not_a_context", ["ctx", 1, object()], ids=["str", "int", "object"])
def test_non_context_parent(fn, not_a_context):
    with raises(TypeError, r"tether\.Context"):
        fn(not_a_context)


def test_a_scope_is_not_a_parent():
    # A common slip: passing the (ctx, cancel) pair instead of ctx.
    scope = tether.with_cancel(bg())
    with raises(TypeError, r"tether\.Context, got Scope"):
        tether.with_cancel(scope)  # type: ignore[arg-type]
    scope.cancel()


# --------------------------------------------------------------------------------------
# Keys


@pytest.mark.parametrize("key", [[], {}, {1}, bytearray(b"k")], ids=type)
def test_unhashable_key(key):
    with raises(TypeError, r"hashable.*tether\.Key"):
        tether.with_value(bg(), key, "v")


def test_unhashable_key_under_existing_values():
    ctx = tether.with_value(bg(), "a", 1)
    with raises(TypeError, r"hashable.*tether\.Key"):
        tether.with_value(ctx, [], "v")


def test_none_key():
    with raises(ValueError, r"tether\.Key"):
        tether.with_value(bg(), None, "v")


@pytest.mark.parametrize("name", [None, 1, b"name"])
def test_key_name_must_be_a_str(name):
    with raises(TypeError, "str"):
        tether.Key(name)


def test_value_with_an_unhashable_key_is_a_type_error():
    with pytest.raises(TypeError):
        tether.with_value(bg(), "k", 1).value([])


# --------------------------------------------------------------------------------------
# Durations and deadlines

NOT_NUMBERS = [
    True,
    False,
    "1",
    b"1",
    None,
    object(),
    [1],
    1j,
    Decimal("1.5"),
]
NOT_FINITE = [math.nan, math.inf, -math.inf, 10**400, Fraction(10**400)]


@pytest.mark.parametrize("seconds", NOT_NUMBERS, ids=repr)
def test_timeout_not_a_number(seconds):
    with raises(TypeError, r"int or float, or a datetime\.timedelta"):
        tether.with_timeout(bg(), seconds)


@pytest.mark.parametrize("seconds", NOT_FINITE, ids=lambda x: repr(x)[:12])
def test_timeout_not_finite(seconds):
    with raises(ValueError, "finite number of seconds.*do not set a deadline"):
        tether.with_timeout(bg(), seconds)


@pytest.mark.parametrize("when", NOT_NUMBERS, ids=repr)
def test_deadline_not_a_number(when):
    with raises(TypeError, r"int or float"):
        tether.with_deadline(bg(), when)


@pytest.mark.parametrize("when", NOT_FINITE, ids=lambda x: repr(x)[:12])
def test_deadline_not_finite(when):
    with raises(ValueError, "finite number of seconds"):
        tether.with_deadline(bg(), when)


def test_naive_datetime():
    with raises(TypeError, r"timezone-aware.*datetime\.now\(timezone\.utc\)"):
        tether.with_deadline(bg(), datetime.now() + timedelta(seconds=5))


@pytest.mark.parametrize("timeout", ["1", True, math.nan, -math.inf])
def test_done_wait_timeout(timeout):
    ctx, cancel = tether.with_cancel(bg())
    with pytest.raises((TypeError, ValueError), match=r"^tether: "):
        ctx.done().wait(timeout)
    cancel()


def test_done_wait_nan_says_to_pass_none():
    ctx, cancel = tether.with_cancel(bg())
    with pytest.raises(ValueError, match="pass None to wait without a limit"):
        ctx.done().wait(math.nan)
    cancel()


def test_done_wait_inf_means_no_limit():
    ctx, cancel = tether.with_cancel(bg())
    threading.Timer(0.01, cancel).start()
    assert ctx.done().wait(math.inf) is True


def test_cancel_checks_the_cause_even_when_already_ended():
    ctx, cancel = tether.with_cancel(bg())
    cancel()
    assert ctx.err() is not None
    with pytest.raises(TypeError, match=r"^tether: cause must be an exception"):
        cancel("not an exception")  # type: ignore[arg-type]


def test_good_numbers_are_accepted():
    # The other side of the checks above: every documented duration type works.
    for seconds in (1, 1.5, timedelta(seconds=1), Fraction(3, 2), 0, -1):
        ctx, cancel = tether.with_timeout(bg(), seconds)
        cancel()
    ctx, cancel = tether.with_deadline(bg(), 10**6)  # an int clock time
    cancel()
    assert isinstance(ctx.deadline(), float)


# --------------------------------------------------------------------------------------
# Causes, callbacks


@pytest.mark.parametrize("cause", ["reason", 1, ValueError], ids=["str", "int", "class"])
def test_cause_must_be_an_exception(cause):
    ctx, cancel = tether.with_cancel(bg())
    with raises(TypeError, "cause must be an exception or None"):
        cancel(cause)
    assert ctx.err() is None, "a rejected cancel must not cancel"
    for derive in (tether.with_timeout, tether.with_deadline):
        with raises(TypeError, "cause must be an exception or None"):
            derive(bg(), 1, cause)
    cancel()


@pytest.mark.parametrize("fn", [None, "fn", 1])
def test_after_func_needs_a_callable(fn):
    ctx, cancel = tether.with_cancel(bg())
    with raises(TypeError, "needs a callable"):
        tether.after_func(ctx, fn)
    cancel()


# --------------------------------------------------------------------------------------
# Objects used the wrong way


def test_done_has_no_truth_value():
    ctx, cancel = tether.with_cancel(bg())
    with raises(TypeError, r"is_set\(\)"):
        bool(ctx.done())
    with raises(TypeError, r"is_set\(\)"):
        if ctx.done():
            pass
    cancel()
    with raises(TypeError, r"is_set\(\)"):  # also once set: it is never a bool
        bool(ctx.done())


@pytest.mark.parametrize(
    ("cls", "hint"),
    [
        (tether.Context, r"tether\.background\(\)"),
        (tether.Done, r"ctx\.done\(\)"),
        (tether.CancelFunc, "with_cancel"),
    ],
)
def test_not_constructed_directly(cls, hint):
    with raises(TypeError, hint):
        cls()


def test_context_cannot_be_subclassed():
    with pytest.raises(TypeError):

        class MyContext(tether.Context):  # type: ignore[misc]
            pass


def test_scope_entered_twice():
    # State misuse is a RuntimeError, as asyncio.timeout's "already entered".
    scope = tether.with_cancel(bg())
    with scope:
        pass
    with raises(RuntimeError, "derive a new context"), scope:
        pass
    scope2 = tether.with_cancel(bg())
    with scope2, raises(RuntimeError, "derive a new context"), scope2:
        pass


def test_async_scope_entered_twice():
    async def main():
        scope = tether.with_cancel(bg())
        async with scope:
            pass
        with raises(RuntimeError, "derive a new context"):
            async with scope:
                pass

    asyncio.run(main())


def test_async_with_outside_asyncio():
    trio = pytest.importorskip("trio")
    scope = tether.with_cancel(bg())

    async def main():
        async with scope:
            pass

    with raises(RuntimeError, "plain `with`"):
        trio.run(main)
    scope.cancel()
