"""Tests of the pure evaluator: for, cooldown, dedup, resolve, data-quality override, retrain
limit, fallback with mute and route-back, silences, determinism and the state round-trip."""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from driftwarden.detectors.base import DetectorResult, StateVersionError
from driftwarden.policies.evaluator import PolicyState, evaluate
from driftwarden.policies.expr import parse
from driftwarden.policies.model import (
    Decision,
    DetectorSpec,
    Policy,
    RetrainLimit,
    RuleSpec,
    WindowInfo,
    WindowSpec,
    fingerprint,
)
from driftwarden.policies.silences import Silence, SilenceSet

T0 = 1_795_651_200.0  # 2026-11-26T00:00:00Z
HOUR = 3600.0
RETRAIN = {"trainer": "examples.churn:train", "promote": "manual"}


def rule(name: str, when: str, *actions: tuple[str, Mapping[str, Any]], **kw: Any) -> RuleSpec:
    """A rule; ``recover_after`` defaults like the loader's (3 when it falls back, else 1)."""
    falls_back = any(t == "fallback" for t, _ in actions)
    kw.setdefault("recover_after", 3 if falls_back else 1)
    return RuleSpec(name, parse(when), when, actions=tuple(actions), **kw)


def alert(receiver: str) -> tuple[str, Mapping[str, Any]]:
    """An alert action."""
    return ("alert", {"receiver": receiver})


def policy(*rules: RuleSpec, limit: RetrainLimit | None = None) -> Policy:
    """The churn-like policy: a data-quality detector and two drift detectors."""
    return Policy(
        source="test.yaml",
        model="churn",
        reference="models:/churn@champion",
        window=WindowSpec(events=1000),
        detectors=(
            DetectorSpec("quality", "data_quality"),
            DetectorSpec("drift", "feature_drift"),
            DetectorSpec("recall", "slice_performance"),
        ),
        rules=rules,
        retrain_limit=limit or RetrainLimit(),
    )


def run(
    p: Policy,
    windows: Sequence[Mapping[str, bool]],
    muter: SilenceSet | None = None,
    state: PolicyState | None = None,
    first: int = 0,
) -> tuple[list[Decision], PolicyState]:
    """Evaluate hourly windows of triggered flags; all decisions and the final state."""
    st = state or PolicyState()
    out: list[Decision] = []
    for i, flags in enumerate(windows, start=first):
        w = WindowInfo.from_epoch(i, T0 + i * HOUR, T0 + (i + 1) * HOUR)
        res = {
            d.name: DetectorResult(d.name, d.type, flags.get(d.name, False), statistic=0.5)
            for d in p.detectors
        }
        ds, st = evaluate(p, "churn", w, res, st, w.end_ts, muter)
        out.extend(ds)
    return out, st


def brief(ds: Sequence[Decision]) -> list[tuple[int, str, str, list[str]]]:
    """(window, rule, status, action types) of each decision."""
    return [(d.window_index, d.rule, d.status, [a.type for a in d.actions]) for d in ds]


DRIFTED = rule(
    "drifted", "drift and not quality", alert("team"), ("retrain", RETRAIN), for_windows=2
)
BROKEN = rule(
    "broken-input",
    "quality",
    alert("oncall"),
    ("fallback", {"to": "previous"}),
    severity="critical",
)


def test_for_needs_consecutive_windows_then_fires_once_and_resolves() -> None:
    """Two consecutive windows fire once; staying true emits nothing; clearing resolves."""
    ds, st = run(
        policy(DRIFTED),
        [{"drift": True}, {}, {"drift": True}, {"drift": True}, {"drift": True}, {}],
    )
    assert brief(ds) == [
        (3, "drifted", "firing", ["alert", "retrain"]),
        (5, "drifted", "resolved", ["resolve"]),
    ]
    assert ds[1].actions[0].params == {"receiver": "team"}
    assert ds[0].fingerprint == ds[1].fingerprint == fingerprint("churn", "drifted")
    assert not st.rules["drifted"].firing


def test_decision_fields_and_keys() -> None:
    """A firing decision carries every detector's flag, evidence, window bounds and unique keys."""
    ds, _ = run(policy(DRIFTED), [{"drift": True}, {"drift": True}])
    d = ds[0]
    assert (d.window_start, d.window_end) == ("2026-11-26T01:00:00Z", "2026-11-26T02:00:00Z")
    assert d.detectors == {"drift": True, "quality": False, "recall": False}
    assert sorted(d.evidence) == ["drift", "quality"]  # triggered, and named in `when`
    assert d.evidence["drift"]["statistic"] == 0.5
    assert d.key == "churn/drifted/2026-11-26T02:00:00Z"
    assert [a.key for a in d.actions] == [
        "churn/drifted/2026-11-26T02:00:00Z/alert/team",
        "churn/drifted/2026-11-26T02:00:00Z/retrain/examples.churn:train",
    ]
    assert Decision.from_dict(json.loads(json.dumps(d.to_dict()))) == d


def test_cooldown_holds_back_a_refire_once_then_fires_after_it() -> None:
    """Within the cooldown a re-fire is suppressed once (with the reason), then fires after it."""
    r = rule("drifted", "drift", alert("team"), cooldown_s=4 * HOUR)
    ds, _ = run(
        policy(r),
        [{"drift": True}, {}, {"drift": True}, {"drift": True}, {"drift": True}, {"drift": True}],
    )
    assert brief(ds) == [
        (0, "drifted", "firing", ["alert"]),
        (1, "drifted", "resolved", ["resolve"]),
        (2, "drifted", "suppressed", []),
        (4, "drifted", "firing", ["alert"]),  # fired at 01:00, cooldown until 05:00 = end of 4
    ]
    assert "cooldown" in ds[2].reasons[0] and "2026-11-26T05:00:00Z" in ds[2].reasons[0]


def test_data_quality_withholds_retrain_and_says_so() -> None:
    """A rule without `not quality` still never retrains on a window whose quality check fired."""
    r = rule("errors", "drift", alert("team"), ("retrain", RETRAIN))
    ds, st = run(policy(r), [{"drift": True, "quality": True}])
    assert brief(ds) == [(0, "errors", "firing", ["alert"])]
    assert ds[0].reasons == (
        "retrain withheld: data-quality detector 'quality' fired in this window; driftwarden "
        "never retrains on broken input. It follows in a later window where the rule still "
        "fires, once nothing withholds it.",
    )
    assert st.retrains == ()  # a withheld retrain does not use up the rate limit


def test_retrain_rate_limit_per_model() -> None:
    """Two rules share the per-model limit; the budget returns after the period."""
    a = rule("a", "drift", ("retrain", RETRAIN))
    b = rule("b", "recall", ("retrain", RETRAIN))
    p = policy(a, b, limit=RetrainLimit(max=1, per_s=10 * HOUR))
    ds, st = run(p, [{"drift": True, "recall": True}, {}, *[{}] * 9, {"recall": True}])
    assert brief(ds) == [
        (0, "a", "firing", ["retrain"]),
        (0, "b", "firing", []),
        (1, "a", "resolved", []),
        (1, "b", "resolved", []),
        (11, "b", "firing", ["retrain"]),  # 11 h later: the 10 h budget is back
    ]
    assert "limit of 1 retrain(s) per 10h" in ds[1].reasons[0]
    assert st.retrains == (T0 + 12 * HOUR,)


def test_fallback_mutes_drift_alerts_and_routes_back_after_clean_windows() -> None:
    """Fallback mutes drift rules (not the quality rule), and routes back after 3 clean windows."""
    p = policy(DRIFTED, BROKEN)  # the fallback rule is listed last but evaluated first
    ds, st = run(
        p,
        [
            {"quality": True, "drift": True},
            {"drift": True},
            {"drift": True},
            {"drift": True},
            {"drift": True},
        ],
    )
    assert brief(ds) == [
        (0, "broken-input", "firing", ["alert", "fallback"]),
        (2, "drifted", "suppressed", ["retrain"]),
        (3, "drifted", "firing", ["alert"]),  # the held-back alert goes out once unmuted
        (3, "broken-input", "resolved", ["resolve", "route_back"]),  # (policy order)
    ]
    assert ds[0].actions[1].params == {"to": "previous"}
    assert "in fallback to 'previous' since 2026-11-26T01:00:00Z" in ds[1].reasons[0]
    assert st.fallback is None


def test_fallback_state_is_held_while_the_rule_fires() -> None:
    """While in fallback the state says so; a second fallback rule does not re-route."""
    other = rule("scores-broken", "recall and quality", ("fallback", {"to": "baseline"}))
    ds, st = run(policy(BROKEN, other), [{"quality": True}, {"quality": True, "recall": True}])
    assert st.in_fallback and st.fallback == {
        "rule": "broken-input",
        "to": "previous",
        "since": "2026-11-26T01:00:00Z",
        "window_index": 0,
    }
    assert brief(ds)[-1] == (1, "scores-broken", "firing", [])
    assert "already in fallback" in ds[-1].reasons[0]


def test_recover_after_counts_consecutive_clean_windows() -> None:
    """A relapse during recovery restarts the count of clean windows."""
    ds, _ = run(policy(BROKEN), [{"quality": True}, {}, {}, {"quality": True}, {}, {}, {}])
    assert brief(ds) == [
        (0, "broken-input", "firing", ["alert", "fallback"]),
        (6, "broken-input", "resolved", ["resolve", "route_back"]),
    ]


def test_silence_suppresses_notifications_only() -> None:
    """A silenced rule still retrains; its alert waits for the silence to end; no resolve if
    it never alerted."""
    s = Silence("s1", "churn", "drift*", T0, T0 + 3 * HOUR, "alice", "pipeline fix")
    ds, _ = run(policy(DRIFTED), [{"drift": True}] * 4 + [{}], muter=SilenceSet((s,)))
    assert brief(ds) == [
        (1, "drifted", "suppressed", ["retrain"]),
        (2, "drifted", "firing", ["alert"]),  # window 2 closes at 03:00, when the silence ends
        (4, "drifted", "resolved", ["resolve"]),
    ]
    assert "silenced by s1 (created by alice" in ds[0].reasons[0]
    assert "pipeline fix" in ds[0].reasons[0]
    ds, _ = run(policy(DRIFTED), [{"drift": True}] * 2 + [{}], muter=SilenceSet((s,)))
    assert brief(ds)[-1] == (2, "drifted", "resolved", [])


def test_silence_of_another_model_or_rule_does_not_apply() -> None:
    """Matchers are globs on model and rule."""
    s = SilenceSet(
        (
            Silence("s1", "fraud*", "*", T0, T0 + 9 * HOUR, "bob"),
            Silence("s2", "*", "broken-*", T0, T0 + 9 * HOUR, "bob"),
        )
    )
    ds, _ = run(policy(DRIFTED), [{"drift": True}] * 2, muter=s)
    assert brief(ds) == [(1, "drifted", "firing", ["alert", "retrain"])]


def test_replayed_window_is_ignored() -> None:
    """Evaluating a window index that was already evaluated changes nothing."""
    _, st = run(policy(DRIFTED), [{"drift": True}, {"drift": True}])
    again, st2 = run(policy(DRIFTED), [{"drift": True}], state=st, first=1)
    assert again == [] and st2.to_dict() == st.to_dict()


def test_input_state_is_not_modified() -> None:
    """The evaluator returns a new state and leaves the caller's untouched."""
    st = PolicyState()
    before = st.to_dict()
    run(policy(DRIFTED), [{"drift": True}] * 3, state=st)
    assert st.to_dict() == before


def test_deterministic_and_resumable_from_serialised_state() -> None:
    """Same inputs → identical decisions; stopping, serialising and resuming changes nothing."""
    rng = random.Random(7)
    windows = [{n: rng.random() < 0.4 for n in ("quality", "drift", "recall")} for _ in range(60)]
    r2 = rule("recall", "recall", alert("team"), cooldown_s=5 * HOUR, for_windows=2)
    p = policy(DRIFTED, BROKEN, r2, limit=RetrainLimit(2, 8 * HOUR))
    a, st_a = run(p, windows)
    b, st_b = run(p, windows)
    assert [d.to_dict() for d in a] == [d.to_dict() for d in b]
    assert json.dumps(st_a.to_dict()) == json.dumps(st_b.to_dict())
    assert len({d.status for d in a}) == 3  # the random walk exercised every status

    first, mid = run(p, windows[:25])
    restored = PolicyState.from_dict(json.loads(json.dumps(mid.to_dict())))
    rest, st_c = run(p, windows[25:], state=restored, first=25)
    assert [d.to_dict() for d in first + rest] == [d.to_dict() for d in a]
    assert st_c.to_dict() == st_a.to_dict()


def test_unknown_state_version_is_refused() -> None:
    """A state of another version is refused with a plain sentence."""
    d = PolicyState().to_dict()
    d["version"] = 99
    with pytest.raises(StateVersionError, match="policy state has version 99; this version"):
        PolicyState.from_dict(d)
