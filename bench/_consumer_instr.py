"""Instructions per message of row Q1 (issue 10), for callgrind.

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        python bench/_consumer_instr.py KIND N STREAM [SRC [URL]]

Consumes the ``N`` entries of ``STREAM`` (filled beforehand, group ``g``: filling is
not counted) once, then deletes it; ``KIND`` ``tether`` (``Consumer``,
concurrency 1, prefetch 100) or ``loop`` (the hand-written ``XREADGROUP``/``XACK``
loop), with tether imported from ``SRC`` (default: this tree's ``src``).
``bench_consumer.py --instr`` runs it twice per cell (N and 2N) under callgrind and
prints the difference divided by N: the client's instructions per message (the Redis
server is another process, not counted), steady on a noisy shared machine.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

kind, n, stream = sys.argv[1], int(sys.argv[2]), sys.argv[3]
src = sys.argv[4] if len(sys.argv) > 4 else str(Path(__file__).resolve().parent.parent / "src")
url = sys.argv[5] if len(sys.argv) > 5 else "redis://127.0.0.1:6379/0"
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, src)

import tether  # noqa: E402  (first: bench_consumer then reuses this one)

assert tether.__file__.startswith(src), tether.__file__

import bench_consumer  # noqa: E402

if kind == "tether":
    asyncio.run(bench_consumer.tether_consumer(url, stream, n, 1, False, filled=True))
elif kind == "loop":
    asyncio.run(bench_consumer.hand_loop(url, stream, n, False, filled=True))
else:
    raise SystemExit(f"tether: KIND is tether or loop, got {kind!r}")
