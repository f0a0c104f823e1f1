"""The options of every command, found by walking the command line's own parsers (never a
hand list, so that an option added tomorrow is tested tomorrow), and the fewest arguments
each command needs to parse."""

from __future__ import annotations

import argparse

from vitpareto.search.cli import parser

NUMERIC = (int, float)


def commands() -> dict[str, argparse.ArgumentParser]:
    """Every command's parser by its name."""
    (sub,) = [a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def numeric_options() -> list[tuple[str, argparse.Action]]:
    """(command, action) of every option that parses a number."""
    return [(name, a) for name, p in commands().items() for a in p._actions if a.type in NUMERIC]


def required_args(command: str, skip: argparse.Action | None = None) -> list[str]:
    """Placeholder values for what ``command`` requires, so that it parses; ``skip`` (an
    action of any parser built, matched by dest), and a required group of options that
    holds it, left out: the caller gives it."""
    p = commands()[command]
    dest = skip.dest if skip is not None else None
    out: list[str] = []
    for a in p._actions:
        if a.required and a.dest != dest:
            value = "1" if a.type in NUMERIC else "x"
            out += [a.option_strings[0], value] if a.option_strings else [value]
    for group in p._mutually_exclusive_groups:
        if group.required and dest not in [a.dest for a in group._group_actions]:
            first = group._group_actions[0]
            out += [first.option_strings[0], "1" if first.type in NUMERIC else "x"]
    return out
