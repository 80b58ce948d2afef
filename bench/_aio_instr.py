"""Instructions per operation of rows a, a0, b (issue 7), for callgrind.

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        python bench/_aio_instr.py ROW KIND N [SRC]

Runs ``N`` operations of ``ROW`` (a, a0, b) for ``KIND`` (tether, asyncio) with tether
imported from ``SRC`` (default: this tree's ``src``). ``bench_aio.py --instr`` runs it
twice per cell (N and 2N) under callgrind and prints the difference divided by N: the
instructions of one operation, deterministic on a noisy shared machine.
"""

from __future__ import annotations

import sys
from pathlib import Path

row, kind, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
src = sys.argv[4] if len(sys.argv) > 4 else str(Path(__file__).resolve().parent.parent / "src")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, src)

import tether  # noqa: E402  (first: bench_aio then reuses this one)

assert tether.__file__.startswith(src), tether.__file__

import bench_aio  # noqa: E402

bench_aio._micro(kind, row, n)
