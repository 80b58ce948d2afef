"""The I/O bindings' public surface: docstrings, lazy imports, the missing-extra error."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import tether
from test_docstrings import CHECKLIST

MODULES = ["sqlite3", "psycopg", "asyncpg", "redis"]
LIBRARY = {"sqlite3": "sqlite3", "psycopg": "psycopg", "asyncpg": "asyncpg", "redis": "redis"}


@pytest.mark.parametrize("name", MODULES)
def test_bind_docstring_states_the_checklist(name):
    mod = importlib.import_module(f"tether.integrations.{name}")
    assert mod.__all__ == sorted(mod.__all__)
    assert "bind" in mod.__all__
    doc = (inspect.getdoc(mod.bind) or "").lower()
    missing = [item for item, words in CHECKLIST.items() if not any(w in doc for w in words)]
    assert not missing, f"{name}.bind: docstring does not state {missing}"
    assert "added in 0.1" in (mod.__doc__ or "").lower()


def test_importing_tether_and_the_modules_loads_no_driver():
    code = (
        "import sys, tether\n"
        "import tether.integrations.sqlite3, tether.integrations.psycopg\n"
        "import tether.integrations.asyncpg, tether.integrations.redis\n"
        "bad = [m for m in ('psycopg', 'asyncpg', 'redis', 'sqlite3') if m in sys.modules]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.mark.parametrize("name", MODULES)
def test_a_missing_driver_names_the_extra(name, monkeypatch):
    mod = importlib.import_module(f"tether.integrations.{name}")
    monkeypatch.setitem(sys.modules, LIBRARY[name], None)  # `import x` now raises
    with pytest.raises(ImportError) as ei:
        mod.bind(tether.background(), object())  # type: ignore[arg-type]
    assert str(ei.value) == (
        f"tether: tether.integrations.{name} needs the '{name}' extra: pip install 'tether[{name}]'"
    )


TYPED = Path(__file__).resolve().parent / "typed_io_example.py"


def test_typed_example_passes_mypy_strict(tmp_path_factory, run_mypy):
    proc = run_mypy(TYPED)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # ...and mypy sees the types: a str is not a connection, a None is not a context.
    wrong = tmp_path_factory.mktemp("typed") / "wrong_io.py"
    wrong.write_text(
        "import sqlite3\n"
        "import tether\n"
        "from tether.integrations import sqlite3 as tsqlite\n"
        "tsqlite.bind(tether.background(), 'db.sqlite')\n"
        "tsqlite.bind(None, sqlite3.connect(':memory:'))\n"
    )
    proc = run_mypy(wrong)
    assert proc.returncode == 1
    assert "wrong_io.py:4: error" in proc.stdout
    assert "wrong_io.py:5: error" in proc.stdout


def test_typed_example_runs():
    proc = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error", str(TYPED)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith("ok ")
