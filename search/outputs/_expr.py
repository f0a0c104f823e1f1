"""The filter and sort grammar of ``query --where`` / ``--sort``: user text is data, never code.

A filter is parsed with Python's ``ast`` and only these constructs are accepted: column
names, numeric, string and boolean literals, comparisons (chained too), ``and`` / ``or`` /
``not``, ``in`` / ``not in`` over a literal list, and arithmetic between columns and
literals. Everything else (attributes, calls, subscripts, ``@`` names, lambdas,
comprehensions, backticks) is refused by name before anything is evaluated; so are
numbers beyond float64 or with more than 40 digits and nesting deeper than 50 levels (see
``_expr_limits``). The accepted tree is then evaluated with vectorised pandas operations
on the columns, so no Python code of the user's ever runs, and any text either filters or
raises ``ExpressionError``.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from typing import Any

import numpy as np
import pandas as pd

from vitpareto.errors import VitParetoError
from vitpareto.search.outputs._expr_limits import (
    MAX_DEPTH,
    MAX_MAGNITUDE,
    depth_problem,
    scan_tokens,
)

GRAMMAR = (
    "allowed: column names, numbers, 'strings', True/False, comparisons (< <= > >= == !=, "
    "chained), and/or/not, in/not in [literal list], + - * / // % ** and parentheses"
)
MAX_LENGTH = 2000  # characters; a filter is a line (depth and numbers: _expr_limits)
MAX_EXPONENT = 64.0  # `**` with a literal exponent above this is refused (huge powers)

_COMPARE = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}
_ARITH = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
# what a refused node is called in the message
_NAMES = {
    ast.Attribute: "attribute access ('.')",
    ast.Call: "a function or method call",
    ast.Subscript: "subscripts ('[...]')",
    ast.Lambda: "lambda",
    ast.ListComp: "a comprehension",
    ast.SetComp: "a comprehension",
    ast.DictComp: "a comprehension",
    ast.GeneratorExp: "a comprehension",
    ast.Starred: "'*' unpacking",
    ast.Dict: "a dict",
    ast.Set: "a set",
    ast.IfExp: "'x if c else y'",
    ast.NamedExpr: "':='",
    ast.JoinedStr: "an f-string",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.Slice: "a slice",
    ast.BitAnd: "'&' (write 'and')",
    ast.BitOr: "'|' (write 'or')",
    ast.BitXor: "'^'",
    ast.Invert: "'~' (write 'not')",
    ast.LShift: "'<<'",
    ast.RShift: "'>>'",
    ast.MatMult: "'@'",
    ast.Is: "'is'",
    ast.IsNot: "'is not'",
}
_SORT_KEY = re.compile(r"-?[A-Za-z_][A-Za-z0-9_]*")


class ExpressionError(VitParetoError):
    """A ``--where`` or ``--sort`` text outside the grammar, or naming no column."""


def _refuse(option: str, text: str, why: str) -> ExpressionError:
    """The error for ``text``: one line, whatever characters the reason quotes (a parser's
    message can hold the offending character, a line separator such as U+2028 too)."""
    why = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in why)
    return ExpressionError(f"{option} {text!r}: {why}; {GRAMMAR}")


def parse_where(text: str) -> ast.expr:
    """The checked syntax tree of a filter; raises ``ExpressionError`` naming the first
    construct outside the grammar. Needs no data: call it before any long work."""
    if not isinstance(text, str) or not text.strip():
        raise _refuse("--where", str(text), "empty filter")
    if len(text) > MAX_LENGTH:
        raise ExpressionError(
            f"--where: the filter is {len(text)} characters, at most {MAX_LENGTH}"
        )
    problem = scan_tokens(text)
    if problem:
        raise _refuse("--where", text, problem)
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError) as e:
        reason = e.msg if isinstance(e, SyntaxError) else str(e)
        raise _refuse("--where", text, f"not a valid expression ({reason})") from None
    except (RecursionError, MemoryError):
        why = f"nested too deeply for the parser (at most {MAX_DEPTH} levels); simplify it"
        raise _refuse("--where", text, why) from None
    problem = depth_problem(tree.body)  # before the recursive walks below
    if problem:
        raise _refuse("--where", text, problem)
    _check(tree.body, text)
    return tree.body


def _check(node: ast.AST, text: str, in_list: bool = False) -> None:
    refuse = lambda why: _refuse("--where", text, why)  # noqa: E731
    if isinstance(node, ast.Constant):
        v = node.value
        if isinstance(v, (bool, str)) or (isinstance(v, (int, float)) and _finite(v)):
            return
        if isinstance(v, (int, float)):
            raise refuse("a number beyond float64 (inf or NaN as a float64) is not accepted")
        raise refuse(f"the literal {v!r} is not a number, string or True/False")
    if isinstance(node, ast.Name):
        if in_list:
            raise refuse(f"'in [...]' takes literals only, not the column {node.id!r}")
        if node.id.startswith("__"):
            raise refuse(f"the name {node.id!r} is not a column")
        return
    if isinstance(node, ast.BoolOp):
        for v in node.values:
            _check(v, text)
        return
    if isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, (ast.Not, ast.USub, ast.UAdd)):
            raise refuse(f"{_NAMES.get(type(node.op), type(node.op).__name__)} is not accepted")
        _check(node.operand, text, in_list)
        return
    if isinstance(node, ast.BinOp):
        if type(node.op) not in _ARITH:
            raise refuse(f"{_NAMES.get(type(node.op), type(node.op).__name__)} is not accepted")
        _check(node.left, text)
        _check(node.right, text)  # first: a literal exponent is then a finite number
        if isinstance(node.op, ast.Pow):
            exp = _literal_number(node.right)
            if exp is None or abs(exp) > MAX_EXPONENT:
                raise refuse(f"'**' takes a literal exponent of at most {MAX_EXPONENT:g}")
        return
    if isinstance(node, ast.Compare):
        _check(node.left, text)
        for i, (op, right) in enumerate(zip(node.ops, node.comparators, strict=True)):
            if isinstance(op, (ast.In, ast.NotIn)):
                if i < len(node.ops) - 1:  # `x in [1] < y` would compare the list
                    raise refuse("'in [...]' ends a comparison; join another with 'and'")
                if not isinstance(right, (ast.List, ast.Tuple)):
                    raise refuse("'in' takes a literal list, e.g. patch_size in [4, 8]")
                for elt in right.elts:
                    _check(elt, text, in_list=True)
            elif type(op) in _COMPARE:
                _check(right, text)
            else:
                raise refuse(f"{_NAMES.get(type(op), type(op).__name__)} is not accepted")
        return
    if isinstance(node, (ast.List, ast.Tuple)):
        raise refuse("a list is accepted only after 'in'")
    raise refuse(f"{_NAMES.get(type(node), type(node).__name__)} is not accepted")


def _finite(v: int | float) -> bool:
    """Whether the number ``v`` is a float64 other than inf or NaN."""
    try:
        return math.isfinite(float(v)) and abs(float(v)) <= MAX_MAGNITUDE
    except OverflowError:  # an int beyond float64
        return False


def _literal_number(node: ast.AST) -> float | None:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _literal_number(node.operand)
        return None if v is None else (-v if isinstance(node.op, ast.USub) else v)
    if isinstance(node, ast.Constant) and not isinstance(node.value, (bool, str)):
        return float(node.value)
    return None


def where_rows(df: pd.DataFrame, text: str) -> pd.DataFrame:
    """The rows of ``df`` for which the filter ``text`` holds (NaN compares false)."""
    tree = parse_where(text)
    unknown = sorted({n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} - set(df.columns))
    if unknown:
        raise ExpressionError(
            f"--where {text!r}: no column {names(unknown)}; columns: {names(df.columns)}"
        )
    with np.errstate(all="ignore"):
        try:
            mask = _Evaluator(df, text).condition(tree)
        except ExpressionError:
            raise
        except (TypeError, ValueError, ArithmeticError, NotImplementedError, LookupError) as e:
            why = f"cannot be evaluated on these columns ({' '.join(str(e).split())})"
            raise _refuse("--where", text, why) from None
        except (RecursionError, MemoryError):
            raise _refuse("--where", text, "too complex to evaluate; simplify it") from None
    if not isinstance(mask, pd.Series):
        mask = pd.Series(bool(mask), index=df.index)
    return df[mask.fillna(False).astype(bool)]


class _Evaluator:
    """Evaluates a checked tree on a DataFrame's columns with pandas operations."""

    def __init__(self, df: pd.DataFrame, text: str):
        self.df, self.text = df, text

    def condition(self, node: ast.AST) -> Any:
        value = self.value(node)
        if not _is_bool(value):
            raise _refuse(
                "--where", self.text, f"{ast.unparse(node)!r} is not a condition (compare it)"
            )
        return value

    def value(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            v = node.value
            # numbers as float: integer arithmetic on literals is never unbounded
            return v if isinstance(v, (bool, str)) else np.float64(v)
        if isinstance(node, ast.Name):
            return self.df[node.id]
        if isinstance(node, ast.BoolOp):
            parts = [self.condition(v) for v in node.values]
            combine = operator.and_ if isinstance(node.op, ast.And) else operator.or_
            out = parts[0]
            for p in parts[1:]:
                out = combine(_as_bool(out), _as_bool(p))
            return out
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.Not):
                c = self.condition(node.operand)
                return ~_as_bool(c) if isinstance(c, pd.Series) else not c
            v = self.value(node.operand)
            self._numeric(v, node)
            return -v if isinstance(node.op, ast.USub) else +v
        if isinstance(node, ast.BinOp):
            left, right = self.value(node.left), self.value(node.right)
            self._numeric(left, node)
            self._numeric(right, node)
            return _ARITH[type(node.op)](left, right)
        if isinstance(node, ast.Compare):
            return self._compare(node)
        raise _refuse("--where", self.text, f"{type(node).__name__} is not accepted")

    def _compare(self, node: ast.Compare) -> Any:
        out = None
        left = self.value(node.left)
        for op, comp in zip(node.ops, node.comparators, strict=True):
            if isinstance(op, (ast.In, ast.NotIn)):
                items = [self.value(e) for e in comp.elts]
                items = [float(i) if isinstance(i, np.floating) else i for i in items]
                res = left.isin(items) if isinstance(left, pd.Series) else left in items
                if isinstance(op, ast.NotIn):
                    res = ~res if isinstance(res, pd.Series) else not res
                right = None
            else:
                right = self.value(comp)
                res = _COMPARE[type(op)](left, right)
            out = res if out is None else _as_bool(out) & _as_bool(res)
            left = right
        return out

    def _numeric(self, v: Any, node: ast.AST) -> None:
        ok = (
            pd.api.types.is_numeric_dtype(v.dtype) and not pd.api.types.is_bool_dtype(v.dtype)
            if isinstance(v, pd.Series)
            else isinstance(v, (int, float, np.floating)) and not isinstance(v, bool)
        )
        if not ok:
            raise _refuse(
                "--where", self.text, f"arithmetic in {ast.unparse(node)!r} needs numbers"
            )


def _is_bool(v: Any) -> bool:
    if isinstance(v, pd.Series):
        return pd.api.types.is_bool_dtype(v.dtype) or (
            v.dtype == object and v.dropna().map(lambda x: isinstance(x, bool)).all()
        )
    return isinstance(v, (bool, np.bool_))


def _as_bool(v: Any) -> Any:
    return v.fillna(False).astype(bool) if isinstance(v, pd.Series) else bool(v)


def parse_sort(text: str) -> list[tuple[str, bool]]:
    """``--sort`` as (column, ascending) pairs: comma-separated column names, ``-col`` for
    descending; nothing else is accepted."""
    keys = [k.strip() for k in (text or "").split(",") if k.strip()]
    if not keys:
        raise ExpressionError(f"--sort {text!r}: name a column, e.g. --sort=-accuracy")
    for k in keys:
        if not _SORT_KEY.fullmatch(k):
            raise ExpressionError(
                f"--sort {text!r}: {k!r} is not a column name; write comma-separated column "
                "names, '-' before one to sort it descending (--sort=-accuracy,latency_ms)"
            )
    return [(k.lstrip("-"), not k.startswith("-")) for k in keys]


def names(columns) -> str:
    """Column names as a user types them, comma-separated; a name that is not a plain one
    (a newline in an attribute stored by hand) quoted, so a message stays one line."""
    return ", ".join(c if str(c).isidentifier() else repr(c) for c in map(str, columns))


def sort_rows(df: pd.DataFrame, text: str) -> pd.DataFrame:
    """``df`` sorted by ``--sort`` text (see ``parse_sort``)."""
    keys = parse_sort(text)
    missing = [c for c, _ in keys if c not in df.columns]
    if missing:
        raise ExpressionError(f"--sort: no column {names(missing)}; columns: {names(df.columns)}")
    try:
        return df.sort_values([c for c, _ in keys], ascending=[a for _, a in keys])
    except TypeError as e:  # a column of mixed types: strings beside numbers
        raise ExpressionError(f"--sort {text!r}: cannot sort these columns ({e})") from None
