"""The documentation against the code, so that neither drifts from the other: the README
stays a short front page; every page of docs/ is in the site's navigation and every page
named there exists; every command and option written in the README and the pages is one
the parsers take (found by walking them); every Python block parses; the README's links
resolve, those into benchmarks/RESULTS.md to a heading there; and the command-line
reference the site generates names every command and option. The site itself is built in
strict mode by ``make test`` (broken links and anchors fail it there)."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import yaml

from tests.helpers.options import commands

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
MAX_README = 10_000
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.M | re.S)
OPTION = re.compile(r"--[a-z][a-z0-9-]*")
COMMAND = re.compile(r"(?<![\w./\[-])vitpareto[ \t]+([a-z][\w-]*)")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def pages() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def hook(name: str):
    """A build hook of docs/hooks/, imported as mkdocs imports it."""
    spec = importlib.util.spec_from_file_location(
        f"docs_hook_{name}", DOCS / "hooks" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nav_pages(nav) -> list[str]:
    """Every page file the navigation of mkdocs.yml names."""
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [p for v in nav.values() for p in nav_pages(v)]
    return [p for item in nav for p in nav_pages(item)]


def bench_options() -> dict[str, set[str]]:
    """The options each benchmark script's parser takes (read from its source)."""
    out = {}
    for path in (ROOT / "benchmarks").glob("*.py"):
        out[path.name] = {
            a.value
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument"
            for a in node.args
            if isinstance(a, ast.Constant) and str(a.value).startswith("--")
        }
    return out


def blocks(text: str) -> list[str]:
    """The paragraphs and list items of ``text`` outside fenced blocks."""
    prose = FENCE.sub("\n\n", text)
    return [b for b in re.split(r"\n\s*\n|\n(?=\s*(?:[-*]|\d+\.) )", prose) if b.strip()]


def code_lines(text: str) -> list[str]:
    """The logical lines of every fenced block that is not Python: a line ending in ``\\``
    or followed by an indented one goes on; comments dropped."""
    out: list[str] = []
    for lang, body in FENCE.findall(text):
        if lang == "python":
            continue
        for line in body.splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).rstrip()
            if out and (out[-1].endswith("\\") or (line[:1].isspace() and out[-1])):
                out[-1] = out[-1].rstrip("\\") + " " + line.strip()
            else:
                out.append(line)
    return out


def spans(text: str) -> list[tuple[str, str]]:
    """(what it is, text) of every place a command or an option is written: ``command``
    for a code line or inline code that begins with a program, ``bare`` for options
    written on their own, with the first benchmark script named in the same paragraph
    (``bench:NAME``) as their context."""
    out = [("command", line) for line in code_lines(text)]
    for block in blocks(text):
        code = re.findall(r"`([^`]+)`", block)
        script = re.search(r"benchmarks/(bench_\w+\.py)", code[0]) if code else None
        context = f"bench:{script.group(1)}" if script else "bare"
        out += [("command", c) if not c.startswith("--") else (context, c) for c in code]
        plain = re.sub(r"`[^`]+`", " ", block)
        out += [(context, o) for o in OPTION.findall(plain)]
    return out


def allowed_options(kind: str, span: str, cmds: dict, bench: dict) -> set[str] | None:
    """The options ``span`` may name (None: another program's command line, not checked)."""
    every = {o for p in cmds.values() for a in p._actions for o in a.option_strings}
    if kind.startswith("bench:"):
        return bench[kind.removeprefix("bench:")]
    if kind == "bare":
        return every | set().union(*bench.values())
    words = span.split()
    words = words[1:] if words[:1] == ["vitpareto"] else words
    if words and words[0] in cmds:
        return {o for a in cmds[words[0]]._actions for o in a.option_strings}
    if script := re.match(r"python\s+benchmarks/(bench_\w+\.py)", span):
        return bench.get(script.group(1), set())
    return None  # ray, pip, make, optuna-dashboard, a placeholder such as COMMAND


def github_anchors(text: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file (a repeated heading's
    second anchor ends in -1, its third in -2)."""
    anchors: set[str] = set()
    counts: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6} (.+)$", FENCE.sub("", text), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        n = counts[slug] = counts.get(slug, -1) + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def test_the_readme_is_short():
    assert len(README.read_text()) <= MAX_README, f"README.md: {len(README.read_text())} chars"


def test_the_navigation_and_the_pages_agree():
    nav = nav_pages(yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"])
    generated = {hook("results").PAGE}
    missing = [p for p in nav if not (DOCS / p).is_file() and p not in generated]
    on_disk = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert not missing, f"in the navigation, not in docs/: {missing}"
    assert not on_disk - set(nav), f"in docs/, not in the navigation: {sorted(on_disk - set(nav))}"


def test_every_command_and_option_written_exists():
    cmds, bench = commands(), bench_options()
    wrong = []
    for page in pages():
        for kind, span in spans(page.read_text()):
            where = f"{page.relative_to(ROOT)}: `{' '.join(span.split())}`"
            wrong += [f"{where}: no command {c}" for c in COMMAND.findall(span) if c not in cmds]
            allowed = allowed_options(kind, span, cmds, bench)
            if allowed is not None:
                wrong += [
                    f"{where}: no option {o}" for o in OPTION.findall(span) if o not in allowed
                ]
    assert not wrong, "\n".join(wrong)


def test_every_python_block_parses():
    broken = []
    for page in pages():
        for lang, body in FENCE.findall(page.read_text()):
            if lang != "python":
                continue
            try:
                ast.parse(body)
            except SyntaxError as e:
                broken.append(f"{page.relative_to(ROOT)}: {e}")
    assert not broken, "\n".join(broken)


def test_the_readme_links_resolve():
    wrong = []
    for target in LINK.findall(README.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = ROOT / path
        if not file.is_file():
            wrong.append(f"{target}: no such file")
        elif anchor and anchor not in github_anchors(file.read_text()):
            wrong.append(f"{target}: no such heading")
    assert not wrong, "\n".join(wrong)


def test_the_generated_reference_names_every_command_and_option():
    reference = hook("cli").reference()
    missing = [
        f"{name} {option}"
        for name, p in commands().items()
        for option in ["", *(o for a in p._actions for o in a.option_strings)]
        if f"## vitpareto {name}\n" not in reference or option not in reference
    ]
    assert not missing, missing
