"""``tether lint``: a static checker for context misuse (stdlib ``ast`` only).

Codes (``docs/lint.md`` has a bad and a good example of each):

- ``TTH001`` a context parameter that is not the first one (after ``self``/``cls``).
- ``TTH002`` a derived pair (``with_cancel``/``with_timeout``/``with_deadline``/
  ``signal_context``) neither entered with ``with`` nor cancelled on every path out of
  the function — ``go vet``'s ``lostcancel``. Names the derive line and the path.
- ``TTH003`` a context stored on ``self``, as a class/dataclass field, or in a global.
- ``TTH004`` ``tether.background()``/``todo()`` inside a function that takes a context.
- ``TTH005`` ``time.sleep`` or a module-level ``requests.get``/``post``/... helper in a
  function that takes a context, or in an ``async def``.
- ``TTH006`` a ``with_value`` key that is a plain ``str``/``int`` literal.
- ``TTH007`` a retry loop whose ``except`` swallows ``DeadlineExceeded``/``Canceled``.
- ``TTH000`` a file that does not parse (always reported).

"A function that takes a context" has a parameter annotated ``tether.Context`` (or an
alias of it), or an unannotated parameter named ``ctx``. Use it as ``tether lint PATH...``,
``python -m tether.lint PATH...``, or through flake8 (the ``TTH`` plugin).
"""

from __future__ import annotations

import ast
import fnmatch
import io
import os
import tokenize
from collections.abc import Iterable, Iterator

from ._checker import CODES, Finding, check_tree, module_name, noqa_codes

__all__ = ["CODES", "Finding", "check_paths", "check_source", "iter_python_files"]

_SKIP_DIRS = frozenset({"__pycache__", "node_modules", "venv", "build", "dist", "site-packages"})


def _selected(code: str, select: Iterable[str] | None, ignore: Iterable[str] | None) -> bool:
    if code == "TTH000":
        return True
    if select is not None and not any(code.startswith(s) for s in select):
        return False
    return not (ignore is not None and any(code.startswith(s) for s in ignore))


def check_source(
    source: str,
    path: str = "<string>",
    *,
    select: Iterable[str] | None = None,
    ignore: Iterable[str] | None = None,
    module: str | None = None,
    context_modules: Iterable[str] = (),
) -> list[Finding]:
    """Check one module's source text; return its findings, sorted by line and column.

    ``select``/``ignore`` are code prefixes (``"TTH002"``, ``"TTH00"``); ``module`` is the
    dotted module name used to resolve relative imports (by default it is worked out
    from ``path`` and the ``__init__.py`` files above it); ``context_modules`` names
    more modules whose functions count as tether's (a project module that re-exports
    tether's API, or an API-compatible library). A ``# noqa: TTH00N`` comment
    on a finding's line silences that code there; a bare ``# noqa`` silences all. A
    source that does not parse gives one ``TTH000`` finding instead of raising.

    Pure computation: it blocks only for the CPU time it takes, is idempotent (the
    same source always gives the same findings), and is thread-safe (no shared state).
    It takes no context, so there is none that may have already ended. Raises nothing
    for any source text; ``TypeError`` if ``source`` is not a ``str``.
    """
    if not isinstance(source, str):
        raise TypeError(
            f"tether: check_source() takes the source text as a str, got "
            f"{type(source).__name__}; read the file first (or use check_paths)"
        )
    try:
        tree = ast.parse(source, filename=path)
    except (SyntaxError, ValueError) as e:
        line = getattr(e, "lineno", None) or 1
        col = getattr(e, "offset", None) or 1
        msg = getattr(e, "msg", None) or str(e)
        return [Finding(path, line, col, "TTH000", f"cannot parse this file: {msg}")]
    mod = module if module is not None else (module_name(path) if path != "<string>" else "")
    raw = check_tree(tree, path, mod, tuple(context_modules))
    if not raw:
        return []
    lines = source.splitlines()
    out: list[Finding] = []
    for line, col, code, message in raw:
        if not _selected(code, select, ignore):
            continue
        text = lines[line - 1] if 0 < line <= len(lines) else ""
        if "#" in text:
            codes = noqa_codes(text)
            if codes is not None and (not codes or any(code.startswith(c) for c in codes)):
                continue
        out.append(Finding(path, line, col, code, message))
    return sorted(set(out))


def _excluded(path: str, exclude: tuple[str, ...]) -> bool:
    """Does a glob match the path, or any one of its parts (as flake8's --exclude)?"""
    if not exclude:
        return False
    norm = path.replace(os.sep, "/")
    parts = [x for x in norm.split("/") if x not in ("", ".")]
    return any(
        fnmatch.fnmatch(norm, g) or any(fnmatch.fnmatch(x, g) for x in parts) for g in exclude
    )


def iter_python_files(paths: Iterable[str], exclude: Iterable[str] = ()) -> Iterator[str]:
    """Every ``.py`` file under ``paths`` (files as given; directories recursively).

    Skips hidden directories, ``__pycache__``, virtual environments and build output,
    and anything matching an ``exclude`` glob (``tests``, ``*_pb2.py``, ``src/gen/*``:
    matched against the whole path and each of its parts), in sorted order. Blocks on
    directory listing; idempotent; thread-safe; takes no context, so none can have
    already ended. Raises ``FileNotFoundError`` naming a path that does not exist.
    """
    ex = tuple(exclude)
    for p in paths:
        if os.path.isdir(p):
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(
                    d
                    for d in dirs
                    if not d.startswith(".")
                    and d not in _SKIP_DIRS
                    and not os.path.isfile(os.path.join(root, d, "pyvenv.cfg"))
                    and not _excluded(os.path.join(root, d), ex)
                )
                for f in sorted(files):
                    full = os.path.join(root, f)
                    if f.endswith(".py") and not _excluded(full, ex):
                        yield full
        elif os.path.exists(p):
            yield p
        else:
            raise FileNotFoundError(
                f"tether: no such file or directory: {p!r}; pass existing paths"
            )


def check_paths(
    paths: Iterable[str],
    *,
    select: Iterable[str] | None = None,
    ignore: Iterable[str] | None = None,
    context_modules: Iterable[str] = (),
    exclude: Iterable[str] = (),
) -> list[Finding]:
    """Check every Python file under ``paths``; findings sorted by path, line, column.

    Blocks while it reads and checks the files. Idempotent for unchanged files;
    thread-safe; takes no context, so none can have already ended. A file that does not
    parse (or is not UTF-8) is a ``TTH000`` finding, not an error. ``select``,
    ``ignore`` and ``context_modules`` are as for ``check_source``; ``exclude`` as for
    ``iter_python_files``. Raises
    ``FileNotFoundError`` for a path that does not exist, before checking anything.
    """
    files = list(iter_python_files(list(paths), exclude))
    sel = list(select) if select is not None else None
    ign = list(ignore) if ignore is not None else None
    mods = tuple(context_modules)
    out: list[Finding] = []
    for f in files:
        try:
            with open(f, "rb") as fh:
                data = fh.read()
            # PEP 263: a coding cookie (or a BOM) says how to decode; UTF-8 otherwise
            encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
            source = data.decode("utf-8-sig" if encoding == "utf-8-sig" else encoding)
        except (OSError, SyntaxError, LookupError, UnicodeDecodeError) as e:
            out.append(Finding(f, 1, 1, "TTH000", f"cannot read this file: {e}"))
            continue
        out.extend(check_source(source, f, select=sel, ignore=ign, context_modules=mods))
    return sorted(out)
