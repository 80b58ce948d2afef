"""Prometheus metrics for tether's contexts.

::

    from prometheus_client import start_http_server
    from tether.integrations import prometheus

    prometheus.instrument()          # into prometheus_client.REGISTRY
    start_http_server(9100)

Metrics (base units, ``_total`` counters):

- ``tether_contexts_created_total{kind}``: owning contexts derived (``with_cancel``,
  ``with_deadline`` — ``with_timeout`` included —, ``group``, ``task_group``,
  ``to_thread``, ``signal_context``);
- ``tether_contexts_ended_total{reason}``: ``canceled``, ``deadline``, ``parent`` (an
  ancestor's end ended it);
- ``tether_contexts_active``: derived since ``instrument()`` and not ended (nor
  garbage-collected un-cancelled);
- ``tether_context_lifetime_seconds``: histogram, creation to end, of the contexts
  derived since ``instrument()``;
- ``tether_inbound_budget_seconds``: histogram of the budgets inbound requests carried
  (reported by the server middleware through ``tether.integrations._events``);
  requests that sent none are counted in ``tether_inbound_budget_absent_total``;
- ``tether_budget_exhausted_total{where}``: requests whose budget ran out at a
  boundary (``asgi``, ``grpc``, ``outbound``...);
- ``tether_client_disconnects_total{where}``: requests whose client went away first
  (the 499s), reported by the middleware like the two above;
- ``tether_malformed_headers_total{header}``: inbound header values that
  ``tether.propagation.extract`` ignored (its ``malformed_headers()`` tally).

How it stays cheap: the core's observer hook (``tether._observe``) calls two plain
methods that update integers under one lock; the values become Prometheus metric
families only when scraped (a custom collector), so a derive+cancel pays no
``prometheus_client`` call. Times come from tether's clock, so ``FakeClock`` drives
the lifetime histogram in tests. Needs ``prometheus_client``:
``pip install 'tether[prometheus]'``.

Added in 0.1.
"""

from __future__ import annotations

import importlib
import itertools
import sys
import threading
import weakref
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from .. import _clock, _observe
from .._context import Context
from . import _events
from ._tags import need

need("prometheus_client", "prometheus", "prometheus")

from prometheus_client.core import (  # noqa: E402
    REGISTRY,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

__all__ = ["BUDGET_BUCKETS", "LIFETIME_BUCKETS", "Metrics", "instrument", "uninstrument"]

# Context lifetimes: from a sub-millisecond in-process timeout to a long stream.
_GIL = getattr(sys, "_is_gil_enabled", lambda: True)()
_ref = weakref.ref

LIFETIME_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
# Budgets callers send: typical RPC timeouts, up to minutes.
BUDGET_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)


class _Histogram:
    """Buckets, sum and count, updated without a lock.

    Each bucket is an ``itertools.count`` (``next()`` is one atomic C call). The sum is
    a float attribute: ``self.sum += v`` runs no Python code between its read and its
    write, so under the GIL no update is lost; free-threaded CPython (no GIL) takes
    ``lock`` for it.
    """

    __slots__ = ("bounds", "counts", "lock", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [itertools.count() for _ in range(len(self.bounds) + 1)]  # last: +Inf
        self.sum = 0.0
        self.lock = None if _GIL else threading.Lock()

    def observe(self, v: float) -> None:
        next(self.counts[bisect_left(self.bounds, v)])
        lock = self.lock
        if lock is None:
            self.sum += v
        else:
            with lock:
                self.sum += v

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        acc = 0
        buckets: list[tuple[str, float]] = []
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            acc += _count_of(n)
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), acc))
        return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=self.sum)


class Metrics:
    """The observer and collector that ``instrument()`` registers.

    Counts live here as plain integers; ``collect()`` turns them into metric families
    at scrape time. Its methods are called by tether (the observer and sink methods) and
    by ``prometheus_client`` (``describe``/``collect``), not by users. Each returned by
    ``instrument()`` is a new one, with counts from zero. Thread-safe, non-blocking;
    raises nothing.

    Added in 0.1.
    """

    def __init__(self) -> None:
        # The hot path (on_create/on_end) takes no lock: counters are itertools.count
        # objects (next() is atomic) and _born is a dict written by single operations.
        # _born maps id(ctx) -> (birth time, weak reference to ctx). An id found there
        # when a context ends is that context's own entry (a dead context's id can be
        # reused only by a context created later, whose on_create overwrote it); a
        # context freed without ending leaves a dead entry, pruned at scrape time. It
        # never keeps a context alive. _lock guards the rarely written parts.
        self._lock = threading.Lock()
        self._created: dict[str, Iterator[int]] = {}
        self._ended: dict[str, Iterator[int]] = {
            r: itertools.count() for r in ("canceled", "deadline", "parent")
        }
        self._born: dict[int, tuple[float, weakref.ref[Context]]] = {}
        self._lifetime = _Histogram(LIFETIME_BUCKETS)
        self._budget = _Histogram(BUDGET_BUCKETS)
        self._budget_absent = 0
        self._exhausted: dict[str, int] = {}
        self._disconnected: dict[str, int] = {}

    def _counter(self, table: dict[str, Iterator[int]], key: str) -> Iterator[int]:
        with self._lock:
            return table.setdefault(key, itertools.count())

    # observer (tether._observe): the hot path, a few C-level operations each (the
    # histogram update is inlined: a method call costs as much as the update)
    def on_create(self, ctx: Context, parent: Context, kind: str) -> None:
        """Observer: count a created owner. Non-blocking, lock-free, thread-safe; once per
        context (the core calls it once), even for one born already ended. Raises nothing."""
        try:
            next(self._created[kind])
        except KeyError:
            next(self._counter(self._created, kind))
        if ctx._err is None:  # a context born ended is never reported as ending
            self._born[id(ctx)] = (_clock.now(), _ref(ctx))

    def on_end(self, ctx: Context, reason: str) -> None:
        """Observer: count an ended owner and its lifetime. Non-blocking, lock-free,
        thread-safe; the core calls it once per ended context. Raises nothing."""
        try:
            next(self._ended[reason])
        except KeyError:
            next(self._counter(self._ended, reason))
        born = self._born.pop(id(ctx), None)
        if born is not None:
            t = _clock.now() - born[0]
            if t < 0.0:  # noqa: PLR1730 - cheaper than max() on this hot path
                t = 0.0
            h = self._lifetime
            next(h.counts[bisect_left(h.bounds, t)])
            if h.lock is None:
                h.sum += t
            else:
                with h.lock:
                    h.sum += t

    def _active(self) -> int:
        born = self._born
        dead = [(k, v) for k, v in born.copy().items() if v[1]() is None]
        for k, v in dead:
            got = born.pop(k, None)
            if got is not None and got is not v:  # a new context took the id meanwhile
                born.setdefault(k, got)
        return len(born)

    # sink (tether.integrations._events)
    def inbound_budget(self, seconds: float | None) -> None:
        """Sink: record one inbound budget (``None``: absent). Non-blocking (a short lock),
        thread-safe; each call records once, whether or not the request already ended.
        Raises nothing for numbers; ``TypeError`` for anything else."""
        with self._lock:
            if seconds is None:
                self._budget_absent += 1
            else:
                self._budget.observe(max(0.0, float(seconds)))

    def budget_exhausted(self, where: str) -> None:
        """Sink: count one exhausted budget at ``where``. Non-blocking (a short lock),
        thread-safe; each call counts once, for a request that already ended. Raises
        nothing."""
        with self._lock:
            self._exhausted[where] = self._exhausted.get(where, 0) + 1

    def client_disconnected(self, where: str) -> None:
        """Sink: count one client that went away at ``where``. Non-blocking (a short lock),
        thread-safe; each call counts once, for a request that already ended. Raises
        nothing."""
        with self._lock:
            self._disconnected[where] = self._disconnected.get(where, 0) + 1

    # collector (prometheus_client)
    def describe(self) -> list[Any]:
        """Collector: no metrics described up front (names are fixed), so registering never
        collects. Non-blocking, thread-safe, idempotent; unaffected by ended contexts.
        Raises nothing."""
        return []  # metric names are fixed; no need to collect at registration

    def collect(self) -> Iterator[Any]:
        """Collector: the metric families, built from the counts now. Non-blocking (short
        locks; prunes entries of contexts freed without ending), thread-safe; each call
        builds new families. Ended contexts count in the totals, not in active. Raises
        nothing."""
        active = self._active()
        with self._lock:
            created = {k: _count_of(c) for k, c in self._created.items()}
            ended = {k: _count_of(c) for k, c in self._ended.items()}
            lifetime = self._lifetime.family(
                "tether_context_lifetime_seconds",
                "Seconds from a context's creation to its end.",
            )
            budget = self._budget.family(
                "tether_inbound_budget_seconds",
                "Budgets (remaining seconds) that inbound requests carried.",
            )
            absent = self._budget_absent
            exhausted = dict(self._exhausted)
            disconnected = dict(self._disconnected)
        c = CounterMetricFamily(
            "tether_contexts_created", "Owning contexts derived.", labels=["kind"]
        )
        for kind, n in sorted(created.items()):
            c.add_metric([kind], n)
        yield c
        e = CounterMetricFamily(
            "tether_contexts_ended", "Owning contexts ended, by reason.", labels=["reason"]
        )
        for reason, n in sorted(ended.items()):
            e.add_metric([reason], n)
        yield e
        yield GaugeMetricFamily(
            "tether_contexts_active", "Contexts derived and not yet ended.", value=active
        )
        yield lifetime
        yield budget
        yield CounterMetricFamily(
            "tether_inbound_budget_absent",
            "Inbound requests that carried no budget.",
            value=absent,
        )
        x = CounterMetricFamily(
            "tether_budget_exhausted",
            "Requests whose budget ran out at a boundary.",
            labels=["where"],
        )
        for where, n in sorted(exhausted.items()):
            x.add_metric([where], n)
        yield x
        d = CounterMetricFamily(
            "tether_client_disconnects",
            "Requests whose client went away before the answer (499).",
            labels=["where"],
        )
        for where, n in sorted(disconnected.items()):
            d.add_metric([where], n)
        yield d
        malformed = _malformed_headers()
        if malformed is not None:
            h = CounterMetricFamily(
                "tether_malformed_headers",
                "Inbound deadline/request-id header values ignored as malformed.",
                labels=["header"],
            )
            for name, n in sorted(malformed.items()):
                h.add_metric([name], n)
            yield h


def _malformed_headers() -> dict[str, int] | None:
    """``tether.propagation.malformed_headers()``, or ``None`` where it does not exist."""
    try:
        fn = importlib.import_module("tether.propagation").malformed_headers
    except (ImportError, AttributeError):
        return None
    return dict(fn())


def _count_of(counter: Iterator[int]) -> int:
    """How many times ``next()`` was called on an ``itertools.count()``, without calling it."""
    # repr is "count(N)" on every CPython version (pickling support went in 3.14)
    return int(repr(counter)[6:-1])


_install_lock = threading.Lock()
_installed: tuple[Metrics, CollectorRegistry] | None = None


def instrument(registry: CollectorRegistry | None = None) -> Metrics:
    """Start counting contexts into ``registry`` (default ``prometheus_client.REGISTRY``).

    Registers a ``Metrics`` observer with the core and as a collector with
    ``registry``, and returns it. Idempotent: calling it again with the same registry
    returns the same ``Metrics``. Thread-safe; does not block beyond a short lock.
    Contexts derived before the call are not counted as created, active or in the
    lifetime histogram, but their ends are counted; contexts that already ended are not
    counted at all. Raises ``ValueError`` if tether is already instrumented into a
    different registry (call ``uninstrument()`` first).

    Added in 0.1.
    """
    global _installed
    reg = REGISTRY if registry is None else registry
    with _install_lock:
        if _installed is not None:
            metrics, current = _installed
            if current is reg:
                return metrics
            raise ValueError(
                "tether: already instrumented into another registry; "
                "call tether.integrations.prometheus.uninstrument() first"
            )
        metrics = Metrics()
        reg.register(metrics)
        _observe.add_observer(metrics)
        _events.set_sink(metrics)
        _installed = (metrics, reg)
        return metrics


def uninstrument() -> None:
    """Stop counting and unregister the collector; does nothing when not instrumented.

    Idempotent; thread-safe; non-blocking (a short lock). Counts are discarded: a
    later ``instrument()`` starts from zero. Contexts, live or already ended, are not
    affected. Raises nothing.

    Added in 0.1.
    """
    global _installed
    with _install_lock:
        if _installed is None:
            return
        metrics, reg = _installed
        _installed = None
        _observe.remove_observer(metrics)
        if _events._sink is metrics:
            _events.set_sink(None)
        try:
            reg.unregister(metrics)
        except KeyError:
            pass
