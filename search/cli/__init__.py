"""The ``vitpareto`` command line: one module per group of commands, each parser beside
its handler; handlers parse, call the public API and print. User mistakes print one line
and exit with status 2."""

from __future__ import annotations

import argparse
import sys

from vitpareto.errors import VitParetoError
from vitpareto.search.cli import _results, _search, _tools, _train


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vitpareto",
        description="Find Pareto-optimal compressed Vision Transformers: patch size, token "
        "pruning, heads, q/k channels, MLP channels and early exits, searched jointly and "
        "measured on the target hardware.",
        epilog="Run `vitpareto COMMAND --help` for the options of a command.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in (_train, _search, _results, _tools):
        group.add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.handler(args)
    except VitParetoError as e:
        print(f"vitpareto {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


__all__ = ["main", "parser"]
