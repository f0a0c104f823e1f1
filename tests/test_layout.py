"""The shape of the code base: layers without import cycles, no package reaching into
another's private modules, small modules and functions, imports at the top, and a wheel
that holds every sub-package."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# import name of each source folder (pyproject's package-dir)
FOLDERS = {
    "search/_root": "vitpareto",
    "spaces": "vitpareto.spaces",
    "evaluators": "vitpareto.evaluators",
    "search": "vitpareto.search",
}
LAZY_ALLOWED = (
    "ray",
    "plotly",
    "matplotlib",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "torch_tensorrt",
    "sklearn",  # a second of every command's start, for digits and one sampler only
)
MAX_LINES = 400
MAX_FUNCTION = 80  # lines of one function, its docstring included


def modules() -> dict[str, Path]:
    """Every module of the package by its import name."""
    out = {}
    for folder, name in FOLDERS.items():
        base = ROOT / folder
        for path in base.rglob("*.py"):
            rel = path.relative_to(base).with_suffix("")
            if folder == "search" and rel.parts[0] == "_root":
                continue
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([name, *parts])] = path
    return out


def imports(path: Path) -> list[tuple[str, list[str], int, bool]]:
    """(module, names, line, outside any function) of each import in ``path``."""
    found = []

    def walk(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ImportFrom) and child.module:
                names = [a.name for a in child.names]
                found.append((child.module, names, child.lineno, not in_function))
            elif isinstance(child, ast.Import):
                found.extend((a.name, [], child.lineno, not in_function) for a in child.names)
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            walk(child, inner)

    walk(ast.parse(path.read_text()), False)
    return found


def edges() -> dict[str, set[str]]:
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        for target, names, _, _ in imports(path):
            if not target.startswith("vitpareto"):
                continue
            heads = [f"{target}.{n}" for n in names if f"{target}.{n}" in mods] or [target]
            for h in heads:
                if h in mods and not mod.startswith(h + ".") and h != mod:
                    graph[mod].add(h)  # a module's own parent packages load first anyway
    return graph


def test_the_import_graph_has_no_cycle():
    graph = edges()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle = stack[stack.index(n) :] + [n]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def _private_owner(target: str) -> str | None:
    """The package whose private module ``target`` is (None when it is public)."""
    parts = target.split(".")
    for i, p in enumerate(parts):
        if p.startswith("_"):
            return ".".join(parts[:i])
    return None


def test_no_package_imports_another_packages_private_modules():
    wrong = []
    for mod, path in modules().items():
        for target, names, line, _ in imports(path):
            for t in [target] + [f"{target}.{n}" for n in names if n.startswith("_")]:
                owner = _private_owner(t) if t.startswith("vitpareto") else None
                if owner and not (mod == owner or mod.startswith(owner + ".")):
                    wrong.append(f"{path.relative_to(ROOT)}:{line} imports {t}")
    assert not wrong, "\n".join(wrong)


def test_tests_benchmarks_readme_and_docs_use_public_names_only():
    """As a user would: what the README and the pages under docs/ show (and the hooks
    that build the site) imports no private module."""
    wrong = []
    for path in [
        *(ROOT / "tests").rglob("*.py"),
        *(ROOT / "benchmarks").rglob("*.py"),
        *(ROOT / "docs").rglob("*.py"),
    ]:
        for target, names, line, _ in imports(path):
            ts = [target] + [f"{target}.{n}" for n in names if n.startswith("_")]
            if any(t.startswith("vitpareto") and _private_owner(t) for t in ts):
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        text = page.read_text()
        for m in re.finditer(r"(?:from|import) (vitpareto[\w.]*)", text):
            if _private_owner(m.group(1)):
                wrong.append(f"{page.relative_to(ROOT)} imports {m.group(1)}")
    assert not wrong, "\n".join(wrong)


def test_modules_are_small():
    files = [
        *modules().values(),
        *(ROOT / "benchmarks").glob("*.py"),
        *(ROOT / "tests").rglob("*.py"),
    ]
    long = [
        f"{p.relative_to(ROOT)}: {n}"
        for p in files
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    ]
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_functions_are_short():
    files = [*modules().values(), *(ROOT / "benchmarks").glob("*.py")]
    long = [
        f"{p.relative_to(ROOT)}: {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for p in files
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION
    ]
    assert not long, f"functions over {MAX_FUNCTION} lines: {long}"


def test_imports_sit_at_the_top():
    """Only optional heavy libraries are imported inside functions (and ``vitpareto.load``,
    whose package every sub-package imports first)."""
    late = []
    for mod, path in modules().items():
        for target, _, line, top in imports(path):
            if top or target.split(".")[0] in LAZY_ALLOWED:
                continue
            if mod == "vitpareto" and target == "vitpareto.search.outputs":
                continue
            late.append(f"{path.relative_to(ROOT)}:{line} imports {target} inside a function")
    assert not late, "\n".join(late)


def test_every_folder_is_a_listed_package():
    """An editable install imports unlisted folders anyway; a wheel would lack them."""
    text = (ROOT / "pyproject.toml").read_text()
    listed = set(re.findall(r'"(vitpareto[\w.]*)"\s*=', text))
    packages = {m for m, p in modules().items() if p.name == "__init__.py"}
    assert packages == listed, f"in pyproject: {sorted(listed)}; on disk: {sorted(packages)}"


@pytest.mark.slow  # a process of its own
def test_the_public_api_imports_from_a_built_wheel(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    (wheel,) = tmp_path.glob("vitpareto-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for sub in ("supernet", "explore", "outputs", "cli"):
        assert f"vitpareto/search/{sub}/__init__.py" in names
    # the wheel first on the path: it, not the editable install, is what gets imported
    code = (
        "import vitpareto, vitpareto.search as s; "
        "from vitpareto.search import SearchConfig, search, load_supernet, load_trials, "
        "export_trials, write_report; "
        "from vitpareto.search.cli import main; "
        "print(vitpareto.__file__); print(s.__file__)"
    )
    env = {"PYTHONPATH": str(wheel), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert all(str(wheel) in line for line in out.stdout.split()), out.stdout


@pytest.mark.xdist_group("layout")
def test_xdist_groups_hold(request):
    """Tests that must share one pytest-xdist worker (one Ray cluster, one long training)
    say so with xdist_group; under ``--dist loadgroup`` the group must reach the
    scheduler as a suffix of the test's id. pytest 9.2 keeps ids where pytest-xdist 3.8
    cannot add it, and every group was then silently ignored: two Ray clusters, every
    module fixture of a group built on both workers."""
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("not run with --dist loadgroup")
    assert request.node.nodeid.endswith("@layout"), request.node.nodeid
