"""tether.idempotency's public surface: exports, module paths, docstrings."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest
from tests.test_docstrings import CHECKLIST

import tether
from tether import idempotency

# Types whose contract is the type itself (errors, a result record, a key), not a call.
NOT_CALLS = {"Claim", "FingerprintMismatch", "IDEMPOTENCY_KEY", "StoreError"}


def test_all_is_sorted_complete_and_resolvable() -> None:
    names = idempotency.__all__
    assert names == sorted(names)
    assert len(set(names)) == len(names)
    public = {n for n in dir(idempotency) if not n.startswith("_")}
    assert public == set(names)
    for n in names:
        assert getattr(idempotency, n) is not None


@pytest.mark.parametrize("name", idempotency.__all__)
def test_exports_show_a_public_module(name: str) -> None:
    obj = getattr(idempotency, name)
    if isinstance(obj, tether.Key):
        assert obj is tether._keys.IDEMPOTENCY_KEY
        return
    assert obj.__module__ == "tether.idempotency"


def public_callables():  # type: ignore[no-untyped-def]
    for name in idempotency.__all__:
        if name in NOT_CALLS:
            continue
        obj = getattr(idempotency, name)
        yield name, obj  # a class's own docstring documents its constructor
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if attr.startswith("_") and attr != "__call__":
                    continue
                if callable(member):
                    yield f"{name}.{attr}", member


CALLABLES = sorted(public_callables(), key=lambda x: x[0])


@pytest.mark.parametrize(("name", "obj"), CALLABLES, ids=[n for n, _ in CALLABLES])
def test_docstring_states_the_checklist(name: str, obj: object) -> None:
    low = (inspect.getdoc(obj) or "").lower()
    missing = [item for item, words in CHECKLIST.items() if not any(w in low for w in words)]
    assert not missing, f"{name}: docstring does not state {missing}"


def test_stores_implement_every_step() -> None:
    steps = ("begin", "renew", "complete", "release", "sweep", "aclose", "close")
    for cls in (idempotency.SQLiteStore, idempotency.PostgresStore, idempotency.RedisStore):
        for step in steps:
            assert step in vars(cls), f"{cls.__name__}.{step}"


TYPED = Path(__file__).resolve().parent / "typed_idempotency_example.py"


def test_typed_example_passes_mypy_strict(run_mypy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    proc = run_mypy(TYPED)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # ...and mypy sees the types: a URL where a store goes, a sync job fn, fail
    wrong = tmp_path / "wrong_idempotency.py"
    wrong.write_text(
        "import tether\n"
        "from tether import idempotency\n"
        "async def app(scope: dict, receive: object, send: object) -> None: ...\n"
        "idempotency.IdempotencyMiddleware(app, 'sqlite:///x.db')\n"
        "def fn(ctx: tether.Context) -> int: return 1\n"
        "async def main() -> None:\n"
        "    s = idempotency.SQLiteStore('x')\n"
        "    await idempotency.run(tether.background(), s, 'k', 'f', fn)\n"
    )
    proc = run_mypy(wrong)
    assert proc.returncode == 1
    assert ':4: error: Argument 2 to "IdempotencyMiddleware"' in proc.stdout, proc.stdout
    assert ':8: error: Argument 5 to "run"' in proc.stdout, proc.stdout


def test_typed_example_runs() -> None:
    proc = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error", str(TYPED)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok 1"
