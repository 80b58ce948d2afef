"""tests/typed_grpc_example.py passes mypy --strict (with types-grpcio) and runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TYPED = Path(__file__).resolve().parent / "typed_grpc_example.py"


def test_typed_grpc_example_passes_mypy_strict(tmp_path_factory, run_mypy):
    proc = run_mypy(TYPED)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    # ...and mypy sees the types: a wrong policy is an error.
    wrong = tmp_path_factory.mktemp("typed") / "wrong_grpc.py"
    wrong.write_text(
        "from tether.integrations.grpc import ServerInterceptor, ClientInterceptor\n"
        "ServerInterceptor(policy=2.0)\n"
        "ClientInterceptor(policy='fast')\n"
    )
    proc = run_mypy(wrong)
    assert proc.returncode == 1
    assert "wrong_grpc.py:2: error" in proc.stdout
    assert "wrong_grpc.py:3: error" in proc.stdout


def test_typed_grpc_example_runs():
    proc = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error", str(TYPED)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "budget seen by the server: 2.0" in proc.stdout
    assert "client gone: False {}" in proc.stdout
