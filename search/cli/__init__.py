"""The ``vitpareto`` command line: one module per group of commands, each parser beside
its handler; handlers parse, call the public API and print. User mistakes print one line
and exit with status 2: argparse's own, and every number, checked once against one table
of bounds (``vitpareto.bounds.OPTIONS``) right after parsing, before any command runs."""

from __future__ import annotations

import argparse
import sys

from vitpareto.bounds import check_environment, check_options
from vitpareto.errors import VitParetoError
from vitpareto.search.cli import _results, _search, _tools, _train


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose mistakes (text that is not a number, a missing option)
    are one line, as every other mistake is, saying where the options are listed."""

    def error(self, message: str):
        message = " ".join(message.split())  # one line, whatever the value held
        if len(message) > 300:  # a 5000-digit value is not worth repeating whole
            message = message[:300] + " ..."
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` lists the options)\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(
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


def check(args: argparse.Namespace) -> None:
    """Every number of a parsed command line within its bounds, and the environment's
    settings: refused before the command starts any work or writes anything."""
    check_options(vars(args))
    check_environment()


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """``argv`` parsed and checked as ``main`` does, without running the command:
    argparse's mistakes exit 2 after one line; a number out of bounds raises
    VitParetoError (one line)."""
    args = parser().parse_args(argv)
    check(args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        check(args)
        return args.handler(args)
    except VitParetoError as e:
        print(f"vitpareto {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


__all__ = ["main", "parse", "parser"]
