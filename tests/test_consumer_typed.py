"""tests/typed_consumer_example.py passes mypy --strict, and runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TYPED = Path(__file__).resolve().parent / "typed_consumer_example.py"


def test_typed_consumer_example_passes_mypy_strict(run_mypy):
    proc = run_mypy(TYPED)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_typed_consumer_example_runs():
    proc = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error", str(TYPED)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "acked 3"
