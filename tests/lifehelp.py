"""Helpers shared by the lifecycle tests: a child interpreter for the fatal paths."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_child(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (SystemExit, BaseException, signals, loops)."""
    return subprocess.run(
        [sys.executable, "-X", "dev", "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def lines(proc: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """``key=value`` lines the child printed, as a dict."""
    out = {}
    for line in proc.stdout.splitlines():
        k, sep, v = line.partition("=")
        if sep:
            out[k.strip()] = v.strip()
    return out
