"""Tests of the ``when`` grammar: precedence, parentheses, comparisons, errors with columns."""

from __future__ import annotations

import builtins
import itertools

import pytest

from driftwarden.detectors.base import DetectorResult
from driftwarden.policies.expr import (
    And,
    Compare,
    ExprError,
    Name,
    Not,
    Or,
    parse,
    positive_names,
)


def results(**triggered: bool) -> dict[str, DetectorResult]:
    """Detector results with only ``triggered`` set."""
    return {n: DetectorResult(n, "x", t) for n, t in triggered.items()}


def test_and_binds_tighter_than_or() -> None:
    """``a or b and c`` is ``a or (b and c)``."""
    assert parse("a or b and c") == Or((Name("a"), And((Name("b"), Name("c")))))


def test_not_binds_tighter_than_and() -> None:
    """``not a and b`` is ``(not a) and b``."""
    assert parse("not a and b") == And((Not(Name("a")), Name("b")))


def test_parentheses_override_precedence() -> None:
    """``(a or b) and not c`` groups the ``or``."""
    assert parse("(a or b) and not c") == And((Or((Name("a"), Name("b"))), Not(Name("c"))))


def test_truth_table_matches_python_booleans() -> None:
    """Every assignment of three detectors gives the same truth as the equivalent Python."""
    e = parse("(a or b) and not c or not (a and b)")
    for a, b, c in itertools.product([False, True], repeat=3):
        want = (a or b) and not c or not (a and b)
        assert e.evaluate(results(a=a, b=b, c=c)) is want, (a, b, c)


def test_str_round_trips() -> None:
    """The canonical text of a tree parses back to the same tree."""
    for text in ["a or b and c", "not (a or b)", "(a or b) and not c", "d.statistic >= 0.3 or e"]:
        e = parse(text)
        assert parse(str(e)) == e


def test_names_lists_every_detector() -> None:
    """``names()`` collects names from every branch, comparisons included."""
    assert parse("(drift or recall) and not quality or scores.p_value < 0.01").names() == {
        "drift",
        "recall",
        "quality",
        "scores",
    }


def test_positive_names_skip_negated_guards() -> None:
    """A name under ``not`` only guards the rule; under two ``not`` it counts again."""
    assert positive_names(parse("(drift or recall) and not quality")) == {"drift", "recall"}
    assert positive_names(parse("not not quality")) == {"quality"}


def test_comparison_on_statistic() -> None:
    """``drift.statistic > 0.3`` reads the result's statistic; missing values are false."""
    e = parse("drift.statistic > 0.3")
    assert e == Compare("drift", "statistic", ">", 0.3)
    assert e.evaluate({"drift": DetectorResult("drift", "x", False, statistic=0.31)})
    assert not e.evaluate({"drift": DetectorResult("drift", "x", True, statistic=0.3)})
    assert not e.evaluate({"drift": DetectorResult("drift", "x", True, statistic=None)})
    assert not e.evaluate({})


def test_missing_result_is_not_triggered() -> None:
    """A detector without a result this window did not trigger."""
    assert parse("not drift").evaluate({})


def test_hyphenated_names_and_negative_numbers() -> None:
    """Names may contain ``-``; numbers may be negative or in exponent form."""
    assert parse("enterprise-recall.statistic < -1e-3") == Compare(
        "enterprise-recall", "statistic", "<", -0.001
    )


@pytest.mark.parametrize(
    ("text", "column", "fragment"),
    [
        ("", 1, "empty"),
        ("drift and", 10, "expected a detector name or '(' but found the end"),
        ("(drift or quality", 18, "expected ')' to close the '(' at column 1"),
        ("drift quality", 7, "expected 'and', 'or' or the end but found 'quality'"),
        ("drift && quality", 7, "unexpected character '&'"),
        ("drift.stat > 1", 7, "expected a result field"),
        ("drift.statistic = 1", 17, "unexpected character '='"),
        ("drift.statistic > high", 19, "expected a number"),
        ("not or", 5, "expected a detector name or '(' but found 'or'"),
        ("__import__('os').system('x')", 12, 'unexpected character "\'"'),
        ("__import__ (os)", 12, "expected 'and', 'or' or the end but found '('"),
    ],
)
def test_errors_name_the_column(text: str, column: int, fragment: str) -> None:
    """A syntax error carries the 1-based column of the offending token and says what it expected."""
    with pytest.raises(ExprError) as info:
        parse(text)
    assert info.value.column == column
    assert fragment in str(info.value)
    assert str(info.value).startswith(f"column {column}: ")


def test_never_calls_eval(monkeypatch: pytest.MonkeyPatch) -> None:
    """Parsing and evaluating never reach ``eval``/``exec``/``compile``."""

    def boom(*_a: object, **_k: object) -> None:
        raise AssertionError("eval-like builtin called")

    for name in ("eval", "exec", "compile"):
        monkeypatch.setattr(builtins, name, boom)
    e = parse("(a or b) and not c.statistic > 1")
    # c needs a statistic: without one `not c.statistic > 1` is unknown, never true.
    c = DetectorResult("c", "x", False, statistic=0.5)
    assert e.evaluate({**results(a=True, b=False), "c": c}) is True
