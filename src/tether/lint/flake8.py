"""The flake8 plugin: ``flake8 --select TTH`` runs ``tether lint``'s checks.

Registered on the ``flake8.extension`` entry point as ``TTH``. This module imports only
the standard library (flake8 imports it, not the other way round); flake8 handles
``# noqa`` itself, with the same meaning.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from typing import Any

from ._checker import check_tree, module_name

__all__ = ["Plugin"]


class Plugin:
    """flake8's AST plugin protocol: ``Plugin(tree, filename).run()`` yields findings.

    ``run()`` blocks only for the CPU time it takes, is idempotent and thread-safe (each
    instance checks one tree); it takes no context, so none can have already ended. It
    raises nothing for any parsed tree.
    """

    name = "tether"
    version = "0.1.0"

    def __init__(self, tree: ast.Module, filename: str = "<string>") -> None:
        self.tree = tree
        self.filename = filename

    def run(self) -> Iterator[tuple[int, int, str, type[Any]]]:
        """Yield ``(line, col, "TTH00N message", type)`` for each finding (col from 0)."""
        mod = module_name(self.filename) if self.filename not in ("<string>", "stdin", "-") else ""
        for line, col, code, message in sorted(check_tree(self.tree, self.filename, mod)):
            yield line, col - 1, f"{code} {message}", type(self)
