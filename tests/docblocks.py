"""Running the guides' examples (not a test module): one way, shared by every docs test.

``blocks(path)`` returns the ```python blocks of a guide; ``run(code)`` runs one in a
fresh interpreter as a user would paste it (``-X dev``, ResourceWarnings as errors, the
project root as the working directory), fails the test if it exits non-zero or leaves
the signs of a sloppy example on stderr, and returns the finished process.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)

# Logged errors may print a traceback on stderr (some examples show a failure on
# purpose); these would mean the example itself is sloppy.
SLOPPY = ("Exception ignored", "Task was destroyed", "ResourceWarning", "LostCancelWarning")


def blocks(path: Path) -> list[str]:
    return FENCE.findall(path.read_text())


def run(
    code: str, timeout: float = 60, args: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error::ResourceWarning", *args, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for bad in SLOPPY:
        assert bad not in proc.stderr, proc.stderr
    return proc
