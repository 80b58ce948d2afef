"""The public surface: what `import tether` costs, what it exports, how its objects behave
as Python objects (isinstance, identity, weakref, copy, pickle, str of errors), and that
the types users get are the ones they expect (mypy strict over tests/typed_example.py).
"""

from __future__ import annotations

import copy
import gc
import json
import pickle
import subprocess
import sys
import textwrap
import types
import weakref
from pathlib import Path

import pytest

import tether
import tether.testing

HERE = Path(__file__).resolve().parent
TYPED_EXAMPLE = HERE / "typed_example.py"


def _imported_by(statement: str) -> dict[str, list[str]]:
    code = textwrap.dedent(
        f"""
        import json, sys
        before = set(sys.modules)
        {statement}
        new = sorted(set(sys.modules) - before)
        print(json.dumps({{
            "new": new,
            "outside_stdlib": [
                m for m in new
                if m.partition(".")[0] not in sys.stdlib_module_names
                and m.partition(".")[0] != "tether"
            ],
        }}))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_import_tether_imports_only_the_stdlib():
    out = _imported_by("import tether")
    assert "tether" in out["new"]  # the measurement measured something
    assert out["outside_stdlib"] == []


def test_import_tether_does_not_import_asyncio():
    # The asyncio bridge loads on the first `await ctx.done()` / `async with`.
    out = _imported_by("import tether")
    assert "asyncio" not in out["new"]


def test_import_tether_testing_imports_only_the_stdlib():
    # FakeClock is usable outside pytest: importing it must not pull pytest in.
    out = _imported_by("import tether.testing")
    assert out["outside_stdlib"] == []


def _public_names(module: types.ModuleType) -> set[str]:
    return {
        name
        for name, obj in vars(module).items()
        if not name.startswith("_") and not isinstance(obj, types.ModuleType)
    }


@pytest.mark.parametrize("module", [tether, tether.testing], ids=lambda m: m.__name__)
def test_all_is_sorted_and_complete(module):
    assert module.__all__ == sorted(module.__all__)
    assert len(set(module.__all__)) == len(module.__all__)
    assert set(module.__all__) == _public_names(module)


CORE = {
    "CancelFunc",
    "Canceled",
    "Context",
    "ContextError",
    "DeadlineExceeded",
    "Done",
    "Key",
    "LostCancelWarning",
    "Scope",
    "after_func",
    "background",
    "cause",
    "current",
    "todo",
    "with_cancel",
    "with_deadline",
    "with_timeout",
    "with_value",
    "without_cancel",
}


def test_core_api_is_exported():
    assert set(tether.__all__) >= CORE
    assert "FakeClock" in tether.testing.__all__


@pytest.mark.parametrize(
    ("module", "name"),
    [(tether, n) for n in tether.__all__] + [(tether.testing, n) for n in tether.testing.__all__],
    ids=lambda x: x if isinstance(x, str) else x.__name__,
)
def test_exports_show_the_public_module(module, name):
    obj = getattr(module, name)
    assert obj.__module__ == module.__name__, (
        f"{module.__name__}.{name}.__module__ is {obj.__module__!r}: "
        "tracebacks, repr and docs would show a private module"
    )


def test_package_is_typed():
    assert (Path(tether.__file__).parent / "py.typed").is_file()


# --------------------------------------------------------------------------------------
# Contexts as Python objects


def _every_kind():
    parent, cancel = tether.with_cancel(tether.background())
    timed, cancel2 = tether.with_timeout(parent, 3600)
    kinds = {
        "background": tether.background(),
        "todo": tether.todo(),
        "with_cancel": parent,
        "with_timeout": timed,
        "with_value": tether.with_value(parent, "k", "v"),
        "without_cancel": tether.without_cancel(parent),
    }
    return kinds, [cancel, cancel2]


def test_every_context_is_a_context_instance_weakrefable_and_not_picklable():
    kinds, cancels = _every_kind()
    for name, ctx in kinds.items():
        assert isinstance(ctx, tether.Context), name
        assert type(ctx) is tether.Context, name
        assert weakref.ref(ctx)() is ctx, name
        assert copy.copy(ctx) is ctx, name
        assert copy.deepcopy(ctx) is ctx, name
        assert copy.deepcopy({"ctx": ctx})["ctx"] is ctx, name
        for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
            with pytest.raises(TypeError, match=r"^tether: .*remaining\(\)"):
                pickle.dumps(ctx, protocol)
    for c in cancels:
        c()


def test_contexts_are_hashable_by_identity():
    a, ca = tether.with_cancel(tether.background())
    b, cb = tether.with_cancel(tether.background())
    assert a != b
    assert len({a, b, a}) == 2
    ca()
    cb()
    assert len({a, b}) == 2, "ending a context must not change its hash or equality"


def test_contexts_take_no_new_attributes():
    ctx, cancel = tether.with_cancel(tether.background())
    with pytest.raises(AttributeError):
        ctx.deadline_override = 1  # type: ignore[attr-defined]
    cancel()


def test_background_and_todo_are_shared_singletons():
    assert tether.background() is tether.background()
    assert tether.todo() is tether.todo()
    assert tether.background() is not tether.todo()
    assert tether.current() is tether.background()


def test_done_handles_are_equal_and_make_no_cycle():
    ctx, cancel = tether.with_cancel(tether.background())
    assert ctx.done() == ctx.done()
    assert hash(ctx.done()) == hash(ctx.done())
    # A value child shares its parent's cancellation, and so its handle.
    assert tether.with_value(ctx, "k", 1).done() == ctx.done()
    other, cancel_other = tether.with_cancel(tether.background())
    assert other.done() != ctx.done()
    cancel_other()
    cancel()
    # An ended context is freed by reference counting alone: nothing it holds
    # (its Done handle included) points back at it.
    ref = weakref.ref(ctx)
    ctx.done().wait(0)
    gc.disable()
    try:
        del ctx, cancel
        assert ref() is None
    finally:
        gc.enable()


def test_key_is_compared_by_identity_and_not_picklable():
    a = tether.Key[str]("request_id")
    b = tether.Key[str]("request_id")
    assert a != b
    assert a == a
    assert repr(a) == "tether.Key('request_id')"
    with pytest.raises(TypeError, match=r"^tether: "):
        pickle.dumps(a)


# --------------------------------------------------------------------------------------
# Errors


def test_error_hierarchy():
    assert issubclass(tether.ContextError, Exception)
    assert issubclass(tether.Canceled, tether.ContextError)
    assert issubclass(tether.DeadlineExceeded, tether.ContextError)
    assert issubclass(tether.DeadlineExceeded, TimeoutError)  # Go: Timeout() is true
    assert not issubclass(tether.Canceled, TimeoutError)
    assert issubclass(tether.LostCancelWarning, ResourceWarning)


def test_error_strings():
    assert str(tether.Canceled()) == "context canceled"
    assert str(tether.DeadlineExceeded()) == "context deadline exceeded"
    ctx, cancel = tether.with_cancel(tether.background())
    late, cancel_late = tether.with_timeout(tether.background(), -1)
    cancel()
    assert str(ctx.err()) == "context canceled"
    assert str(late.err()) == "context deadline exceeded"
    assert repr(ctx).endswith("[context canceled]>")
    assert repr(late).endswith("[context deadline exceeded]>")
    cancel_late()


def test_except_timeout_error_catches_a_deadline():
    ctx, cancel = tether.with_timeout(tether.background(), 0)
    with pytest.raises(TimeoutError):
        ctx.check()
    cancel()


def test_check_raises_a_fresh_error_with_the_cause_chained():
    ctx, cancel = tether.with_cancel(tether.background())
    assert ctx.check() is None
    reason = ConnectionError("upstream gone")
    cancel(reason)
    errors = []
    for _ in range(2):
        with pytest.raises(tether.Canceled) as info:
            ctx.check()
        errors.append(info.value)
    assert errors[0] is not errors[1], "check() must raise a fresh exception each time"
    assert errors[0] is not ctx.err()
    assert all(e.__cause__ is reason for e in errors)
    assert ctx.err() is ctx.err()  # err() is stable


def test_repr_shows_lineage_and_state():
    REQUEST_ID = tether.Key[str]("request_id")
    parent, cancel = tether.with_cancel(tether.background())
    ctx = tether.with_value(parent, REQUEST_ID, "a1b2")
    timed, cancel2 = tether.with_timeout(ctx, 60)
    r = repr(timed)
    assert r.startswith(
        "<tether.Context background.with_cancel.with_value(request_id).with_deadline("
    )
    assert r.endswith("[live]>")
    cancel()
    assert repr(timed).endswith("[context canceled]>")
    assert "with_value(request_id)" in repr(ctx)
    assert repr(tether.todo()) == "<tether.Context todo [live]>"
    assert repr(tether.without_cancel(timed)).endswith(".without_cancel [live]>")
    cancel2()


def test_repr_shows_the_values_an_inbound_context_carries_in_its_own_node():
    from tether import propagation

    tenant = tether.Key[str]("tenant")
    policy = propagation.Policy(trusted=("127.0.0.0/8",), identity=(("x-tenant", tenant),))
    headers = [(b"x-request-timeout", b"2S"), (b"x-tenant", b"acme")]
    ctx, cancel = propagation.extract(tether.background(), headers, peer="127.0.0.1", policy=policy)
    r = repr(ctx)
    assert r.startswith("<tether.Context background.with_deadline(in ")
    assert r.endswith("+values(request_id, tenant) [live]>")
    inner, cancel2 = propagation.extract(ctx, [])  # a fresh request id, the tenant kept
    assert repr(inner).endswith(
        "+values(request_id, tenant).with_cancel+values(request_id) [live]>"
    )
    timed, cancel3 = tether.with_timeout(inner, 1)  # shares its parent's values: none shown
    r = repr(timed)
    assert r.endswith(" [live]>")
    assert ".with_cancel+values(request_id).with_deadline(in " in r
    assert r.count("+values") == 2  # the deadline node adds none of its own
    cancel3()
    cancel2()
    cancel()


def test_repr_of_a_deep_chain_stays_short():
    ctx = tether.background()
    for i in range(200):
        ctx = tether.with_value(ctx, i, i)
    assert len(repr(ctx)) < 500


def test_scope_is_the_pair_and_a_context_manager():
    scope = tether.with_cancel(tether.background())
    assert isinstance(scope, tuple)
    assert isinstance(scope, tether.Scope)
    ctx, cancel = scope
    assert scope.ctx is ctx
    assert scope.cancel is cancel
    assert isinstance(cancel, tether.CancelFunc)
    with scope as entered:
        assert entered is ctx
        assert tether.current() is ctx
    assert isinstance(ctx.err(), tether.Canceled)
    assert tether.current() is tether.background()


def test_cancel_is_idempotent_and_returns_none():
    ctx, cancel = tether.with_cancel(tether.background())
    first = ValueError("first")
    assert cancel(first) is None
    assert cancel(ValueError("second")) is None
    assert cancel() is None
    assert tether.cause(ctx) is first


# --------------------------------------------------------------------------------------
# Types from the user's side


def test_typed_example_passes_mypy_strict(tmp_path_factory, run_mypy):
    proc = run_mypy(TYPED_EXAMPLE)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    # ...and mypy really sees tether's types: a wrong claim is an error.
    wrong = tmp_path_factory.mktemp("typed") / "wrong.py"
    wrong.write_text(
        "from typing import assert_type\n"
        "import tether\n"
        "K = tether.Key[str]('k')\n"
        "ctx, cancel = tether.with_cancel(tether.background())\n"
        "assert_type(ctx.value(K), int | None)\n"
        "tether.with_timeout(ctx, '5')\n"
    )
    proc = run_mypy(wrong)
    assert proc.returncode == 1
    assert "wrong.py:5: error" in proc.stdout
    assert "wrong.py:6: error" in proc.stdout


def test_typed_example_runs():
    proc = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error", str(TYPED_EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
