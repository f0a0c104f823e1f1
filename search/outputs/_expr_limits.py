"""Bounds on a ``--where`` filter's shape, checked before and right after parsing.

A filter within the 2000-character limit can still be hostile to the machinery that reads
it: a 400-digit integer overflows the conversion to float, and a thousand nested signs or
operators exhaust Python's recursion in the walks over the syntax tree. Each bound below
is far beyond a filter a person writes and far below what breaks the parser and the
checker, so a filter outside one is refused with a message naming the bound; the walks
here are iterative so they cannot themselves run out of stack.
"""

from __future__ import annotations

import ast
import io
import math
import re
import sys
import tokenize

MAX_DEPTH = 50  # nested operators, signs, not, brackets, calls
MAX_DIGITS = 40  # a float64 keeps 17 significant digits; more say nothing to a column
MAX_MAGNITUDE = sys.float_info.max  # |literal| beyond this is inf as a float64
_NOT_DIGITS = re.compile(r"[_.eEjJ+-]")


def scan_tokens(text: str) -> str | None:
    """The first problem the tokens of ``text`` show, or None: constructs pandas reads but
    Python's parser does not ('@' names, backticks), brackets nested beyond ``MAX_DEPTH``,
    numbers with too many digits or beyond float64. Stops quietly where the tokenizer
    does: the parser then names the problem."""
    if "\x00" in text:
        return "a null byte (\\x00) is not accepted; remove it"
    depth = 0
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.string == "@":
                return "'@' names (variables of the program) are not accepted"
            if tok.string == "`":
                return "backticks are not accepted"
            if tok.type == tokenize.OP and tok.string in ("(", "[", "{"):
                depth += 1
                if depth > MAX_DEPTH:
                    return _too_deep(f"more than {MAX_DEPTH} levels of brackets")
            elif tok.type == tokenize.OP and tok.string in (")", "]", "}"):
                depth -= 1
            elif tok.type == tokenize.NUMBER:
                problem = number_problem(tok.string)
                if problem:
                    return problem
    except (tokenize.TokenError, SyntaxError, ValueError):
        pass  # the parser names the problem
    return None


def number_problem(literal: str) -> str | None:
    """Why the number written ``literal`` is refused, or None: too many digits, or a
    value no float64 holds (``1e999`` would silently compare as infinity)."""
    body = literal.replace("_", "")
    if body[:2].lower() in ("0x", "0o", "0b"):
        digits = len(body) - 2
    else:
        digits = len(_NOT_DIGITS.sub("", body))
    short = literal if len(literal) <= 24 else f"{literal[:10]}...{literal[-10:]}"
    if digits > MAX_DIGITS:
        return (
            f"the number {short} has {digits} digits, at most {MAX_DIGITS} (a float64 column "
            "keeps 17 significant digits); write a large number with an exponent, e.g. 1e30"
        )
    if literal[-1] in "jJ":
        return None  # an imaginary number: the grammar refuses it by name
    try:
        value = float(int(body, 0)) if body[:2].lower() in ("0x", "0o", "0b") else float(body)
    except (ValueError, OverflowError):
        value = math.inf
    if not abs(value) <= MAX_MAGNITUDE:
        return (
            f"the number {short} is beyond float64 (at most {MAX_MAGNITUDE:.1e} in absolute "
            "value, the columns' type); write a smaller one"
        )
    return None


def tree_depth(node: ast.AST) -> int:
    """How deeply the expressions under ``node`` nest (``a > 1`` is 2), walked without
    recursion so a tree of any depth is measured."""
    deepest, stack = 0, [(node, 1)]
    while stack:
        n, d = stack.pop()
        deepest = max(deepest, d)
        stack.extend((c, d + 1 if isinstance(c, ast.expr) else d) for c in ast.iter_child_nodes(n))
    return deepest


def depth_problem(node: ast.AST) -> str | None:
    """Why the tree under ``node`` is refused as too deep, or None."""
    depth = tree_depth(node)
    return _too_deep(f"{depth} levels") if depth > MAX_DEPTH else None


def _too_deep(found: str) -> str:
    """The reason a filter nested beyond ``MAX_DEPTH`` is refused, with what to do."""
    return (
        f"nested too deeply ({found}; at most {MAX_DEPTH} levels of signs, not, operators, "
        "brackets and calls); drop repeated signs and redundant parentheses"
    )
