"""TTH002: is the cancel of every derived pair used on every path out of the function?

The analysis follows ``go vet``'s ``lostcancel``: any reference to the variable that
holds the cancel function (or the whole pair) counts as a use — a call, passing it to a
callee, storing it, returning it, entering it with ``with``, or mentioning it in a
nested function that closes over it. What is checked is that no path from the derive to
a way *out of the function* misses every use.

The ways out are: a ``return``, an explicit ``raise`` that no enclosing ``try`` catches,
and falling off the end of the body. As ``lostcancel`` ignores panics, an exception a
call might raise is not a way out of the function — otherwise every derive outside a
``try``/``finally`` would be reported — but inside a ``try`` it is a way *into* the
handlers, so a handler that returns without cancelling is reported. ``finally`` blocks
run on every way out of their ``try``; loops are iterated to a fixed point, so a derive
that runs again before its previous cancel was used is reported too ("the next
iteration derives again"), as is rebinding the name first.

Instead of building a control-flow graph the walker interprets the statements directly,
carrying the set of derives still *pending* (derived, not yet used) along each path.
The set only ever shrinks by uses and grows by derives, so a loop reaches its fixed
point in at most (number of derives + 1) iterations.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

__all__ = ["Derive", "lost_cancels"]

State = frozenset[int]
_EMPTY: State = frozenset()


@dataclass
class Derive:
    """One ``X = with_cancel(...)``-style statement whose result is held in ``name``."""

    stmt: ast.stmt
    call: ast.Call
    name: str
    api: str


@dataclass
class _Frame:
    kind: str  # "loop", "handlers", "finally"
    breaks: list[State] = field(default_factory=list)
    continues: list[State] = field(default_factory=list)
    raised: list[State] = field(default_factory=list)
    pending: list[tuple[str, State, ast.AST | None]] = field(default_factory=list)


def _join(a: State | None, b: State | None) -> State | None:
    if a is None:
        return b
    if b is None:
        return a
    return a | b


_CANNOT_RAISE = (ast.Try, ast.TryStar, ast.Pass, ast.Break, ast.Continue, ast.Global)


def _mentions(node: ast.AST) -> list[str]:
    """Names loaded or deleted in ``node``, except as ``x.ctx`` or ``x[0]``.

    Reading only the context out of a pair (``scope.ctx``, ``scope[0]``) is not a use of
    its cancel; any other mention is, as in lostcancel.
    """
    out: list[str] = []
    todo = [node]
    while todo:
        n = todo.pop()
        if isinstance(n, ast.Name):
            if not isinstance(n.ctx, ast.Store):
                out.append(n.id)
            continue
        if isinstance(n, ast.Attribute | ast.Subscript) and isinstance(n.value, ast.Name):
            if isinstance(n, ast.Attribute) and n.attr == "ctx":
                continue
            sl = n.slice if isinstance(n, ast.Subscript) else None
            if isinstance(sl, ast.Constant) and sl.value == 0:
                continue
        todo.extend(ast.iter_child_nodes(n))
    return out


def _header(s: ast.stmt) -> ast.AST | None:
    """The part of a statement that runs before its body (all of a simple statement)."""
    if isinstance(s, ast.If | ast.While):
        return s.test
    if isinstance(s, ast.For | ast.AsyncFor):
        return s.iter
    if isinstance(s, ast.With | ast.AsyncWith):
        return s.items[0].context_expr  # the first item is enough for "may raise here"
    if isinstance(s, ast.Match):
        return s.subject
    return s


def _runs_at_least_once(it: ast.expr) -> bool:
    """``range(<positive constant>)`` or a non-empty literal list, tuple or set."""
    if isinstance(it, ast.List | ast.Tuple | ast.Set):
        return bool(it.elts) and not any(isinstance(e, ast.Starred) for e in it.elts)
    if (
        isinstance(it, ast.Call)
        and isinstance(it.func, ast.Name)
        and it.func.id == "range"
        and not it.keywords
        and 1 <= len(it.args) <= 3
        and all(isinstance(a, ast.Constant) and type(a.value) is int for a in it.args)
    ):
        args = [a.value for a in it.args]  # type: ignore[attr-defined]
        try:
            return len(range(*args)) > 0
        except ValueError:
            return False
    return False


def _truth(test: ast.expr) -> bool | None:
    if isinstance(test, ast.Constant):
        return bool(test.value)
    return None


class _Walker:
    def __init__(
        self,
        func: ast.FunctionDef | ast.AsyncFunctionDef,
        derives: list[Derive],
        context_manager: bool = False,
    ):
        self.func = func
        self.context_manager = context_manager
        self.derives = derives
        self.by_stmt = {id(d.stmt): i for i, d in enumerate(derives)}
        self.names = [d.name for d in derives]
        self.frames: list[_Frame] = []
        self.catchers = 0  # handler and finally frames open: where an exception can go
        self.found: dict[int, tuple[int, str]] = {}
        self._loads: dict[int, frozenset[str]] = {}

    # -- uses ---------------------------------------------------------------------------

    def loads(self, node: ast.AST | None) -> frozenset[str]:
        """Every name the node mentions (a load or a del), nested functions included."""
        if node is None:
            return frozenset()
        key = id(node)
        got = self._loads.get(key)
        if got is None:
            got = frozenset(_mentions(node))
            self._loads[key] = got
        return got

    def kill(self, state: State, names: frozenset[str]) -> State:
        if not state or not names:
            return state
        return frozenset(i for i in state if self.names[i] not in names)

    def report(self, i: int, line: int, what: str) -> None:
        old = self.found.get(i)
        if old is None or line < old[0]:
            self.found[i] = (line, what)

    def rebind(self, state: State, targets: list[ast.expr], line: int, by: int | None) -> State:
        if not state:
            return state
        stored = {
            n.id
            for t in targets
            for n in ast.walk(t)
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
        }
        lost = [i for i in state if self.names[i] in stored]
        for i in lost:
            if by == i:
                self.report(i, line, f"the loop's next iteration (it derives again at line {line})")
            else:
                self.report(i, line, f"the rebinding of '{self.names[i]}' at line {line}")
        return state.difference(lost)

    # -- jumps --------------------------------------------------------------------------

    def jump(self, kind: str, state: State, node: ast.AST | None, level: int | None = None) -> None:
        top = len(self.frames) if level is None else level
        for k in range(top - 1, -1, -1):
            f = self.frames[k]
            if f.kind == "loop":
                if kind == "break":
                    f.breaks.append(state)
                    return
                if kind == "continue":
                    f.continues.append(state)
                    return
            elif f.kind == "handlers":
                if kind in ("raise", "implicit", "yield"):
                    f.raised.append(state)
                    return
            else:  # finally
                f.pending.append((kind, state, node))
                return
        # out of the function
        if kind in ("return", "raise", "yield") and state and node is not None:
            line = getattr(node, "lineno", 0)
            what = {
                "return": "the return",
                "raise": "the raise",
                "yield": "an exception thrown in at the yield",
            }[kind]
            for i in state:
                self.report(i, line, f"{what} at line {line}")

    # -- statements ---------------------------------------------------------------------

    def block(self, stmts: list[ast.stmt], state: State | None) -> State | None:
        for s in stmts:
            if state is None:
                return None
            state = self.stmt(s, state)
        return state

    def stmt(self, s: ast.stmt, state: State) -> State | None:
        t = type(s)
        if (
            state
            and self.catchers
            and t not in _CANNOT_RAISE
            and not (t is ast.Return and s.value is None)  # type: ignore[attr-defined]
        ):
            # an exception here would carry the pending derives into the handlers
            # (a statement that uses a derive has used it, even if it then raises)
            self.jump("implicit", self.kill(state, self.loads(_header(s))), None)
        d = self.by_stmt.get(id(s))
        if d is not None:
            value = s.value if isinstance(s, ast.Assign | ast.AnnAssign) else None
            state = self.kill(state, self.loads(value))
            targets = s.targets if isinstance(s, ast.Assign) else [s.target]  # type: ignore[attr-defined]
            state = self.rebind(state, targets, s.lineno, d)
            return state | {d}
        if t is ast.Return:
            state = self.kill(state, self.loads(s.value))  # type: ignore[attr-defined]
            self.jump("return", state, s)
            return None
        if t is ast.Raise:
            state = self.kill(state, self.loads(s))
            self.jump("raise", state, s)
            return None
        if t is ast.Break:
            self.jump("break", state, s)
            return None
        if t is ast.Continue:
            self.jump("continue", state, s)
            return None
        if t is ast.If:
            assert isinstance(s, ast.If)
            state = self.kill(state, self.loads(s.test))
            truth = _truth(s.test)
            a = self.block(s.body, state) if truth is not False else None
            b = self.block(s.orelse, state) if truth is not True else None
            return _join(a, b)
        if t is ast.While:
            assert isinstance(s, ast.While)
            return self.loop(s, self.kill(state, self.loads(s.test)), s.test)
        if t in (ast.For, ast.AsyncFor):
            assert isinstance(s, ast.For | ast.AsyncFor)
            state = self.kill(state, self.loads(s.iter))
            return self.loop(s, state, None)
        if t in (ast.With, ast.AsyncWith):
            assert isinstance(s, ast.With | ast.AsyncWith)
            for item in s.items:
                state = self.kill(state, self.loads(item.context_expr))
            return self.block(s.body, state)
        if t in (ast.Try, ast.TryStar):
            assert isinstance(s, ast.Try | ast.TryStar)
            return self.try_(s, state)
        if t is ast.Match:
            assert isinstance(s, ast.Match)
            state = self.kill(state, self.loads(s.subject))
            out: State | None = None
            exhaustive = False
            for case in s.cases:
                st = self.kill(state, self.loads(case.guard))
                out = _join(out, self.block(case.body, st))
                if (
                    case.guard is None
                    and isinstance(case.pattern, ast.MatchAs)
                    and case.pattern.pattern is None
                ):
                    exhaustive = True
            return out if exhaustive else _join(out, state)
        # a simple statement (or a nested def/class: mentioning the name in it is a use)
        state = self.kill(state, self.loads(s))
        if (
            state
            and self.context_manager
            and isinstance(getattr(s, "value", None), ast.Yield | ast.YieldFrom)
        ):
            # @contextmanager: the with-block's exception is raised here, at the yield
            self.jump("yield", state, s)
        if t is ast.Assign:
            assert isinstance(s, ast.Assign)
            state = self.rebind(state, s.targets, s.lineno, None)
        elif t in (ast.AnnAssign, ast.AugAssign) and getattr(s, "value", None) is not None:
            state = self.rebind(state, [s.target], s.lineno, None)  # type: ignore[attr-defined]
        return state

    def loop(
        self, s: ast.While | ast.For | ast.AsyncFor, state: State, test: ast.expr | None
    ) -> State | None:
        frame = _Frame("loop")
        self.frames.append(frame)
        entry = state
        forever = test is not None and _truth(test) is True
        back: State | None = None
        try:
            for _ in range(len(self.derives) + 2):
                frame.breaks.clear()
                frame.continues.clear()
                back = self.block(s.body, entry)
                for c in frame.continues:
                    back = _join(back, c)
                if back and self.catchers:
                    # the next test (or the iterator's next step) may raise, too
                    self.jump("implicit", self.kill(back, self.loads(test)), None)
                new = entry if back is None else entry | self.kill(back, self.loads(test))
                if new == entry:
                    break
                entry = new
        finally:
            self.frames.pop()
        if forever:
            exit_: State | None = None
        elif isinstance(s, ast.For | ast.AsyncFor) and _runs_at_least_once(s.iter):
            # `for _ in range(2):` runs its body: leaving skips no iteration's uses
            exit_ = self.block(s.orelse, back) if back is not None else None
        else:
            exit_ = self.block(s.orelse, entry)
        for b in frame.breaks:
            exit_ = _join(exit_, b)
        return exit_

    def try_(self, s: ast.Try | ast.TryStar, state: State) -> State | None:
        fin: _Frame | None = None
        if s.finalbody:
            fin = _Frame("finally")
            self.frames.append(fin)
            self.catchers += 1
        level = len(self.frames)
        try:
            out: State | None
            if s.handlers:
                hf = _Frame("handlers")
                self.frames.append(hf)
                self.catchers += 1
                try:
                    body = self.block(s.body, state)
                finally:
                    self.frames.pop()
                    self.catchers -= 1
                entry: State = _EMPTY
                for r in hf.raised:
                    entry = entry | r
                out = self.block(s.orelse, body) if body is not None else None
                for h in s.handlers:
                    out = _join(out, self.block(h.body, entry))
            else:
                body = self.block(s.body, state)
                out = self.block(s.orelse, body) if body is not None else None
        finally:
            if fin is not None:
                self.frames.pop()
                self.catchers -= 1
        if fin is None:
            return out
        # The finally block runs on every way out of the try: the fall-through, and each
        # pending return / raise / break / continue, which then carries on outwards.
        memo: dict[State, State | None] = {}

        def through(st: State) -> State | None:
            if st not in memo:
                memo[st] = self.block(s.finalbody, st)
            return memo[st]

        after = through(out) if out is not None else None
        for kind, st, node in fin.pending:
            res = through(st)
            if res is not None:
                self.jump(kind, res, node, level - 1)
        return after

    def run(self) -> dict[int, tuple[int, str]]:
        end = self.block(self.func.body, _EMPTY)
        if end:
            line = self.func.end_lineno or self.func.lineno
            for i in end:
                self.report(i, line, f"the end of the function (line {line})")
        return self.found


def lost_cancels(
    func: ast.FunctionDef | ast.AsyncFunctionDef,
    derives: list[Derive],
    context_manager: bool = False,
) -> dict[int, tuple[int, str]]:
    """For each derive (by index) that some path leaves unused: (line, that path).

    ``context_manager``: the function is a ``@contextmanager`` generator, so each
    ``yield`` is also a way out (the ``with`` block's exception is raised there).
    """
    return _Walker(func, derives, context_manager).run()
