"""Command line: ``tether lint PATH...`` and ``python -m tether.lint PATH...``.

Exit status: 0 no findings, 1 findings, 2 usage error (bad option, unknown code, a path
that does not exist).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from . import CODES, check_paths

__all__ = ["cli", "main"]


def _codes(value: str | None, parser: argparse.ArgumentParser, flag: str) -> list[str] | None:
    if value is None:
        return None
    codes = [c.strip().upper() for c in value.split(",") if c.strip()]
    for c in codes:
        if not any(k.startswith(c) for k in CODES):
            parser.error(
                f"tether: {flag} got unknown code {c!r}; pass codes such as "
                f"{', '.join(sorted(CODES)[1:3])} (or a prefix: TTH00), comma-separated"
            )
    return codes


def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Find context misuse: " + "; ".join(f"{k} {v}" for k, v in CODES.items()),
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="files or directories to check")
    p.add_argument("--select", metavar="CODES", help="only these codes (comma-separated prefixes)")
    p.add_argument("--ignore", metavar="CODES", help="skip these codes (comma-separated prefixes)")
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    p.add_argument(
        "--exclude",
        metavar="GLOB",
        action="append",
        default=[],
        help="skip files and directories matching this glob (whole path or one part, "
        "e.g. tests or *_pb2.py); repeatable",
    )
    p.add_argument(
        "--context-module",
        metavar="MODULE",
        action="append",
        default=[],
        help="also treat this module's functions as tether's (a module re-exporting tether's "
        "API, or an API-compatible library); repeatable",
    )
    return p


def main(argv: Sequence[str] | None = None, prog: str = "python -m tether.lint") -> int:
    """Run the checker as ``python -m tether.lint`` would; return the exit status.

    Prints findings (``path:line:col: CODE message``, or a JSON list with
    ``--format json``) to stdout. Blocks while it checks; idempotent for unchanged
    files; not thread-safe (it writes to ``sys.stdout``: call it from one thread at a
    time); takes no context, so none can have already ended. Returns 0 when
    clean, 1 on findings, 2 on a usage error (raises nothing for those: argparse's
    ``SystemExit`` is turned into the status).
    """
    parser = _parser(prog)
    try:
        args = parser.parse_args(argv)
        select = _codes(args.select, parser, "--select")
        ignore = _codes(args.ignore, parser, "--ignore")
    except SystemExit as e:
        return 0 if e.code == 0 else 2
    try:
        findings = check_paths(
            args.paths,
            select=select,
            ignore=ignore,
            context_modules=args.context_module,
            exclude=args.exclude,
        )
    except FileNotFoundError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    if args.format == "json":
        rows = [
            {"path": f.path, "line": f.line, "col": f.col, "code": f.code, "message": f.message}
            for f in findings
        ]
        print(json.dumps(rows, indent=2))
    else:
        for f in findings:
            print(f)
    return 1 if findings else 0


def cli(argv: Sequence[str] | None = None) -> int:
    """The ``tether`` console script: ``tether lint PATH...``; returns the exit status.

    As ``main``: blocks while it checks, idempotent for unchanged files, not
    thread-safe (it writes to ``sys.stdout``), takes no context so none can have
    already ended. Returns 2 (it does not raise) for a missing or unknown subcommand.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "lint":
        if args and args[0] in ("-h", "--help"):
            print(
                "usage: tether lint [-h] [--select CODES] [--ignore CODES] "
                "[--format {text,json}] PATH [PATH ...]"
            )
            return 0
        got = repr(args[0]) if args else "nothing"
        print(
            f"tether: unknown command {got}; the one command is `tether lint PATH...`",
            file=sys.stderr,
        )
        return 2
    return main(args[1:], prog="tether lint")


if __name__ == "__main__":
    sys.exit(main())
