"""Run pytest with tether imported as on CPython before 3.11.6, whose ``RLock`` has no
``_recursion_count``: the core then falls back to ``_is_owned`` (``tether._context._rc``).

``python tests/run_rc_fallback.py PYTEST_ARGS...`` (tests/test_python_compat.py runs it):
tether is imported here, before pytest loads its plugins (tether's own among them).
"""

from __future__ import annotations

import _thread
import sys
import threading
from typing import Any


class _RLockBefore3116(_thread.RLock):  # type: ignore[misc]
    def __getattribute__(self, name: str) -> Any:
        if name == "_recursion_count":
            raise AttributeError(name)
        return super().__getattribute__(name)


def main() -> int:
    saved = threading.RLock
    threading.RLock = _RLockBefore3116  # type: ignore[misc,assignment]
    try:
        import tether._context as _context
    finally:
        threading.RLock = saved  # type: ignore[misc]
    if type(_context._LOCK) is not _RLockBefore3116 or _context._rc.__name__ != "_is_owned":
        print("tether: the fallback was not taken", _context._rc, file=sys.stderr)
        return 3
    import pytest

    return int(pytest.main(sys.argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
