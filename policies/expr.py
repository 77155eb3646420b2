"""The ``when`` grammar of policy rules: a tiny boolean language over detector results.

Grammar (lowest precedence first)::

    expr       := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | atom
    atom       := "(" expr ")" | comparison | NAME
    comparison := NAME "." FIELD OP NUMBER      # e.g. drift.statistic > 0.3
    FIELD      := statistic | p_value | threshold | n
    OP         := > | >= | < | <= | == | !=

A bare ``NAME`` is true when that detector triggered in the window, false otherwise (also
when it has no result: it did not trigger). A comparison is *unknown* when the detector has no
result or the field is ``None`` or NaN, and the logic is three-valued (Kleene): ``not``
unknown is unknown; ``and`` is false if any operand is false, else unknown if any is unknown;
``or`` is true if any operand is true, else unknown if any is unknown. A rule fires only when
its expression is definitely true, so no evidence never fires a rule, ``not`` included:
``not recall.statistic <= 0.05`` is not true before the first labeled window closes, while
``drift and not quality`` is true when ``drift`` triggered and ``quality`` has no result.
The text is tokenised and parsed by hand: nothing is ever passed to ``eval``.

>>> from driftwarden.detectors.base import DetectorResult
>>> e = parse("(drift or recall) and not quality")
>>> sorted(e.names())
['drift', 'quality', 'recall']
>>> e.evaluate({"drift": DetectorResult("drift", "feature_drift", True)})
True
>>> parse("not recall.statistic < 0.5").evaluate({})  # unknown: no evidence
False
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from driftwarden.detectors.base import DetectorResult

__all__ = [
    "KEYWORDS",
    "And",
    "Compare",
    "Expr",
    "ExprError",
    "Name",
    "Not",
    "Or",
    "parse",
    "positive_names",
]

KEYWORDS = frozenset({"and", "or", "not"})
FIELDS = ("statistic", "p_value", "threshold", "n")
_OPS = {
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}

# Order matters: two-character operators before their one-character prefixes.
_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<number>-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_-]*)
  | (?P<op>>=|<=|==|!=|>|<)
  | (?P<punct>[().])
    """,
    re.VERBOSE,
)


class ExprError(ValueError):
    """A ``when`` expression does not parse; ``column`` is 1-based."""

    def __init__(self, message: str, column: int) -> None:
        super().__init__(f"column {column}: {message}")
        self.message = message
        self.column = column


@dataclass(frozen=True)
class _Tok:
    kind: str  # name | number | op | punct | end
    text: str
    col: int  # 1-based


def _tokens(text: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ExprError(f"unexpected character {text[pos]!r}", pos + 1)
        kind = m.lastgroup or ""
        if kind != "ws":
            out.append(_Tok(kind, m.group(), pos + 1))
        pos = m.end()
    out.append(_Tok("end", "", len(text) + 1))
    return out


class Expr:
    """Base of the expression tree."""

    def names(self) -> frozenset[str]:
        """Every detector name the expression refers to."""
        raise NotImplementedError

    def evaluate(self, results: Mapping[str, DetectorResult]) -> bool:
        """Whether the expression is definitely true for one window's detector results
        (unknown, for lack of evidence, is not true: see the module docstring)."""
        return self._truth(results) is True

    def _truth(self, results: Mapping[str, DetectorResult]) -> bool | None:
        """Three-valued truth: ``True``, ``False`` or ``None`` for unknown (Kleene logic)."""
        raise NotImplementedError


@dataclass(frozen=True)
class Name(Expr):
    """A detector name: true when that detector triggered."""

    name: str
    col: int = field(default=0, compare=False)

    def names(self) -> frozenset[str]:
        return frozenset({self.name})

    def _truth(self, results: Mapping[str, DetectorResult]) -> bool | None:
        # Two-valued on purpose: no result means the detector did not trigger.
        r = results.get(self.name)
        return bool(r is not None and r.triggered)

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Compare(Expr):
    """``name.field OP number`` on one detector's result."""

    name: str
    attr: str
    op: str
    value: float
    col: int = field(default=0, compare=False)

    def names(self) -> frozenset[str]:
        return frozenset({self.name})

    def _truth(self, results: Mapping[str, DetectorResult]) -> bool | None:
        # No result, no value or NaN is no evidence: unknown, so that `not` cannot turn it
        # into a firing rule (and NaN != x, which Python calls true, does not fire either).
        r = results.get(self.name)
        if r is None:
            return None
        got = getattr(r, self.attr)
        if got is None:
            return None
        x = float(got)
        if math.isnan(x):
            return None
        return bool(_OPS[self.op](x, self.value))

    def __str__(self) -> str:
        return f"{self.name}.{self.attr} {self.op} {self.value:g}"


@dataclass(frozen=True)
class Not(Expr):
    """Negation."""

    operand: Expr

    def names(self) -> frozenset[str]:
        return self.operand.names()

    def _truth(self, results: Mapping[str, DetectorResult]) -> bool | None:
        t = self.operand._truth(results)
        return None if t is None else not t

    def __str__(self) -> str:
        return f"not {_wrap(self.operand)}"


@dataclass(frozen=True)
class And(Expr):
    """Conjunction of two or more operands."""

    operands: tuple[Expr, ...]

    def names(self) -> frozenset[str]:
        return frozenset().union(*(o.names() for o in self.operands))

    def _truth(self, results: Mapping[str, DetectorResult]) -> bool | None:
        unknown = False
        for o in self.operands:
            t = o._truth(results)
            if t is False:
                return False
            unknown = unknown or t is None
        return None if unknown else True

    def __str__(self) -> str:
        return " and ".join(_wrap(o) for o in self.operands)


@dataclass(frozen=True)
class Or(Expr):
    """Disjunction of two or more operands."""

    operands: tuple[Expr, ...]

    def names(self) -> frozenset[str]:
        return frozenset().union(*(o.names() for o in self.operands))

    def _truth(self, results: Mapping[str, DetectorResult]) -> bool | None:
        unknown = False
        for o in self.operands:
            t = o._truth(results)
            if t is True:
                return True
            unknown = unknown or t is None
        return None if unknown else False

    def __str__(self) -> str:
        return " or ".join(_wrap(o) for o in self.operands)


def _wrap(e: Expr) -> str:
    # Parenthesise compound operands so str() re-parses to the same tree.
    return f"({e})" if isinstance(e, (And, Or)) else str(e)


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0

    @property
    def tok(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        t = self.toks[self.i]
        self.i += 1
        return t

    def is_kw(self, kw: str) -> bool:
        return self.tok.kind == "name" and self.tok.text == kw

    def parse(self) -> Expr:
        if self.tok.kind == "end":
            raise ExprError("the expression is empty", self.tok.col)
        e = self.or_expr()
        if self.tok.kind != "end":
            raise ExprError(
                f"expected 'and', 'or' or the end but found {_show(self.tok)}", self.tok.col
            )
        return e

    def or_expr(self) -> Expr:
        parts = [self.and_expr()]
        while self.is_kw("or"):
            self.take()
            parts.append(self.and_expr())
        return parts[0] if len(parts) == 1 else Or(tuple(parts))

    def and_expr(self) -> Expr:
        parts = [self.not_expr()]
        while self.is_kw("and"):
            self.take()
            parts.append(self.not_expr())
        return parts[0] if len(parts) == 1 else And(tuple(parts))

    def not_expr(self) -> Expr:
        if self.is_kw("not"):
            self.take()
            return Not(self.not_expr())
        return self.atom()

    def atom(self) -> Expr:
        t = self.tok
        if t.kind == "punct" and t.text == "(":
            self.take()
            e = self.or_expr()
            if not (self.tok.kind == "punct" and self.tok.text == ")"):
                raise ExprError(
                    f"expected ')' to close the '(' at column {t.col} but found {_show(self.tok)}",
                    self.tok.col,
                )
            self.take()
            return e
        if t.kind != "name" or t.text in KEYWORDS:
            raise ExprError(f"expected a detector name or '(' but found {_show(t)}", t.col)
        self.take()
        if not (self.tok.kind == "punct" and self.tok.text == "."):
            return Name(t.text, t.col)
        self.take()
        f = self.take()
        if f.kind != "name" or f.text not in FIELDS:
            raise ExprError(
                f"expected a result field ({', '.join(FIELDS)}) after '{t.text}.' but found "
                f"{_show(f)}",
                f.col,
            )
        op = self.take()
        if op.kind != "op":
            raise ExprError(
                f"expected a comparison (>, >=, <, <=, ==, !=) but found {_show(op)}", op.col
            )
        num = self.take()
        if num.kind != "number":
            raise ExprError(f"expected a number but found {_show(num)}", num.col)
        return Compare(t.text, f.text, op.text, float(num.text), t.col)


def _show(t: _Tok) -> str:
    return "the end" if t.kind == "end" else repr(t.text)


def parse(text: str) -> Expr:
    """Parse a ``when`` expression; :class:`ExprError` gives the 1-based column of the problem."""
    return _Parser(text).parse()


def positive_names(e: Expr, negated: bool = False) -> frozenset[str]:
    """Names that make ``e`` more likely true when they trigger (under an even number of ``not``).

    ``(drift or recall) and not quality`` → ``{drift, recall}``: the rule is *about* drift,
    and ``quality`` only guards it.
    """
    if isinstance(e, Not):
        return positive_names(e.operand, not negated)
    if isinstance(e, (And, Or)):
        return frozenset().union(*(positive_names(o, negated) for o in e.operands))
    return frozenset() if negated else e.names()
