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
    modules: tuple[str, ...] = ()

    @classmethod
    def add_options(cls, parser: Any) -> None:
        """Register ``--tether-context-modules`` (also read from flake8's config).

        Called once by flake8 before any check; not thread-safe, idempotent per parser,
        blocks on nothing; no context is involved, so none can have already ended.
        Raises what flake8's option manager raises for a duplicate option.
        """
        parser.add_option(
            "--tether-context-modules",
            default="",
            parse_from_config=True,
            comma_separated_list=True,
            help="modules whose functions count as tether's (tether lint --context-module)",
        )

    @classmethod
    def parse_options(cls, options: Any) -> None:
        """Read the parsed options (flake8 calls it once; same notes as add_options)."""
        cls.modules = tuple(m for m in getattr(options, "tether_context_modules", ()) if m)

    def __init__(self, tree: ast.Module, filename: str = "<string>") -> None:
        self.tree = tree
        self.filename = filename

    def run(self) -> Iterator[tuple[int, int, str, type[Any]]]:
        """Yield ``(line, col, "TTH00N message", type)`` for each finding (col from 0)."""
        mod = module_name(self.filename) if self.filename not in ("<string>", "stdin", "-") else ""
        found = check_tree(self.tree, self.filename, mod, self.modules)
        for line, col, code, message in sorted(found):
            yield line, col - 1, f"{code} {message}", type(self)
