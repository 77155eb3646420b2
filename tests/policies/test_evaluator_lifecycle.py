"""Firing episodes that must end or complete whatever the operator does meanwhile: a rule that
leaves the policy while firing resolves (and routes the model back if it owned the fallback),
and a retrain withheld when its rule fired is issued once nothing withholds it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from driftwarden.detectors.base import DetectorResult
from driftwarden.policies.evaluator import PolicyState, evaluate
from driftwarden.policies.loader import load_policy_file
from driftwarden.policies.model import Decision, Policy, WindowInfo

T0 = 1_795_651_200.0
HOUR = 3600.0

BASE = """apiVersion: driftwarden/v1
kind: Policy
model: churn
reference: models:/churn@champion
window: {{events: 1000}}
detectors:
  - {{name: quality, type: data_quality}}
  - {{name: drift, type: feature_drift}}
rules:
{rules}
receivers:
  oncall: {{type: log}}
"""
BROKEN = """  - name: {name}
    when: quality
    severity: critical
    actions: [{{alert: oncall}}, {{fallback: {{to: previous}}}}]
"""
DRIFTED = """  - name: drifted
    when: drift and not quality
    actions: [{alert: oncall}]
"""
RETRAINS = """  - name: drifted
    when: drift
    actions: [{alert: oncall}, {retrain: {trainer: examples.churn:train}}]
retrain_limit: {max: 1, per: 1d}
"""


def _policy(tmp: Path, rules: str) -> Policy:
    path = tmp / f"p{len(list(tmp.glob('p*.yaml')))}.yaml"
    path.write_text(BASE.format(rules=rules), encoding="utf-8")
    return load_policy_file(path)


def _step(
    policy: Policy, i: int, fired: set[str], st: PolicyState
) -> tuple[list[Decision], PolicyState]:
    w = WindowInfo.from_epoch(i, T0 + i * HOUR, T0 + (i + 1) * HOUR)
    res = {d.name: DetectorResult(d.name, d.type, d.name in fired) for d in policy.detectors}
    return evaluate(policy, "churn", w, res, st, w.end_ts)


def _summary(ds: list[Decision]) -> list[tuple[Any, ...]]:
    return [(d.rule, d.status, sorted(a.type for a in d.actions)) for d in ds]


def test_a_renamed_fallback_rule_resolves_and_routes_the_model_back(tmp_path: Path) -> None:
    v1 = _policy(tmp_path, BROKEN.format(name="broken-input") + DRIFTED)
    v2 = _policy(tmp_path, BROKEN.format(name="broken_input") + DRIFTED)
    ds, st = _step(v1, 0, {"quality"}, PolicyState())
    assert _summary(ds) == [("broken-input", "firing", ["alert", "fallback"])]
    # Reloaded with the rule renamed: the old rule's firing ends in the next window.
    ds, st = _step(v2, 1, set(), st)
    assert _summary(ds) == [("broken-input", "resolved", ["resolve", "route_back"])]
    assert ds[0].severity == "critical"
    assert st.fallback is None
    # Drift alerts are no longer muted, and the renamed rule can fall back again.
    ds, st = _step(v2, 2, {"drift"}, st)
    assert _summary(ds) == [("drifted", "firing", ["alert"])]
    ds, st = _step(v2, 3, {"quality"}, st)
    assert ("broken_input", "firing", ["alert", "fallback"]) in _summary(ds)


def test_a_removed_alerting_rule_resolves_its_alert_once(tmp_path: Path) -> None:
    v1 = _policy(tmp_path, BROKEN.format(name="broken-input") + DRIFTED)
    v2 = _policy(tmp_path, BROKEN.format(name="broken-input"))
    ds, st = _step(v1, 0, {"drift"}, PolicyState())
    assert _summary(ds) == [("drifted", "firing", ["alert"])]
    ds, st = _step(v2, 1, {"drift"}, st)
    assert _summary(ds) == [("drifted", "resolved", ["resolve"])]
    assert [a.params for a in ds[0].actions] == [{"receiver": "oncall"}]
    ds, st = _step(v2, 2, {"drift"}, st)
    assert ds == []  # once
    # The policy state round-trips (checkpoints) with the new fields.
    assert PolicyState.from_dict(st.to_dict()) == st


def test_a_retrain_withheld_by_data_quality_comes_once_the_data_is_clean(tmp_path: Path) -> None:
    policy = _policy(tmp_path, RETRAINS)
    ds, st = _step(policy, 0, {"drift", "quality"}, PolicyState())
    assert _summary(ds) == [("drifted", "firing", ["alert"])]
    assert "withheld" in ds[0].reasons[0]
    assert PolicyState.from_dict(st.to_dict()) == st  # the debt survives a checkpoint
    ds, st = _step(policy, 1, {"drift", "quality"}, st)
    assert ds == []  # still broken input: still withheld
    ds, st = _step(policy, 2, {"drift"}, st)
    assert _summary(ds) == [("drifted", "firing", ["retrain"])]
    ds, st = _step(policy, 3, {"drift"}, st)
    assert ds == []  # once per firing


def test_a_retrain_withheld_by_the_rate_limit_comes_when_the_period_ends(tmp_path: Path) -> None:
    policy = _policy(tmp_path, RETRAINS)
    ds, st = _step(policy, 0, {"drift"}, PolicyState())
    assert _summary(ds) == [("drifted", "firing", ["alert", "retrain"])]
    ds, st = _step(policy, 1, set(), st)  # resolves
    ds, st = _step(policy, 2, {"drift"}, st)  # fires again within the day: limit reached
    assert _summary(ds) == [("drifted", "firing", ["alert"])]
    for i in range(3, 24):
        ds, st = _step(policy, i, {"drift"}, st)
        assert ds == [], i
    ds, st = _step(policy, 24, {"drift"}, st)  # a day after the first retrain
    assert _summary(ds) == [("drifted", "firing", ["retrain"])]
    # A withheld retrain is not issued once the rule resolved.
    ds, st = _step(policy, 25, set(), st)
    assert _summary(ds) == [("drifted", "resolved", ["resolve"])]
    assert not st.rules["drifted"].retrain_due
