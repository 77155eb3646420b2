"""Regression tests for the policy-layer review findings (gates, ``when`` evidence, durations,
YAML merge keys, policy test files, ``recover_after``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from driftwarden.detectors.base import DetectorResult
from driftwarden.policies.expr import parse
from driftwarden.policies.loader import load_policies, load_policy_file, parse_duration
from driftwarden.policies.model import PolicyError
from driftwarden.policies.policytest import run_policy_tests
from driftwarden.policies.schema import policy_schema
from driftwarden.retrain import gates as retrain_gates

from .detector_types import detector_types

HERE = Path(__file__).parent
ROOT = HERE.parent.parent

HEAD = """apiVersion: driftwarden/v1
kind: Policy
model: churn
reference: file:profile.json
"""


def _load(tmp_path: Path, text: str) -> tuple[Any, list[str]]:
    p = tmp_path / "p.yaml"
    p.write_text(text)
    ps, errors = load_policies(p, detector_types())
    return ps, [e.replace(f"{p}:", "") for e in errors]


# --- 1. retrain gates: the loader and retrain/gates.py agree ---------------------------------

GATES_POLICY = (
    HEAD
    + """window: {events: 1000}
detectors:
  - {name: drift, type: feature_drift}
rules:
  - name: drifted
    when: drift
    actions:
      - retrain: {trainer: 'm:f', gates: GATES}
"""
)
GATES_AT = "12: rules[0].actions[0].retrain.gates"


@pytest.mark.parametrize(
    ("gates", "error"),
    [
        ("{max: {log_loss: 0.5}}", f"{GATES_AT}.max: unknown key 'max'"),
        ("{min: {roc_acu: 0.8}}", f"{GATES_AT}.min.roc_acu: unknown metric 'roc_acu'"),
        (
            "{max_regression: {auc: 0.1}}",
            f"{GATES_AT}.max_regression.auc: unknown metric 'auc'",
        ),
        (
            "{slices: {tier: {max_drop: {recal: 0.1}}}}",
            f"{GATES_AT}.slices.tier.max_drop.recal: unknown metric 'recal'",
        ),
        ("{min_holdout: 0}", f"{GATES_AT}.min_holdout: must be an integer >= 1, not 0."),
        ("{min_holdout: 1.5}", f"{GATES_AT}.min_holdout: must be an integer >= 1, not 1.5."),
    ],
)
def test_loader_refuses_what_retrain_refuses(tmp_path: Path, gates: str, error: str) -> None:
    """A gate the retrain pipeline would refuse is refused by `validate` at file:line."""
    ps, errors = _load(tmp_path, GATES_POLICY.replace("GATES", gates))
    assert len(ps) == 0
    assert any(e.startswith(error) for e in errors), errors


@pytest.mark.parametrize(
    "gates",
    [
        "{min: {roc_auc: 0.8}, min_holdout: 200}",
        "{max_regression: {log_loss: 0.01}, slices: {tier: {max_drop: {recall: 0.05}, "
        "min_samples: 30}}}",
        "{min: {brier: 0.2, f1: 0.5, accuracy: 0.7, precision: 0.6}}",
    ],
)
def test_gates_the_loader_accepts_pass_retrain_validation(tmp_path: Path, gates: str) -> None:
    """What `driftwarden validate` accepts, the retrain pipeline's first check accepts too."""
    ps, errors = _load(tmp_path, GATES_POLICY.replace("GATES", gates))
    assert errors == []
    action = dict(ps.policies[0].rules[0].actions[0][1])
    retrain_gates.validate_gates(action["gates"])


def test_schema_json_gate_keys_match_retrain() -> None:
    """schema.json (for editors) lists exactly the gates retrain/gates.py knows."""
    schema = policy_schema()
    retrain = schema["$defs"]["action"]["properties"]["retrain"]["properties"]
    gates = retrain["gates"]["properties"]
    assert set(gates) == set(retrain_gates.GATE_KEYS)
    assert gates["min_holdout"] == {"type": "integer", "minimum": 1}
    assert set(gates["slices"]["additionalProperties"]["properties"]) == set(
        retrain_gates.SLICE_GATE_KEYS
    )


# --- 2. `when`: no evidence is unknown, and unknown never fires ------------------------------

_NONE = {"recall": DetectorResult("recall", "slice_performance", False, statistic=None)}
_NAN = {"drift": DetectorResult("drift", "feature_drift", False, statistic=math.nan)}


@pytest.mark.parametrize(
    ("text", "results"),
    [
        ("not recall.statistic <= 0.05", {}),
        ("not recall.statistic <= 0.05", _NONE),
        ("recall.statistic > 0.05", _NONE),
        ("drift.statistic != 0", _NAN),
        ("not drift.statistic == 0", _NAN),
        ("not (drift.statistic > 1 and drift.statistic < 2)", _NAN),
        ("not (drift.statistic > 1 or recall.statistic < 2)", {}),
    ],
)
def test_comparison_without_evidence_never_fires(text: str, results: dict[str, Any]) -> None:
    """A comparison on a missing result, a None or a NaN field is unknown, also under `not`."""
    assert parse(text).evaluate(results) is False


def test_kleene_and_or() -> None:
    """`and`/`or` follow Kleene: a definite operand can still decide an unknown one."""
    r = {"drift": DetectorResult("drift", "feature_drift", True, statistic=math.nan)}
    # unknown or True = True; unknown and False = False (so `not` of it is True)
    assert parse("drift.statistic > 1 or drift").evaluate(r) is True
    assert parse("not (drift.statistic > 1 and not drift)").evaluate(r) is True
    # unknown and True = unknown; unknown or False = unknown
    assert parse("drift.statistic > 1 and drift").evaluate(r) is False
    assert parse("not (drift.statistic > 1 and drift)").evaluate(r) is False
    assert parse("not (drift.statistic > 1 or not drift)").evaluate(r) is False


def test_bare_names_stay_two_valued() -> None:
    """`drift and not quality` fires when quality has no result (it did not trigger)."""
    r = {"drift": DetectorResult("drift", "feature_drift", True)}
    assert parse("drift and not quality").evaluate(r) is True
    assert parse("not drift").evaluate({}) is True


def test_definite_comparisons_still_work_under_not() -> None:
    """With evidence, `not` is plain negation."""
    r = {"recall": DetectorResult("recall", "slice_performance", False, statistic=0.2)}
    assert parse("not recall.statistic <= 0.05").evaluate(r) is True
    assert parse("not recall.statistic > 0.05").evaluate(r) is False


# --- 3. non-finite durations ------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", [math.nan, math.inf, "1" * 400 + "s"], ids=["nan", "inf", "overflowing-string"]
)
def test_parse_duration_refuses_non_finite(value: Any) -> None:
    """NaN and infinite durations are not durations (-inf was already refused as negative)."""
    with pytest.raises(ValueError, match="must be a finite number of seconds"):
        parse_duration(value)


def test_nan_durations_are_errors_at_file_line(tmp_path: Path) -> None:
    """`.nan`/`.inf` in a policy are reported at their line, like other bad durations."""
    ps, errors = _load(
        tmp_path,
        HEAD
        + """window: {duration: .nan}
detectors:
  - {name: drift, type: feature_drift}
rules:
  - {name: a, when: drift, cooldown: .inf, actions: [{alert: r}]}
receivers:
  r: {type: log}
""",
    )
    assert len(ps) == 0
    assert errors == [
        "5: window.duration: nan is not a duration (it must be a finite number of seconds).",
        "9: rules[0].cooldown: inf is not a duration (it must be a finite number of seconds).",
    ]


# --- 4. YAML merge keys ---------------------------------------------------------------------

MERGE = (
    HEAD
    + """window: {events: 1000}
detectors:
  - {name: drift, type: feature_drift}
  - {name: scores, type: prediction_drift}
rules:
  - &drift_rule
    name: drift-warning
    when: drift
    for: 2
    cooldown: 6h
    actions: [{alert: team}]
  - <<: *drift_rule
    name: scores-warning
    when: scores
receivers:
  team: {type: log}
"""
)


def test_merge_key_overrides_are_not_duplicates(tmp_path: Path) -> None:
    """Keys written next to `<<:` override the merged ones (YAML merge semantics)."""
    ps, errors = _load(tmp_path, MERGE)
    assert errors == []
    a, b = ps.policies[0].rules
    assert (a.name, a.when_text, a.for_windows, a.cooldown_s) == (
        "drift-warning",
        "drift",
        2,
        21600,
    )
    assert (b.name, b.when_text, b.for_windows, b.cooldown_s) == (
        "scores-warning",
        "scores",
        2,
        21600,
    )


def test_merge_key_sequences_resolve_like_safe_load(tmp_path: Path) -> None:
    """`<<: [...]` with a key in several merged mappings resolves as PyYAML's safe_load does."""
    text = MERGE.replace(
        "  - <<: *drift_rule\n",
        "  - <<: [{for: 3}, *drift_rule, {cooldown: 1h}]\n",
    )
    ps, errors = _load(tmp_path, text)
    assert errors == []
    want = yaml.safe_load(text)["rules"][1]
    b = ps.policies[0].rules[1]
    assert (b.for_windows, b.cooldown_s) == (want["for"], parse_duration(want["cooldown"]))


def test_aliased_merging_mapping_is_not_a_duplicate(tmp_path: Path) -> None:
    """A mapping with a merge key, itself aliased again later, is read the same way twice."""
    text = MERGE.replace(
        "  - <<: *drift_rule\n    name: scores-warning\n    when: scores\n",
        "  - &scores_rule\n    <<: *drift_rule\n    name: scores-warning\n    when: scores\n",
    ).replace("receivers:", "receivers_again: *scores_rule\nreceivers:")
    _, errors = _load(tmp_path, text)
    # only the (intended) unknown top-level key, no duplicate key complaints
    assert [e for e in errors if "duplicate" in e] == []
    assert any("receivers_again: unknown key" in e for e in errors), errors


def test_explicit_duplicates_next_to_a_merge_key_are_still_errors(tmp_path: Path) -> None:
    """Two explicit keys are still refused at the second one's line, merge key or not."""
    text = MERGE.replace("    when: scores\n", "    when: scores\n    name: again\n")
    _, errors = _load(tmp_path, text)
    assert errors == ["19: rules[1].name: duplicate key 'name' (first at line 17)."]


# --- 5. `driftwarden test` files: duplicate keys ----------------------------------------------


def test_policy_test_file_refuses_duplicate_keys(tmp_path: Path) -> None:
    """A second `tests:` block is an error at its line, not a silent replacement."""
    t = tmp_path / "t.yaml"
    t.write_text(
        f"policy: {ROOT / 'config' / 'policies' / 'churn.yaml'}\n"
        "tests:\n"
        "  - name: fails\n"
        "    windows: [{drift: false}]\n"
        "    expect: [{window: 0, rule: drifted, status: firing}]\n"
        "tests:\n"
        "  - name: passes\n"
        "    windows: [{}]\n"
    )
    report = run_policy_tests(t, detector_types())
    assert not report.ok
    assert f"{t}:6: tests: duplicate key 'tests' (first at line 2)." in report.text


def test_policy_test_file_duplicate_keys_in_a_case(tmp_path: Path) -> None:
    """Nested duplicates (here `expect` twice in one case) are refused too."""
    t = tmp_path / "t.yaml"
    t.write_text(
        f"policy: {ROOT / 'config' / 'policies' / 'churn.yaml'}\n"
        "tests:\n"
        "  - name: twice\n"
        "    windows: [{}]\n"
        "    expect: [{window: 0, rule: drifted, status: firing}]\n"
        "    expect: []\n"
    )
    report = run_policy_tests(t, detector_types())
    assert not report.ok
    assert f"{t}:6: tests[0].expect: duplicate key 'expect' (first at line 5)." in report.text


# --- 6. recover_after given twice -------------------------------------------------------------

RECOVER = (
    HEAD
    + """window: {events: 10}
detectors:
  - {name: drift, type: feature_drift}
rules:
  - name: a
    when: drift
    recover_after: RULE
    actions: [{fallback: {to: previous, recover_after: FALLBACK}}]
"""
)


def test_conflicting_recover_after_is_refused(tmp_path: Path) -> None:
    """A rule's recover_after and its fallback's differ: an error, not a silent override."""
    _, errors = _load(tmp_path, RECOVER.replace("RULE", "5").replace("FALLBACK", "1"))
    assert errors == [
        "12: rules[0].actions[0].fallback.recover_after: 1 conflicts with the rule's "
        "recover_after: 5 (line 11); give it once."
    ]


def test_equal_recover_after_twice_is_fine(tmp_path: Path) -> None:
    """The same value in both places is not a conflict."""
    ps, errors = _load(tmp_path, RECOVER.replace("RULE", "4").replace("FALLBACK", "4"))
    assert errors == []
    assert ps.policies[0].rules[0].recover_after == 4


def test_shipped_policies_still_load() -> None:
    """The example policies (and the demo's) are valid under the stricter checks."""
    for p in sorted((ROOT / "config").rglob("policies/*.yaml")):
        load_policy_file(p, detector_types())
    with pytest.raises(PolicyError):
        load_policy_file(HERE / "data" / "invalid" / "duplicate_yaml_key.yaml", detector_types())
