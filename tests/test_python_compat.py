"""tether on every CPython 3.11+: the core's lock discipline needs the lock's recursion
count, which ``RLock`` exposes only from 3.11.6 on (Debian 12 ships 3.11.2)."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_core_suite_passes_without_rlock_recursion_count() -> None:
    """The fault-tolerance and Go-parity tests, with tether imported as on CPython
    before 3.11.6 (its RLock made to lack ``_recursion_count``)."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "run_rc_fallback.py"), "-q", "-p", "no:randomly",
         "-W", "ignore::pytest.PytestAssertRewriteWarning",
         "tests/test_faults.py", "tests/test_go_context.py", "tests/test_asyncio_scope.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout
    assert "failed" not in proc.stdout


def _older_pythons() -> list[str]:
    """CPython 3.11 interpreters on this machine older than 3.11.6 (the system's)."""
    found = []
    for exe in sorted(
        set(glob.glob("/usr/bin/python3.11") + glob.glob("/usr/local/bin/python3.11"))
    ):
        r = subprocess.run([exe, "-c", "import sys; print(*sys.version_info[:3])"],
                           capture_output=True, text=True, check=False)  # fmt: skip
        if r.returncode == 0 and tuple(map(int, r.stdout.split())) < (3, 11, 6):
            found.append(exe)
    return found


@pytest.mark.parametrize("exe", _older_pythons() or [None])
def test_an_older_cpython_311_imports_and_runs_the_core(exe: str | None) -> None:
    if exe is None:
        pytest.skip("no CPython 3.11 older than 3.11.6 on this machine (Debian 12's is 3.11.2)")
    code = (
        "import sys, threading, tether\n"
        "assert not hasattr(threading.RLock(), '_recursion_count'), sys.version\n"
        "ctx, cancel = tether.with_timeout(tether.background(), 0.05)\n"
        "assert ctx.done().wait(5) and isinstance(ctx.err(), tether.DeadlineExceeded)\n"
        "c2, cancel2 = tether.with_cancel(ctx)\n"
        "assert c2.err() is not None\n"
        "cancel2(); cancel()\n"
        "print('ok', sys.version_info[:3])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    r = subprocess.run([exe, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith("ok")
