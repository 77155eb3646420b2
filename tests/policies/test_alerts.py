"""Tests for the alert lifecycle (``driftwarden.policies.alerts``): pure, no I/O."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from driftwarden.detectors.base import DetectorResult, StateVersionError
from driftwarden.policies.alerts import (
    ALERT_STATE_VERSION,
    FALLBACK_ALERTNAME,
    Alert,
    AlertBook,
    alert_from_decision,
    alertname_for_rule,
    fallback_fingerprint,
    parse_time,
)
from driftwarden.policies.model import Decision, fingerprint


def make_decision(
    status: str = "firing",
    *,
    model: str = "churn",
    rule: str = "broken-input",
    window_end: str = "2026-11-26T10:15:00Z",
) -> Decision:
    """A decision like the evaluator emits: the quality detector fired, drift did not."""
    quality = DetectorResult(
        name="quality",
        kind="data_quality",
        triggered=True,
        statistic=0.31,
        threshold=0.05,
        n=5000,
        evidence={"top": [{"feature": "days_since_last_login"}, {"feature": "plan"}]},
    )
    drift = DetectorResult(
        name="drift",
        kind="feature_drift",
        triggered=False,
        statistic=0.04,
        threshold=0.2,
        n=5000,
        evidence={"top": []},
    )
    return Decision(
        model=model,
        rule=rule,
        severity="critical",
        status=status,
        window_start="2026-11-26T10:00:00Z",
        window_end=window_end,
        window_index=3,
        detectors={"quality": True, "drift": False},
        actions=(),
        evidence={"quality": quality.to_dict(), "drift": drift.to_dict()},
        reasons=("data quality fired: retraining is blocked",),
        fingerprint=fingerprint(model, rule),
        key=f"{model}/{rule}/{window_end}",
    )


def test_alertname_is_rule_in_camel_case_with_prefix() -> None:
    """Rule names map to ``Driftwarden`` + CamelCase, whatever separators they use."""
    assert alertname_for_rule("broken-input") == "DriftwardenBrokenInput"
    assert alertname_for_rule("enterprise_recall drop") == "DriftwardenEnterpriseRecallDrop"


def test_alert_from_firing_decision_has_identity_labels_and_readable_evidence() -> None:
    """Labels hold identity only; annotations summarise the evidence for people and machines."""
    d = make_decision()
    a = alert_from_decision(d, runbook_base="https://runbooks.example/dw/")
    assert a.status == "firing" and a.ends_at is None
    assert a.fingerprint == d.fingerprint
    assert dict(a.labels) == {
        "alertname": "DriftwardenBrokenInput",
        "model": "churn",
        "rule": "broken-input",
        "severity": "critical",
    }
    assert a.starts_at == "2026-11-26T10:15:00Z"
    desc = a.annotations["description"]
    # The fired detector comes first, with its numbers and top features.
    assert desc.index("quality") < desc.index("drift (feature_drift) ok")
    assert "statistic 0.31 vs threshold 0.05" in desc
    assert "days_since_last_login" in desc and "retraining is blocked" in desc
    assert "quality" in a.annotations["summary"]
    assert json.loads(a.annotations["evidence_json"])["quality"]["statistic"] == 0.31
    assert a.annotations["runbook_url"] == "https://runbooks.example/dw/broken-input"


def test_large_evidence_is_cut_to_a_bounded_annotation() -> None:
    """Huge per-feature evidence does not blow up the annotation."""
    d = make_decision()
    big = dict(d.evidence)
    big["quality"] = {**big["quality"], "evidence": {"top": [f"f{i}" for i in range(5000)]}}
    d2 = Decision(**{**d.__dict__, "evidence": big})
    text = alert_from_decision(d2).annotations["evidence_json"]
    assert len(text) <= 4000
    assert json.loads(text)["quality"]["statistic"] == 0.31


def test_resolved_decision_gives_resolved_alert_and_suppressed_is_refused() -> None:
    """A resolved decision ends the alert at its window end; a suppressed one has no alert."""
    a = alert_from_decision(make_decision("resolved"))
    assert a.status == "resolved" and a.ends_at == "2026-11-26T10:15:00Z"
    with pytest.raises(ValueError, match="suppressed"):
        alert_from_decision(make_decision("suppressed"))


def test_alert_requires_alertname() -> None:
    """Alertmanager accepts alerts without alertname, so we refuse them ourselves."""
    with pytest.raises(ValueError, match="alertname"):
        Alert(
            fingerprint="x", labels={"model": "m"}, annotations={}, starts_at="2026-01-01T00:00:00Z"
        )


def test_alertmanager_payload_ends_in_the_future_when_firing() -> None:
    """Each firing send sets endsAt = now + hold; resolved sends carry the resolution time."""
    a = alert_from_decision(make_decision())
    now = parse_time("2026-11-26T11:00:00Z")
    p = a.to_alertmanager(now, hold_s=240)
    assert parse_time(p["endsAt"]) == now + timedelta(seconds=240)
    assert p["startsAt"] == "2026-11-26T10:15:00Z" and "generatorURL" not in p
    # A send "before" the start (clock skew, replay) still never ends before it starts.
    early = a.to_alertmanager(parse_time("2026-11-26T09:00:00Z"), hold_s=60)
    assert parse_time(early["endsAt"]) > parse_time(early["startsAt"])
    r = a.resolved("2026-11-26T12:00:00Z").to_alertmanager(now)
    assert r["endsAt"] == "2026-11-26T12:00:00Z"
    assert a.resolved("2026-11-26T10:00:00Z").ends_at == a.starts_at


def test_alert_dict_round_trip() -> None:
    """to_dict/from_dict give the same alert back, through JSON."""
    a = alert_from_decision(make_decision(), generator_url="http://dw:8080/status/churn")
    assert Alert.from_dict(json.loads(json.dumps(a.to_dict()))) == a


def test_book_fire_repeat_keeps_start_and_refreshes_annotations() -> None:
    """A repeat is not new, keeps its first starts_at and takes the newest evidence."""
    book = AlertBook()
    first = alert_from_decision(make_decision(window_end="2026-11-26T10:15:00Z"))
    later = alert_from_decision(make_decision(window_end="2026-11-26T10:30:00Z"))
    assert book.fire(first, receivers=["oncall"]) is True
    assert book.fire(later, receivers=["oncall", "ml-team"]) is False
    kept = book.get(first.fingerprint)
    assert kept is not None and len(book) == 1
    assert kept.starts_at == "2026-11-26T10:15:00Z"
    assert "10:30:00Z" in kept.annotations["description"]
    assert book.receivers(first.fingerprint) == ("oncall", "ml-team")


def test_book_due_resends_follow_the_interval() -> None:
    """Unsent alerts are due at once; sent ones again only after every_s seconds."""
    book = AlertBook()
    a = alert_from_decision(make_decision(rule="a"))
    b = alert_from_decision(make_decision(rule="b"))
    book.fire(a)
    book.fire(b, sent_at=1000.0)
    assert book.due_resends(1000.0, every_s=60) == [a]
    book.mark_sent([a.fingerprint], 1000.0)
    assert book.due_resends(1059.0, every_s=60) == []
    assert {x.fingerprint for x in book.due_resends(1060.0, every_s=60)} == {
        a.fingerprint,
        b.fingerprint,
    }


def test_book_resolve_returns_resolved_alert_once() -> None:
    """Resolving removes the alert and returns it resolved; a second resolve is a no-op."""
    book = AlertBook()
    a = alert_from_decision(make_decision())
    book.fire(a)
    r = book.resolve(a.fingerprint, "2026-11-26T11:00:00Z")
    assert r is not None and r.status == "resolved" and r.ends_at == "2026-11-26T11:00:00Z"
    assert a.fingerprint not in book and book.due_resends(10**10) == []
    assert book.resolve(a.fingerprint, "2026-11-26T11:05:00Z") is None


def test_book_fallback_alert_helpers() -> None:
    """ModelFallbackActive is per model, stable in identity, and resolvable."""
    book = AlertBook()
    a = book.raise_fallback(
        "churn",
        at="2026-11-26T10:15:00Z",
        target="previous",
        rule="broken-input",
        receivers=["oncall"],
    )
    assert a.labels["alertname"] == FALLBACK_ALERTNAME and a.labels["model"] == "churn"
    assert a.fingerprint == fallback_fingerprint("churn") != fallback_fingerprint("fraud")
    assert "previous" in a.annotations["summary"]
    assert book.fallback_active("churn") and not book.fallback_active("fraud")
    again = book.raise_fallback("churn", at="2026-11-26T10:30:00Z", target="previous")
    assert again.starts_at == "2026-11-26T10:15:00Z" and len(book) == 1
    r = book.resolve_fallback("churn", "2026-11-26T12:00:00Z")
    assert r is not None and r.status == "resolved" and not book.fallback_active("churn")


def test_book_state_round_trip_through_json() -> None:
    """The state survives JSON and gives the same alerts, receivers and resend schedule."""
    book = AlertBook()
    book.fire(alert_from_decision(make_decision(rule="a")), receivers=["oncall"], sent_at=50.0)
    book.raise_fallback("churn", at="2026-11-26T10:15:00Z", target="previous")
    state = json.loads(json.dumps(book.to_state()))
    assert state["version"] == ALERT_STATE_VERSION
    back = AlertBook.from_state(state)
    assert back.active() == book.active()
    assert back.to_state() == book.to_state()
    assert back.due_resends(100.0) == book.due_resends(100.0)


def test_book_refuses_unknown_state_version() -> None:
    """A state from another version is refused with a sentence naming the versions."""
    state = AlertBook().to_state()
    state["version"] = 99
    with pytest.raises(StateVersionError, match="version 99"):
        AlertBook.from_state(state)
