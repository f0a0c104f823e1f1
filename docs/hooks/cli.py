"""The command-line reference, written from the parsers at each build so that it cannot
drift from them: the ``<!-- cli-reference -->`` line of cli.md becomes, for every command
``main`` builds, its one-line help, usage, description and a table of its options."""

from __future__ import annotations

import argparse
import html

from mkdocs.exceptions import PluginError

from vitpareto.search.cli import parser

MARKER = "<!-- cli-reference -->"
PAGE = "cli.md"
WIDTH = 88  # usage lines are wrapped here, not at the width of the terminal that builds


def commands(p: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of each command, in the order ``main`` adds them."""
    (sub,) = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    helps = {a.dest: a.help or "" for a in sub._choices_actions}
    return [(name, helps.get(name, ""), cmd) for name, cmd in sub.choices.items()]


def text(s: str) -> str:
    """``s`` as Markdown shows it literally (in a paragraph or a table cell), but for
    `code`, which the help texts mark as the page does."""
    code = s.count("`") % 2 == 0
    parts = s.split("`") if code else [s]
    for i in range(0, len(parts), 2):  # outside `code`
        part = html.escape(parts[i], quote=False)
        for ch in "\\*_[]|" + ("" if code else "`"):
            part = part.replace(ch, "\\" + ch)
        parts[i] = part
    return "`".join(parts)


def usage(p: argparse.ArgumentParser) -> str:
    fmt = p.formatter_class(prog=p.prog, width=WIDTH)
    fmt.add_usage(p.usage, p._actions, p._mutually_exclusive_groups)
    return fmt.format_help().strip()


def option_row(p: argparse.ArgumentParser, action: argparse.Action) -> str:
    """One table row: the option as ``--help`` writes it, and what it does."""
    fmt = p.formatter_class(prog=p.prog, width=WIDTH)
    names = fmt._format_action_invocation(action)
    says = fmt._expand_help(action) if action.help else ""
    if action.choices and not says:
        says = "one of: " + ", ".join(map(str, action.choices))
    if action.required:
        says = f"required; {says}" if says else "required"
    return f"| `{names}` | {text(says)} |"


def reference() -> str:
    """The Markdown of every command, from the parsers."""
    top = parser()
    out = [text(top.description or ""), "", text(top.epilog or ""), ""]
    out += [f"- [`vitpareto {name}`](#vitpareto-{name}): {text(h)}" for name, h, _ in commands(top)]
    for name, h, cmd in commands(top):
        out += ["", f"## vitpareto {name}", "", text(h), "", "```text", usage(cmd), "```", ""]
        if cmd.description:
            out += [text(cmd.description), ""]
        actions = [a for a in cmd._actions if a.help is not argparse.SUPPRESS]
        out += ["| option | what it does |", "|---|---|"]
        out += [option_row(cmd, a) for a in actions]
    return "\n".join(out) + "\n"


def on_page_markdown(markdown: str, page, **kwargs) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        raise PluginError(f"{PAGE} lacks the line {MARKER} that the command reference replaces")
    return markdown.replace(MARKER, reference())
