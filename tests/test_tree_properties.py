"""A hypothesis state machine over the context tree, checked against a model.

Random derive (with_cancel / with_timeout / with_deadline / with_value / without_cancel),
cancel (with and without a cause), expire (FakeClock.advance) and value operations, some
run from worker threads, some concurrently. After every step the real tree must match
the model exactly (error, cause, deadline, remaining, values, registration, armed timers),
and the invariants hold on their own terms: the descendants of an ended context are
ended, cancellation never reaches ancestors, deadlines never grow down the tree.

Concurrent steps are checked for linearizability: the outcome must equal the model's
outcome for some serial order of the operations.
"""

from __future__ import annotations

import gc
import itertools
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import tether
from tether.testing import FakeClock

KEYS: list[Any] = [tether.Key("a"), tether.Key("b"), "plain"]
VALUES: list[Any] = [None, 1, "x"]
DURATIONS = [-1.0, 0.0, 0.25, 0.5, 1.0, 2.0, 5.0]  # exact in binary: no rounding games
STEPS = [0.0, 0.25, 0.5, 1.0, 3.0]
MAX_NODES = 40

OWNERS = {"bg", "cancel", "timeout", "deadline"}

# tests/test_faults.py reruns this machine with the collector running very often, so that
# the finalizers of the `garbage` rule cancel from inside tether's own bookkeeping.
if os.environ.get("TETHER_GC_PRESSURE") == "1":
    gc.set_threshold(5, 1, 1)


def _abandon_scope(parent: tether.Context) -> None:
    """Cyclic garbage whose finalizer cancels a private child of ``parent``."""

    # try/finally, not `with scope:`: on CPython 3.10/3.11 a ContextVar.set re-entered
    # by the collector while another ContextVar.set runs can crash the interpreter itself
    # (python/cpython#148891; docs/design.md, "The core survives faults").
    def gen():
        _ctx, cancel = tether.with_cancel(parent)
        try:
            yield
        finally:
            cancel()

    g = gen()
    next(g)
    cycle: list[Any] = [g]
    cycle.append(cycle)


@dataclass(eq=False)
class Node:
    ctx: tether.Context
    parent: Node | None
    kind: str  # bg | cancel | timeout | deadline | value | without
    seq: int
    cancel: tether.CancelFunc | None = None
    key: Any = None
    value: Any = None
    deadline: float | None = None  # the effective deadline (the model's)
    dcause: BaseException | None = None
    armed: bool = False  # has a timer of its own, in the model
    children: list[Node] = field(default_factory=list)

    def owner(self) -> Node:
        n = self
        while n.kind not in OWNERS:
            n = n.parent if n.kind == "value" else ROOT_SENTINEL[0]  # type: ignore[assignment]
        return n


ROOT_SENTINEL: list[Node] = []  # [the background node] of the running machine


# The model's state of each owner: (error type or None, cause or None). Kept apart from
# the nodes so that a concurrent step can try every serial order on copies.
State = dict[int, tuple[type | None, Any]]


class Model:
    def __init__(self, nodes: list[Node], state: State, now: float) -> None:
        self.nodes = nodes
        self.state = dict(state)
        self.now = now
        self.armed = {n.seq for n in nodes if n.armed}

    def err(self, n: Node) -> type | None:
        return self.state[n.owner().seq][0]

    def cause(self, n: Node) -> Any:
        return self.state[n.owner().seq][1]

    def _owner_parent(self, n: Node) -> Node | None:
        if n.kind == "bg":
            return None
        assert n.parent is not None
        return n.parent.owner()

    def _end_subtree(self, root: Node, err: type, cause: Any) -> None:
        for n in self.nodes:
            if n.kind not in OWNERS or n.kind == "bg" or self.state[n.seq][0] is not None:
                continue
            a: Node | None = n
            while a is not None and a is not root:
                a = self._owner_parent(a)
            if a is root:
                self.state[n.seq] = (err, cause)
                self.armed.discard(n.seq)

    def cancel(self, n: Node, cause: Any) -> None:
        if self.state[n.seq][0] is None:
            self._end_subtree(n, tether.Canceled, cause)

    def advance(self, dt: float) -> None:
        self.now += dt
        due = sorted(
            (n for n in self.nodes if n.seq in self.armed and n.deadline <= self.now),
            key=lambda n: (n.deadline, n.seq),
        )
        for n in due:
            self.armed.discard(n.seq)
            if self.state[n.seq][0] is None:
                self._end_subtree(n, tether.DeadlineExceeded, n.dcause)


def value_of(n: Node, key: Any) -> Any:
    a: Node | None = n
    while a is not None:
        if a.kind == "value" and a.key == key:
            return a.value
        a = a.parent
    return None


class TreeMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(start=1000.0)
        self.clock.__enter__()
        self.seq = itertools.count()
        root = Node(tether.background(), None, "bg", next(self.seq))
        ROOT_SENTINEL[:] = [root]
        self.nodes: list[Node] = [root]
        self.state: State = {root.seq: (None, None)}
        self.now = 1000.0

    def teardown(self) -> None:
        try:
            for n in self.nodes:
                if n.cancel is not None:
                    n.cancel()
        finally:
            self.clock.__exit__(None, None, None)

    # -- helpers ------------------------------------------------------------------------

    def model(self) -> Model:
        m = Model(self.nodes, self.state, self.now)
        return m

    def adopt(self, m: Model) -> None:
        self.state = m.state
        self.now = m.now
        for n in self.nodes:
            n.armed = n.seq in m.armed

    def cancellable(self) -> list[Node]:
        return [n for n in self.nodes if n.cancel is not None]

    def _derive(self, parent: Node, kind: str, d: float, key: Any, value: Any, with_cause: bool):
        """Call the API; return what it returned (no model update)."""
        dcause = RuntimeError(f"deadline cause {d}") if with_cause else None
        if kind == "cancel":
            return tether.with_cancel(parent.ctx), dcause
        if kind == "timeout":
            return tether.with_timeout(parent.ctx, d, dcause), dcause
        if kind == "deadline":
            return tether.with_deadline(parent.ctx, self.now + d, dcause), dcause
        if kind == "value":
            return tether.with_value(parent.ctx, key, value), None
        return tether.without_cancel(parent.ctx), None

    def _record(self, parent, kind, d, key, value, made, dcause) -> None:
        n = Node(made if kind in {"value", "without"} else made[0], parent, kind, next(self.seq))
        parent.children.append(n)
        if kind in {"value", "without"}:
            n.key, n.value = key, value
            n.deadline = None if kind == "without" else parent.deadline
            self.nodes.append(n)
            return
        n.cancel = made[1]
        p = parent.owner()
        pd = parent.deadline
        timer = False
        n.deadline = pd
        if kind in {"timeout", "deadline"}:
            want = self.now + d
            if pd is None or want < pd:
                n.deadline, n.dcause, timer = want, dcause, True
        perr, pcause = self.state[p.seq]
        if perr is not None:
            self.state[n.seq] = (perr, pcause)
        elif timer and d <= 0:
            self.state[n.seq] = (tether.DeadlineExceeded, dcause)
        else:
            self.state[n.seq] = (None, None)
            n.armed = timer
        self.nodes.append(n)

    # -- rules --------------------------------------------------------------------------

    @precondition(lambda self: len(self.nodes) < MAX_NODES)
    @rule(
        i=st.one_of(st.integers(-3, -1), st.integers(0, 10**6)),  # often: a recent node
        kind=st.sampled_from(["cancel", "timeout", "deadline", "value", "without"]),
        d=st.sampled_from(DURATIONS),
        key=st.sampled_from(KEYS),
        value=st.sampled_from(VALUES),
        with_cause=st.booleans(),
        in_thread=st.booleans(),
    )
    def derive(self, i, kind, d, key, value, with_cause, in_thread):
        parent = self.nodes[i if -len(self.nodes) <= i < 0 else i % len(self.nodes)]
        if in_thread:
            out: list[Any] = []
            t = threading.Thread(
                target=lambda: out.append(self._derive(parent, kind, d, key, value, with_cause))
            )
            t.start()
            t.join(10)
            assert not t.is_alive()
            made, dcause = out[0]
        else:
            made, dcause = self._derive(parent, kind, d, key, value, with_cause)
        self._record(parent, kind, d, key, value, made, dcause)

    @precondition(lambda self: len(self.nodes) < MAX_NODES)
    @rule(
        i=st.integers(0, 10**6),
        ds=st.lists(st.sampled_from(DURATIONS[2:]), min_size=2, max_size=3),
        kind=st.sampled_from(["timeout", "deadline"]),
    )
    def derive_nested_timers(self, i, ds, kind):
        """A chain of timed contexts, each asking for an earlier deadline than its parent,
        each with its own cause: expiring them together shows the firing order."""
        parent = self.nodes[i % len(self.nodes)]
        for d in sorted(ds, reverse=True):
            made, dcause = self._derive(parent, kind, d, None, None, True)
            self._record(parent, kind, d, None, None, made, dcause)
            parent = self.nodes[-1]

    @precondition(lambda self: any(n.cancel is not None for n in self.nodes))
    @rule(i=st.integers(0, 10**6), with_cause=st.booleans(), in_thread=st.booleans())
    def cancel(self, i, with_cause, in_thread):
        cs = self.cancellable()
        n = cs[i % len(cs)]
        cause = RuntimeError(f"cancel {n.seq}") if with_cause else None
        if in_thread:
            t = threading.Thread(target=n.cancel, args=(cause,))
            t.start()
            t.join(10)
            assert not t.is_alive()
        else:
            n.cancel(cause)
        m = self.model()
        m.cancel(n, cause)
        self.adopt(m)

    @rule(i=st.integers(0, 10**6))
    def garbage(self, i):
        """A generator suspended inside `with with_cancel(node)` becomes cyclic garbage:
        whenever the collector frees it (any allocation, on any thread), its scope
        cancels its private child. The model's nodes must not notice."""
        _abandon_scope(self.nodes[i % len(self.nodes)].ctx)

    @rule(i=st.integers(0, 10**6))
    def read_in_thread(self, i):
        """Values, error and cause read from another thread agree with the model."""
        n = self.nodes[i % len(self.nodes)]
        m = self.model()
        out: list[Any] = []
        t = threading.Thread(
            target=lambda: out.append(
                ([n.ctx.value(k) for k in KEYS], n.ctx.err(), tether.cause(n.ctx))
            )
        )
        t.start()
        t.join(10)
        values, err, cause = out[0]
        assert values == [value_of(n, k) for k in KEYS]
        assert (type(err) if err is not None else None) == m.err(n)
        want = m.cause(n)
        assert cause is (err if want is None else want)

    @rule(dt=st.sampled_from(STEPS))
    def advance(self, dt):
        self.clock.advance(dt)
        m = self.model()
        m.advance(dt)
        self.adopt(m)

    @precondition(lambda self: len(self.nodes) > 2)
    @rule(
        ops=st.lists(
            st.one_of(
                st.tuples(st.just("cancel"), st.integers(0, 10**6), st.booleans()),
                st.tuples(st.just("advance"), st.sampled_from(STEPS), st.just(False)),
            ),
            min_size=2,
            max_size=4,
        )
    )
    def concurrently(self, ops):
        cs = self.cancellable()
        if not cs:
            ops = [op for op in ops if op[0] == "advance"]
        planned = []
        for k, (what, arg, with_cause) in enumerate(ops):
            if what == "cancel":
                n = cs[arg % len(cs)]
                planned.append(("cancel", n, RuntimeError(f"op {k}") if with_cause else None))
            else:
                planned.append(("advance", arg, None))
        start = threading.Barrier(len(planned))

        def run(op):
            start.wait(10)
            if op[0] == "cancel":
                op[1].cancel(op[2])
            else:
                self.clock.advance(op[1])

        threads = [threading.Thread(target=run, args=(op,)) for op in planned]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
            assert not t.is_alive(), "deadlock"
        actual = self.snapshot()
        for order in itertools.permutations(planned):
            m = self.model()
            for op in order:
                if op[0] == "cancel":
                    m.cancel(op[1], op[2])
                else:
                    m.advance(op[1])
            if self.expected(m) == actual:
                self.adopt(m)
                return
        raise AssertionError(f"no serial order of {planned} explains {actual}")

    # -- checks -------------------------------------------------------------------------

    def snapshot(self):
        return (
            tuple(
                (type(n.ctx.err()) if n.ctx.err() is not None else None, _cause_id(n.ctx))
                for n in self.nodes
            ),
            self.clock.timers(),
        )

    def expected(self, m: Model):
        out = []
        for n in self.nodes:
            err = m.err(n)
            if err is None:
                out.append((None, None))
            else:
                cause = m.cause(n)
                out.append((err, "err" if cause is None else id(cause)))
        return (tuple(out), len({s for s in m.armed if m.state[s][0] is None}))

    @invariant()
    def matches_the_model(self):
        m = self.model()
        assert self.clock.now() == self.now
        assert self.snapshot() == self.expected(m)
        for n in self.nodes:
            ctx = n.ctx
            assert ctx.done().is_set() == (m.err(n) is not None)
            assert ctx.deadline() == n.deadline
            if n.deadline is None:
                assert ctx.remaining() is None
            else:
                assert ctx.remaining() == n.deadline - self.now
            for k in KEYS:
                assert ctx.value(k) == value_of(n, k)

    @invariant()
    def tree_invariants(self):
        for n in self.nodes:
            p = n.parent
            if p is None:
                continue
            if n.kind != "without":
                # descendants of an ended context are ended, with its error
                if p.ctx.err() is not None:
                    assert n.ctx.err() is not None
                # deadlines never grow down the tree
                if p.ctx.deadline() is not None:
                    assert n.ctx.deadline() is not None
                    assert n.ctx.deadline() <= p.ctx.deadline()
            else:
                assert n.ctx.err() is None
                assert n.ctx.deadline() is None
            if isinstance(n.ctx.err(), tether.DeadlineExceeded) and n.kind != "bg":
                assert n.ctx.remaining() is not None
                assert n.ctx.remaining() <= 0  # never early

    @invariant()
    def registration(self):
        # Live owners are registered with their owning parent (unless it is background);
        # ended ones are unlinked, so nothing keeps them alive.
        for n in self.nodes:
            if n.kind not in {"cancel", "timeout", "deadline"}:
                continue
            op = n.parent.owner()
            children = op.ctx._children or set()
            if n.ctx.err() is None and op.kind != "bg":
                assert n.ctx in children
            else:
                assert n.ctx not in children
            assert (n.ctx._entry is not None) == (n.armed and n.ctx.err() is None)


def _cause_id(ctx: tether.Context):
    c = tether.cause(ctx)
    if c is None:
        return None
    return "err" if c is ctx.err() else id(c)


TreeMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None, print_blob=True
)
TestTree = TreeMachine.TestCase
