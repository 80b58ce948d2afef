"""tether.lifecycle's public surface: exports, module paths, docstrings, import cost."""

from __future__ import annotations

import dataclasses
import inspect
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tests.test_docstrings import CHECKLIST

import tether
from tether import lifecycle

# Types whose contract is the type itself (errors, snapshots, keys), not a call.
NOT_CALLS = {
    "REQUEST_ID",
    "WORKER",
    "ComponentExited",
    "ComponentFailed",
    "DrainTimeout",
    "QueueFull",
    "Rejected",
    "ShutdownRequested",
    "ShuttingDown",
    "SignalReceived",
}


def test_all_is_sorted_complete_and_resolvable():
    names = lifecycle.__all__
    assert names == sorted(names)
    assert len(set(names)) == len(names)
    for n in names:
        assert getattr(lifecycle, n) is not None
    public = {n for n in dir(lifecycle) if not n.startswith("_")}
    assert public == set(names)


@pytest.mark.parametrize("name", lifecycle.__all__)
def test_exports_show_a_public_module(name):
    obj = getattr(lifecycle, name)
    if isinstance(obj, tether.Key):
        return
    expected = "tether" if name == "signal_context" else "tether.lifecycle"
    assert obj.__module__ == expected


def test_signal_context_is_also_top_level():
    assert tether.signal_context is lifecycle.signal_context


def public_callables():
    for name in lifecycle.__all__:
        if name in NOT_CALLS:
            continue
        obj = getattr(lifecycle, name)
        if inspect.isclass(obj):
            if dataclasses.is_dataclass(obj):
                continue
            for attr, member in vars(obj).items():
                if attr.startswith("_") and attr not in {"__call__"}:
                    continue
                if callable(member) or isinstance(member, property):
                    yield f"{name}.{attr}", member
        else:
            yield name, obj


CALLABLES = sorted(public_callables())


@pytest.mark.parametrize(("name", "obj"), CALLABLES, ids=[n for n, _ in CALLABLES])
def test_docstring_states_the_checklist(name, obj):
    low = (inspect.getdoc(obj) or "").lower()
    missing = [item for item, words in CHECKLIST.items() if not any(w in low for w in words)]
    assert not missing, f"{name}: docstring does not state {missing}"


@pytest.mark.parametrize(
    "name", [n for n in lifecycle.__all__ if n not in {"REQUEST_ID", "WORKER"}]
)
def test_every_public_name_says_when_it_was_added(name):
    assert "Added in 0.1" in (inspect.getdoc(getattr(lifecycle, name)) or "")


def test_import_costs():
    code = textwrap.dedent(
        """
        import json, sys
        before = set(sys.modules)
        import tether
        after_tether = set(sys.modules)
        import tether.lifecycle
        tether.lifecycle.Supervisor
        new = set(sys.modules)
        print(json.dumps({
            "asyncio_with_tether": "asyncio" in after_tether,
            "outside_stdlib": sorted(
                m for m in new - before
                if m.partition(".")[0] not in sys.stdlib_module_names
                and m.partition(".")[0] != "tether"
            ),
        }))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out == {"asyncio_with_tether": False, "outside_stdlib": []}


def test_unknown_attribute():
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        lifecycle.Nope


TYPED = Path(__file__).resolve().parent / "typed_lifecycle_example.py"


def test_typed_example_passes_mypy_strict(tmp_path_factory, run_mypy):
    proc = run_mypy(TYPED)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    # ...and mypy sees the types: wrong arguments for a detached job or a pool item fail.
    wrong = tmp_path_factory.mktemp("typed") / "wrong_lifecycle.py"
    wrong.write_text(
        "import tether\n"
        "from tether import lifecycle\n"
        "def audit(ctx: tether.Context, action: str) -> None: ...\n"
        "def handle(ctx: tether.Context, n: int) -> None: ...\n"
        "lifecycle.DetachedRunner().go(tether.background(), audit, 3)\n"
        "lifecycle.WorkerPool(handle).submit('x')\n"
    )
    proc = run_mypy(wrong)
    assert proc.returncode == 1
    assert "wrong_lifecycle.py:5: error" in proc.stdout
    assert "wrong_lifecycle.py:6: error" in proc.stdout


def test_typed_example_runs():
    proc = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error", str(TYPED)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok 0"
