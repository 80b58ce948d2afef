"""Row 6's memory and thread pass, run in a fresh process per implementation.

``python bench/_mem.py IMPL N`` creates ``N`` live deadlines with ``_deadlines.IMPLS[IMPL]``
and prints one JSON line: the growth of the resident set size (``/proc/self/statm``)
from just before the creation to when all are live, and the number of OS threads at
both points. RSS, not tracemalloc: tracing every allocation would distort the timing
pass, and this is what the operating system charges for. A fresh process keeps one
implementation's freed-but-retained memory from hiding another's growth.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import threading

import _deadlines

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


class Probe:
    def __init__(self) -> None:
        self.out: dict[str, int] = {}

    def start(self) -> None:
        gc.collect()
        self.out["rss_start"] = rss()
        self.out["threads_start"] = os_threads()

    def live(self) -> None:
        gc.collect()
        self.out["rss_live"] = rss()
        self.out["threads_live"] = os_threads()
        self.out["timer_threads"] = sum(t.name == "tether-timer" for t in threading.enumerate())


def main() -> None:
    impl, n = sys.argv[1], int(sys.argv[2])
    probe = Probe()
    create, cancel = _deadlines.IMPLS[impl][0](n, probe)
    out = dict(probe.out)
    out["rss_growth"] = out["rss_live"] - out["rss_start"]
    out["extra_threads"] = out["threads_live"] - out["threads_start"]
    print(json.dumps({"impl": impl, "n": n, "create": create, "cancel": cancel, **out}))


if __name__ == "__main__":
    main()
