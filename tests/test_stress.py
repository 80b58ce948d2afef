"""Stress: 8 threads, 100,000 random derive/cancel operations on one shared tree, with
real deadlines firing underneath. It must finish (no deadlock), and once everything is
cancelled leave nothing behind: no armed timer, no extra thread, no reachable context."""

from __future__ import annotations

import faulthandler
import gc
import random
import sys
import threading
import time
import weakref
from typing import Any

import pytest

import tether
from tether import _clock, _context, _runner

bg = tether.background
THREADS = 8
OPS = 100_000
POOL_MAX = 2_000
KEY = tether.Key[int]("n")


def live_timers() -> int:
    with _context._LOCK:
        return _context._REAL_TIMERS.live()


def tether_threads() -> list[threading.Thread]:
    return [
        t
        for t in threading.enumerate()
        if t.name.startswith(("tether-timer", "tether-after-func-")) and t.is_alive()
    ]


class Tree:
    """The shared tree: a pool of contexts to derive from and cancel, and every cancel
    function ever made (so that none is dropped un-called, and all can be cancelled)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pool: list[tuple[tether.Context, tether.CancelFunc | None]] = []
        self.cancels: list[tether.CancelFunc] = []
        self.refs: list[weakref.ref[tether.Context]] = []
        self.roots: list[tether.CancelFunc] = []
        self.after_func_runs = 0

    def add(self, ctx: tether.Context, cancel: tether.CancelFunc | None) -> None:
        with self.lock:
            self.refs.append(weakref.ref(ctx))
            if cancel is not None:
                self.cancels.append(cancel)
            self.pool.append((ctx, cancel))
            if len(self.pool) > POOL_MAX:
                # forget an old one (its cancel function stays in self.cancels)
                self.pool[random.randrange(len(self.pool))] = self.pool.pop()

    def pick(self, rng: random.Random) -> tuple[tether.Context, tether.CancelFunc | None]:
        with self.lock:
            return self.pool[rng.randrange(len(self.pool))]

    def new_root(self) -> None:
        ctx, cancel = tether.with_cancel(bg())
        with self.lock:
            self.roots.append(cancel)
        self.add(ctx, cancel)

    def on_after_func(self) -> None:
        with self.lock:
            self.after_func_runs += 1


def worker(tree: Tree, seed: int, n: int, errors: list[BaseException]) -> None:
    rng = random.Random(seed)
    try:
        for i in range(n):
            r = rng.random()
            ctx, cancel = tree.pick(rng)
            if r < 0.30:
                tree.add(*tether.with_cancel(ctx))
            elif r < 0.45:
                tree.add(*tether.with_timeout(ctx, 3600))
            elif r < 0.52:
                # short real deadlines: the timer thread expires subtrees concurrently
                tree.add(*tether.with_timeout(ctx, rng.uniform(0.0005, 0.02)))
            elif r < 0.60:
                tree.add(tether.with_value(ctx, KEY, i), None)
            elif r < 0.63:
                detached = tether.without_cancel(ctx)
                tree.add(detached, None)
                tree.add(*tether.with_cancel(detached))
            elif r < 0.88:
                if cancel is not None:
                    cancel(RuntimeError("stress") if rng.random() < 0.5 else None)
            elif r < 0.89:
                tether.after_func(ctx, tree.on_after_func)
            elif r < 0.8905:
                with tree.lock:
                    root = tree.roots[rng.randrange(len(tree.roots))]
                root()  # a large cascade
                tree.new_root()
            else:
                # readers: consistent views while others write
                err = ctx.err()
                if err is not None:
                    assert ctx.done().is_set()
                    assert tether.cause(ctx) is not None
                    assert isinstance(err, tether.Canceled | tether.DeadlineExceeded)
                    if isinstance(err, tether.DeadlineExceeded):
                        rem = ctx.remaining()
                        assert rem is not None
                        assert rem <= 0
                ctx.done().wait(0)
                ctx.value(KEY)
    except BaseException as e:  # reported by the test
        errors.append(e)


@pytest.mark.slow
def test_eight_threads_100_000_operations(monkeypatch):
    # tether's own threads exit sooner once idle, so that the test can wait for them
    monkeypatch.setattr(_clock, "IDLE_SECONDS", 0.1)
    monkeypatch.setattr(_runner, "IDLE_SECONDS", 0.1)
    threads_before = {t.ident for t in threading.enumerate()}
    timers_before = live_timers()
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)  # switch threads often: more interleavings
    tree = Tree()
    errors: list[BaseException] = []
    try:
        for _ in range(THREADS):
            tree.new_root()
        workers = [
            threading.Thread(
                target=worker, args=(tree, seed, OPS // THREADS, errors), name=f"stress-{seed}"
            )
            for seed in range(THREADS)
        ]
        t0 = time.monotonic()
        for t in workers:
            t.start()
        for t in workers:
            t.join(max(1.0, 120 - (time.monotonic() - t0)))
        stuck = [t.name for t in workers if t.is_alive()]
        if stuck:
            faulthandler.dump_traceback(all_threads=True)
            pytest.fail(f"deadlock: {stuck} still running after 120 s (stacks on stderr)")
    finally:
        sys.setswitchinterval(old_interval)
    assert not errors, errors[:3]

    made = len(tree.refs)
    assert made > OPS // 3
    for cancel in tree.cancels:
        cancel()
    del cancel
    assert live_timers() == timers_before, "cancelled contexts left armed timers"
    assert all(
        ctx is None or ctx.err() is not None or ctx._c is bg()
        for ctx in (ref() for ref in tree.refs[:: max(1, made // 1000)])
    )

    # Nothing reachable once the cancel functions and the pool are dropped.
    refs = tree.refs
    tree.pool.clear()
    tree.cancels.clear()
    tree.roots.clear()
    del tree, workers
    gc.collect()
    alive: list[Any] = [r() for r in refs if r() is not None]
    assert not alive, f"{len(alive)} of {made} contexts still reachable, e.g. {alive[:3]}"

    # No thread left: the workers joined; tether's timer and after_func threads exit.
    end = time.monotonic() + 15
    while True:
        extra = [t for t in threading.enumerate() if t.ident not in threads_before and t.is_alive()]
        if not extra and not tether_threads():
            break
        if time.monotonic() > end:
            faulthandler.dump_traceback(all_threads=True)
            names = {t.name for t in extra + tether_threads()}
            pytest.fail(f"threads left behind: {sorted(names)} (stacks on stderr)")
        time.sleep(0.01)
