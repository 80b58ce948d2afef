"""The checker: one walk over a module's AST, with imports resolved.

Names are resolved the way Python binds them, lexically and without running anything:
``import tether as t`` makes ``t.with_timeout`` tether's, ``from tether import
with_timeout as wt`` makes ``wt`` tether's, a relative import inside the ``tether``
package resolves against the file's own package, and a module-level alias (``Ctx =
tether.Context``) is followed. A function that merely has the same name as one of
tether's (``mylib.with_timeout``, a local ``def background()``) is not tether's.
"""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._flow import Derive, lost_cancels

__all__ = ["CODES", "Finding", "check_tree", "module_name"]

CODES: dict[str, str] = {
    "TTH000": "the file does not parse",
    "TTH001": "a context parameter that is not the first parameter",
    "TTH002": "a derived context whose cancel is not called on every path",
    "TTH003": "a context stored on an object, a class or a global",
    "TTH004": "background()/todo() inside a function that takes a context",
    "TTH005": "a blocking call with no budget in a context-taking or async function",
    "TTH006": "a with_value key that is a plain str/int literal",
    "TTH007": "a retry loop that swallows DeadlineExceeded/Canceled",
}


@dataclass(frozen=True, order=True)
class Finding:
    """One finding: ``path:line:col: code message`` (``col`` counts from 1)."""

    path: str
    line: int
    col: int
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}: {self.code} {self.message}"


DERIVES = frozenset({"with_cancel", "with_timeout", "with_deadline", "signal_context"})
ROOTS = frozenset({"background", "todo"})
MAKES_CONTEXT = frozenset({"background", "todo", "current", "with_value", "without_cancel"})
CONTEXT_ERRORS = frozenset({"ContextError", "Canceled", "DeadlineExceeded"})
# Builtins that DeadlineExceeded also is (it subclasses TimeoutError, an OSError).
BROAD_BUILTINS = frozenset({"Exception", "BaseException", "TimeoutError", "OSError"})
REQUESTS_HELPERS = frozenset(
    {"get", "post", "put", "patch", "delete", "head", "options", "request"}
)
# Blocking calls reported in `async def` only (a sync function may block on purpose,
# given a timeout): the event loop stops, and no cancellation can reach the call.
_TO_THREAD = "run it with await tether.to_thread(ctx, ...) or use the asyncio API"
ASYNC_BLOCKING = {
    "subprocess.run": "use asyncio.create_subprocess_exec",
    "subprocess.call": "use asyncio.create_subprocess_exec",
    "subprocess.check_call": "use asyncio.create_subprocess_exec",
    "subprocess.check_output": "use asyncio.create_subprocess_exec",
    "urllib.request.urlopen": _TO_THREAD,
}
_CONTEXT_MANAGERS = frozenset({"contextlib.contextmanager", "contextlib.asynccontextmanager"})
_SKIP_FIRST = frozenset({"self", "cls", "mcs", "mcls", "metacls"})


def module_name(path: str) -> str:
    """The dotted module name of ``path``, from the ``__init__.py`` files above it."""
    path = os.path.abspath(path)
    parts = [os.path.splitext(os.path.basename(path))[0]]
    d = os.path.dirname(path)
    while os.path.isfile(os.path.join(d, "__init__.py")):
        parts.append(os.path.basename(d))
        d = os.path.dirname(d)
    if parts[0] == "__init__":
        parts.pop(0)
    return ".".join(reversed(parts))


class _Func:
    """What the walk knows about the function it is in."""

    __slots__ = (
        "contexts",
        "derives",
        "globals",
        "is_async",
        "loops",
        "node",
        "takes_context",
    )

    def __init__(self, node: ast.AST, is_async: bool) -> None:
        self.node = node
        self.is_async = is_async
        self.takes_context = False
        self.contexts: set[str] = set()
        self.derives: list[Derive] = []
        self.globals: set[str] = set()
        self.loops: list[ast.stmt] = []


_LEAVES = (ast.Constant, ast.expr_context, ast.operator, ast.unaryop, ast.cmpop, ast.boolop)


class Checker:
    """Walks one module once and collects its findings."""

    def __init__(
        self,
        tree: ast.Module,
        path: str,
        modname: str | None = None,
        modules: tuple[str, ...] = (),
    ) -> None:
        self.tree = tree
        self.prefixes = tuple(f"{m}." for m in ("tether", *modules))
        self.path = path
        self.modname = modname if modname is not None else module_name(path)
        self.aliases: dict[str, str] = {}
        self.out: list[tuple[int, int, str, str]] = []
        self.func: _Func | None = None
        self.cls: ast.ClassDef | None = None
        self.dispatch: dict[type[ast.AST], Callable[[Any], None]] = {
            ast.Import: self.v_import,
            ast.ImportFrom: self.v_importfrom,
            ast.FunctionDef: self.v_def,
            ast.AsyncFunctionDef: self.v_def,
            ast.Lambda: self.v_lambda,
            ast.ClassDef: self.v_class,
            ast.Assign: self.v_assign,
            ast.AnnAssign: self.v_annassign,
            ast.Expr: self.v_expr,
            ast.Call: self.v_call,
            ast.Subscript: self.v_subscript_attr,
            ast.Attribute: self.v_subscript_attr,
            ast.For: self.v_loop,
            ast.AsyncFor: self.v_loop,
            ast.While: self.v_loop,
            ast.Try: self.v_try,
            ast.TryStar: self.v_try,
            ast.Global: self.v_global,
            ast.With: self.v_with,
            ast.AsyncWith: self.v_with,
            ast.If: self.v_if,
        }
        self.classes = {st.name for st in tree.body if isinstance(st, ast.ClassDef)}
        self.no_parent = 0  # inside `if ctx is None:`, a new root loses nothing
        self.bare_ctx = True

    # -- entry ----------------------------------------------------------------------------

    def imports_tether(self) -> bool:
        """Does the module import tether (or a context module) at its top level?"""
        roots = {p.split(".")[0] for p in self.prefixes}
        todo: list[ast.stmt] = list(self.tree.body)
        while todo:
            st = todo.pop()
            if isinstance(st, ast.Import):
                if any(a.name.split(".")[0] in roots for a in st.names):
                    return True
            elif isinstance(st, ast.ImportFrom):
                if (st.module or "").split(".")[0] in roots and not st.level:
                    return True
            elif isinstance(st, ast.If | ast.Try | ast.TryStar):
                todo.extend(st.body)
                todo.extend(st.orelse)
                if not isinstance(st, ast.If):
                    todo.extend(st.finalbody)
                    for h in st.handlers:
                        todo.extend(h.body)
        return False

    def run(self) -> list[tuple[int, int, str, str]]:
        # An unannotated `ctx` is taken for a tether context only where tether is
        # imported: elsewhere it is click's, Django's, a test framework's... (measured on
        # click: 15 false TTH001 without this rule, none with it)
        self.bare_ctx = self.modname.startswith("tether") or self.imports_tether()
        if self.modname.startswith("tether"):
            # Inside the package, its own top-level names are tether's.
            for st in self.tree.body:
                if isinstance(st, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef):
                    self.aliases[st.name] = f"{self.modname}.{st.name}"
        self.body(self.tree.body)
        return self.out

    def add(self, node: ast.AST, code: str, message: str) -> None:
        self.out.append((node.lineno, node.col_offset + 1, code, message))  # type: ignore[attr-defined]

    # -- walking --------------------------------------------------------------------------

    def visit(self, node: ast.AST) -> None:
        m = self.dispatch.get(type(node))
        if m is not None:
            m(node)
        else:
            self.generic(node)

    def generic(self, node: ast.AST) -> None:
        for name in node._fields:
            v = getattr(node, name, None)
            if type(v) is list:
                for x in v:
                    if isinstance(x, ast.AST) and not isinstance(x, _LEAVES):
                        self.visit(x)
            elif isinstance(v, ast.AST) and not isinstance(v, _LEAVES):
                self.visit(v)

    def body(self, stmts: list[ast.stmt]) -> None:
        for s in stmts:
            self.visit(s)

    # -- names ----------------------------------------------------------------------------

    def resolve(self, node: ast.AST) -> str | None:
        """The qualified name an expression refers to, if it comes from an import."""
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id)
        if isinstance(node, ast.Attribute):
            base = self.resolve(node.value)
            return None if base is None else f"{base}.{node.attr}"
        return None

    def tether_name(self, node: ast.AST) -> str | None:
        """``with_timeout`` for anything resolving to ``tether[.sub].with_timeout``."""
        q = self.resolve(node)
        if q is None or not q.startswith(self.prefixes):
            return None
        return q.rpartition(".")[2]

    def v_import(self, node: ast.Import) -> None:
        for a in node.names:
            if a.asname:
                self.aliases[a.asname] = a.name
            else:
                top = a.name.partition(".")[0]
                self.aliases[top] = top

    def v_importfrom(self, node: ast.ImportFrom) -> None:
        mod = node.module or ""
        if node.level:
            base = self.modname.split(".")
            # a package's __init__ is the package itself
            keep = len(base) - node.level + (1 if self.path.endswith("__init__.py") else 0)
            mod = ".".join([*base[: max(keep, 0)], *([mod] if mod else [])])
        for a in node.names:
            if a.name == "*":
                if mod == "tether":
                    for n in (*DERIVES, *MAKES_CONTEXT, "Context", *CONTEXT_ERRORS, "sleep"):
                        self.aliases[n] = f"tether.{n}"
                continue
            self.aliases[a.asname or a.name] = f"{mod}.{a.name}"

    def is_context_annotation(self, ann: ast.expr | None) -> bool:
        if ann is None:
            return False
        if isinstance(ann, ast.Constant) and isinstance(ann.value, str):
            try:
                ann = ast.parse(ann.value, mode="eval").body
            except SyntaxError:
                return False
        if isinstance(ann, ast.BinOp) and isinstance(ann.op, ast.BitOr):
            return self.is_context_annotation(ann.left) or self.is_context_annotation(ann.right)
        if isinstance(ann, ast.Subscript) and self.resolve(ann.value) in (
            "typing.Optional",
            "typing.Annotated",
        ):
            inner = ann.slice
            if isinstance(inner, ast.Tuple) and inner.elts:
                inner = inner.elts[0]
            return self.is_context_annotation(inner)
        return self.tether_name(ann) == "Context"

    def is_context_expr(self, node: ast.expr, func: _Func | None) -> bool:
        if isinstance(node, ast.Name):
            return func is not None and node.id in func.contexts
        if isinstance(node, ast.Call):
            return self.tether_name(node.func) in MAKES_CONTEXT
        return False

    # -- definitions ----------------------------------------------------------------------

    def v_def(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for d in node.decorator_list:
            self.visit(d)
        a = node.args
        for x in (*a.defaults, *a.kw_defaults):
            if x is not None:
                self.visit(x)
        func = _Func(node, isinstance(node, ast.AsyncFunctionDef))
        positional = [*a.posonlyargs, *a.args]
        in_class = self.cls is not None and self.func is None
        static = any(
            isinstance(d, ast.Name) and d.id == "staticmethod" for d in node.decorator_list
        )
        # `@func(Server) def stop(srv, ctx)`: a decorator that attaches the function to a
        # class of this module makes its first parameter the receiver (pygolang's style)
        in_class = in_class or any(
            isinstance(d, ast.Call)
            and len(d.args) == 1
            and isinstance(d.args[0], ast.Name)
            and d.args[0].id in self.classes
            for d in node.decorator_list
        )
        if positional and (
            (in_class and not static) or (not in_class and positional[0].arg in _SKIP_FIRST)
        ):
            positional = positional[1:]
        for arg in (*a.posonlyargs, *a.args, *a.kwonlyargs):
            if (
                arg.annotation is None and arg.arg == "ctx" and self.bare_ctx
            ) or self.is_context_annotation(arg.annotation):
                func.contexts.add(arg.arg)
                func.takes_context = True
        if positional and positional[0].arg not in func.contexts:
            late = [p.arg for p in positional[1:] if p.arg in func.contexts]
            if late:
                self.add(
                    node,
                    "TTH001",
                    f"context parameter '{late[0]}' of {node.name}() should come first "
                    f"(after self/cls): def {node.name}({late[0]}, ...)",
                )
        outer_func, outer_cls = self.func, self.cls
        self.func, self.cls = func, None
        try:
            self.body(node.body)
        finally:
            self.func, self.cls = outer_func, outer_cls
        if func.derives:
            self.check_derives(node, func)

    def v_lambda(self, node: ast.Lambda) -> None:
        outer = self.func
        self.func = _Func(node, False)
        try:
            self.visit(node.body)
        finally:
            self.func = outer

    def v_class(self, node: ast.ClassDef) -> None:
        for x in (*node.decorator_list, *node.bases, *node.keywords):
            self.visit(x)
        outer_func, outer_cls = self.func, self.cls
        self.func, self.cls = None, node
        try:
            for st in node.body:
                if isinstance(st, ast.AnnAssign) and self.is_context_annotation(st.annotation):
                    name = st.target.id if isinstance(st.target, ast.Name) else "field"
                    self.add(
                        st,
                        "TTH003",
                        f"class {node.name} has a context field '{name}': pass the context "
                        "to each method call instead of storing it",
                    )
                self.visit(st)
        finally:
            self.func, self.cls = outer_func, outer_cls

    def v_if(self, node: ast.If) -> None:
        t = node.test
        func = self.func
        if (
            func is not None
            and isinstance(t, ast.Compare)
            and isinstance(t.left, ast.Name)
            and t.left.id in func.contexts
            and len(t.ops) == 1
            and isinstance(t.ops[0], ast.Is)
            and isinstance(t.comparators[0], ast.Constant)
            and t.comparators[0].value is None
        ):
            # `if ctx is None: ctx = background()`: no caller context on this path
            self.visit(t)
            self.no_parent += 1
            try:
                self.body(node.body)
            finally:
                self.no_parent -= 1
            self.body(node.orelse)
            return
        self.generic(node)

    def v_global(self, node: ast.Global) -> None:
        if self.func is not None:
            self.func.globals.update(node.names)

    # -- assignments ----------------------------------------------------------------------

    def derive_call(self, node: ast.AST | None) -> str | None:
        if isinstance(node, ast.Call):
            name = self.tether_name(node.func)
            if name in DERIVES:
                return name
        return None

    def v_assign(self, node: ast.Assign) -> None:
        self.assigned(node, node.targets, node.value)

    def v_annassign(self, node: ast.AnnAssign) -> None:
        self.visit(node.annotation)
        if node.value is not None:
            self.assigned(node, [node.target], node.value)

    def assigned(
        self, node: ast.Assign | ast.AnnAssign, targets: list[ast.expr], value: ast.expr
    ) -> None:
        func = self.func
        api = self.derive_call(value)
        if api is not None and isinstance(value, ast.Call):
            if len(targets) == 1:
                t = targets[0]
                if isinstance(t, ast.Tuple | ast.List) and len(t.elts) == 2:
                    c = t.elts[1]
                    if isinstance(t.elts[0], ast.Name) and func is not None:
                        func.contexts.add(t.elts[0].id)
                    if isinstance(c, ast.Name):
                        if c.id == "_":
                            self.add(
                                value,
                                "TTH002",
                                f"{api}() at line {value.lineno}: its cancel function is "
                                "discarded (assigned to _); keep it and call it on every "
                                "path, or enter the pair with `with`",
                            )
                        elif func is not None and c.id not in func.globals:
                            func.derives.append(Derive(node, value, c.id, api))
                elif isinstance(t, ast.Name) and func is not None and t.id not in func.globals:
                    func.derives.append(Derive(node, value, t.id, api))
        elif func is None and self.cls is None and len(targets) == 1:
            t = targets[0]
            q = self.resolve(value) if isinstance(value, ast.Name | ast.Attribute) else None
            if isinstance(t, ast.Name) and q is not None:
                self.aliases[t.id] = q  # `Ctx = tether.Context`, `wt = tether.with_timeout`
        elif func is not None and len(targets) == 1:
            t = targets[0]
            if isinstance(t, ast.Name) and self.is_context_expr(value, func):
                func.contexts.add(t.id)
            elif (
                isinstance(t, ast.Tuple | ast.List)
                and len(t.elts) == 2
                and isinstance(t.elts[1], ast.Name)
                and t.elts[1].id not in func.globals
                and isinstance(value, ast.Name)
            ):
                # `ctx, cancel = scope`: the obligation moves from the pair to `cancel`
                src = next((d for d in reversed(func.derives) if d.name == value.id), None)
                if src is not None:
                    if isinstance(t.elts[0], ast.Name):
                        func.contexts.add(t.elts[0].id)
                    func.derives.append(Derive(node, src.call, t.elts[1].id, src.api))
        self.stored(node, targets, value)
        for t in targets:
            self.visit(t)
        self.visit(value)

    def stored(self, node: ast.stmt, targets: list[ast.expr], value: ast.expr) -> None:
        """TTH003: a context assigned to ``self.x``, a class attribute or a global."""
        func = self.func
        pairs: list[tuple[ast.expr, bool]] = []
        is_pair = self.derive_call(value) is not None
        for t in targets:
            if isinstance(t, ast.Tuple | ast.List) and is_pair and t.elts:
                pairs.append((t.elts[0], True))
            elif not is_pair:
                pairs.append((t, self.is_context_expr(value, func)))
        for t, is_ctx in pairs:
            if not is_ctx:
                continue
            if (
                isinstance(t, ast.Attribute)
                and isinstance(t.value, ast.Name)
                and t.value.id in _SKIP_FIRST
                and func is not None
            ):
                self.add(
                    node,
                    "TTH003",
                    f"context stored on {t.value.id}.{t.attr}: pass it as the first parameter "
                    "of each call instead (don't store contexts in objects)",
                )
            elif isinstance(t, ast.Name) and func is not None and t.id in func.globals:
                self.add(
                    node,
                    "TTH003",
                    f"context stored in the global '{t.id}': pass it as a parameter instead",
                )
            elif isinstance(t, ast.Name) and func is None and self.cls is not None:
                self.add(
                    node,
                    "TTH003",
                    f"class {self.cls.name} stores a context in '{t.id}': pass the context "
                    "to each call instead",
                )

    def v_expr(self, node: ast.Expr) -> None:
        api = self.derive_call(node.value)
        if api is not None:
            self.add(
                node.value,
                "TTH002",
                f"{api}() at line {node.lineno}: the pair is discarded, so nothing can "
                "cancel it; enter it with `with` or keep and call its cancel",
            )
        self.visit(node.value)

    def v_subscript_attr(self, node: ast.Subscript | ast.Attribute) -> None:
        api = self.derive_call(node.value)
        if api is not None:
            self.add(
                node.value,
                "TTH002",
                f"{api}() at line {node.lineno}: only the context is kept and the cancel "
                "function is discarded; unpack both (ctx, cancel = ...) or use `with`",
            )
        self.generic(node)

    def v_with(self, node: ast.With | ast.AsyncWith) -> None:
        func = self.func
        for item in node.items:
            if (
                (
                    self.derive_call(item.context_expr) is not None
                    or self.is_context_expr(item.context_expr, func)
                )
                and isinstance(item.optional_vars, ast.Name)
                and func is not None
            ):
                func.contexts.add(item.optional_vars.id)
        self.generic(node)

    # -- calls ----------------------------------------------------------------------------

    def v_call(self, node: ast.Call) -> None:
        func = self.func
        q = self.resolve(node.func)
        if q is not None:
            name = q.rpartition(".")[2] if q.startswith(self.prefixes) else None
            if name in ROOTS and func is not None and func.takes_context and not self.no_parent:
                self.add(
                    node,
                    "TTH004",
                    f"tether.{name}() inside a function that takes a context: derive from "
                    "that context instead (a new root loses the caller's cancellation "
                    "and deadline)",
                )
            elif name == "with_value":
                key = node.args[1] if len(node.args) > 1 else None
                for kw in node.keywords:
                    if kw.arg == "key":
                        key = kw.value
                if isinstance(key, ast.Constant) and type(key.value) in (str, int, bytes):
                    self.add(
                        node,
                        "TTH006",
                        f"with_value key {key.value!r} is a plain {type(key.value).__name__}: "
                        "use a tether.Key (KEY = tether.Key[T]('name')), which cannot collide",
                    )
            elif func is not None and (func.is_async or func.takes_context):
                where = "an async function" if func.is_async else "a function that takes a context"
                if q == "time.sleep":
                    fix = "await tether.asleep(ctx, s)" if func.is_async else "tether.sleep(ctx, s)"
                    self.add(
                        node,
                        "TTH005",
                        f"time.sleep() in {where} blocks without watching the context: use {fix}",
                    )
                elif (
                    q.startswith("requests.")
                    and q.rpartition(".")[2] in REQUESTS_HELPERS
                    and (q.count(".") == 1 or q.startswith("requests.api."))
                ):
                    self.add(
                        node,
                        "TTH005",
                        f"{q}() in {where} has no budget: use a requests.Session with "
                        "tether.integrations.requests.ContextAdapter",
                    )
                elif func.is_async and q in ASYNC_BLOCKING:
                    self.add(
                        node,
                        "TTH005",
                        f"{q}() in an async function blocks the event loop and cannot be "
                        f"interrupted: {ASYNC_BLOCKING[q]}",
                    )
        self.generic(node)

    # -- loops and retries ----------------------------------------------------------------

    def v_loop(self, node: ast.For | ast.AsyncFor | ast.While) -> None:
        func = self.func
        if func is None:
            self.generic(node)
            return
        func.loops.append(node)
        try:
            self.generic(node)
        finally:
            func.loops.pop()

    def catches(self, t: ast.expr | None) -> str | None:
        """``"context"``, ``"broad"`` or None for what an except clause's type catches."""
        if t is None:
            return "broad"
        if isinstance(t, ast.Tuple):
            kinds = {self.catches(e) for e in t.elts}
            return "context" if "context" in kinds else "broad" if "broad" in kinds else None
        tn = self.tether_name(t)
        if tn in CONTEXT_ERRORS:
            return "context"
        if isinstance(t, ast.Name) and t.id in BROAD_BUILTINS and t.id not in self.aliases:
            return "broad"
        return None

    def v_try(self, node: ast.Try | ast.TryStar) -> None:
        func = self.func
        if func is not None and func.loops and self.uses_context(node.body, func):
            loop = func.loops[-1]
            if _retries(loop) and not self.watches_context(loop, func):
                for h in node.handlers:
                    kind = self.catches(h.type)
                    if kind is None:
                        continue
                    if not _leaves(h.body):
                        caught = "everything" if h.type is None else ast.unparse(h.type)
                        self.add(
                            h,
                            "TTH007",
                            f"except {caught} in a loop swallows DeadlineExceeded/Canceled and "
                            "retries: let context errors through first (except "
                            "tether.ContextError: raise) or stop when ctx.err() is set",
                        )
                    if kind == "context":
                        break
        self.generic(node)

    def uses_context(self, stmts: list[ast.stmt], func: _Func) -> bool:
        for s in stmts:
            for n in ast.walk(s):
                if isinstance(n, ast.Name) and n.id in func.contexts:
                    return True
                if isinstance(n, ast.Call):
                    name = self.tether_name(n.func)
                    if name is not None and not name.startswith("_"):  # tether's public API
                        return True
        return False

    def watches_context(self, loop: ast.stmt, func: _Func) -> bool:
        """Does the loop look at its context (``ctx.err()``, ``ctx.check()``, ``done()``)?"""
        for n in ast.walk(loop):
            if (
                isinstance(n, ast.Call)
                and isinstance(n.func, ast.Attribute)
                and n.func.attr in ("err", "check", "done")
                and isinstance(n.func.value, ast.Name)
                and n.func.value.id in func.contexts
            ):
                return True
        return False

    # -- TTH002 ---------------------------------------------------------------------------

    def check_derives(self, node: ast.FunctionDef | ast.AsyncFunctionDef, func: _Func) -> None:
        cm = any(
            self.resolve(d) in _CONTEXT_MANAGERS
            for d in node.decorator_list
            if isinstance(d, ast.Name | ast.Attribute)
        )
        found = lost_cancels(node, func.derives, cm)
        for i, (_line, what) in sorted(found.items()):
            d = func.derives[i]
            self.add(
                d.call,
                "TTH002",
                f"{d.api}() at line {d.call.lineno} is not cancelled on every path: "
                f"{what} is reached without using '{d.name}'; enter the pair with "
                "`with`, or call its cancel in try/finally",
            )


_COUNTERS = frozenset({"range", "count", "repeat", "cycle"})


def _retries(loop: ast.stmt) -> bool:
    """Can the loop run the same work again: ``while``, or ``for`` over attempts.

    ``for item in items:`` moves on to the next item after a failure; it does not
    retry (after the deadline the rest fail fast, and the loop ends). ``for _ in
    range(n)``, ``itertools.count()``/``repeat``/``cycle`` and a ``_`` target retry.
    """
    if not isinstance(loop, ast.For | ast.AsyncFor):
        return True
    if isinstance(loop.target, ast.Name) and loop.target.id == "_":
        return True
    f = loop.iter.func if isinstance(loop.iter, ast.Call) else None
    name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
    return name in _COUNTERS


def _leaves(stmts: list[ast.stmt]) -> bool:
    """Does a handler body raise, return or break out of the loop on some path?"""
    todo: list[ast.AST] = list(stmts)
    while todo:
        n = todo.pop()
        if isinstance(n, ast.Raise | ast.Return | ast.Break):
            return True
        if isinstance(
            n,
            ast.FunctionDef
            | ast.AsyncFunctionDef
            | ast.Lambda
            | ast.ClassDef
            | ast.For
            | ast.While
            | ast.AsyncFor,
        ):
            # a break in a nested loop does not leave ours; nested defs don't run here
            if isinstance(n, ast.For | ast.While | ast.AsyncFor):
                todo.extend(n.orelse)
                todo.extend(x for x in n.body if not isinstance(x, ast.Break))
            continue
        if isinstance(n, ast.Call):
            f = n.func
            if isinstance(f, ast.Attribute) and f.attr == "check":
                return True  # ctx.check() raises the context's error
            if (
                isinstance(f, ast.Attribute)
                and f.attr == "exit"
                and isinstance(f.value, ast.Name)
                and f.value.id == "sys"
            ):
                return True
        todo.extend(ast.iter_child_nodes(n))
    return False


_NOQA = re.compile(r"#\s*noqa(?::[\s]?(?P<codes>[A-Z0-9]+(?:[,\s]+[A-Z]+[0-9]+)*))?", re.I)


def noqa_codes(line: str) -> frozenset[str] | None:
    """None: no noqa; empty: a bare ``# noqa`` (all codes); else the codes listed."""
    m = _NOQA.search(line)
    if m is None:
        return None
    codes = m.group("codes")
    if not codes:
        return frozenset()
    return frozenset(c.upper() for c in re.split(r"[,\s]+", codes) if c)


def check_tree(
    tree: ast.Module, path: str, modname: str | None = None, modules: tuple[str, ...] = ()
) -> list[tuple[int, int, str, str]]:
    """Raw findings ``(line, col, code, message)`` of one parsed module, unfiltered.

    ``modules`` are more modules whose names count as tether's (a project's re-export
    module, or an API-compatible Go-style context library such as ``golang.context``).
    """
    return Checker(tree, path, modname, modules).run()
