"""Tests for the slice_performance detector (per-slice metric vs the profile's baseline)."""

from __future__ import annotations

import doctest
import json
import math

import jsonschema
import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from sklearn import metrics as skm

from driftwarden.detectors import fdr
from driftwarden.detectors import slice_performance as module
from driftwarden.detectors.base import StateVersionError, registry
from driftwarden.detectors.batch import Batch
from driftwarden.detectors.profile import ReferenceProfile, build_profile
from driftwarden.detectors.slice_performance import SlicePerformance, hanley_mcneil_se

TIERS = ("enterprise", "mid", "smb")
TIER_SHARE = (0.1, 0.3, 0.6)


def churn_table(seed: int, n: int, recall: dict[str, float], fpr: dict[str, float]) -> pd.DataFrame:
    """A seeded table of labeled churn predictions with per-tier recall and false-positive rate."""
    rng = np.random.default_rng(seed)
    tier = rng.choice(TIERS, n, p=TIER_SHARE)
    y = (rng.random(n) < 0.3).astype(int)
    r = np.array([recall[t] for t in tier])
    f = np.array([fpr[t] for t in tier])
    pred = np.where(y == 1, rng.random(n) < r, rng.random(n) < f).astype(int)
    score = np.clip(0.55 * pred + 0.25 * y + 0.4 * rng.random(n) - 0.1, 0, 1)
    return pd.DataFrame({"customer_tier": tier, "y": y, "pred": pred, "score": score})


def to_batch(df: pd.DataFrame) -> Batch:
    """The labeled batch the daemon would build from the table's rows."""
    return Batch.from_records(
        [
            {
                "segment": {"customer_tier": t},
                "prediction": {"label": int(p), "score": float(s)},
                "label": int(y),
            }
            for t, p, s, y in zip(df.customer_tier, df.pred, df.score, df.y, strict=True)
        ]
    )


def reference_profile() -> ReferenceProfile:
    """The real profile builder run on a healthy reference table (recall 0.8 in every tier)."""
    ref = churn_table(0, 20000, dict.fromkeys(TIERS, 0.8), dict.fromkeys(TIERS, 0.1))
    return build_profile(
        ref,
        "churn",
        target="y",
        prediction="pred",
        score="score",
        segments=["customer_tier"],
        feature_columns=[],
        created_at="2026-01-01T00:00:00Z",
    )


def simple_profile(metrics: dict, task: str = "classification") -> ReferenceProfile:
    """A real ReferenceProfile holding only the given baseline metrics."""
    return ReferenceProfile(
        model="m",
        model_version="1",
        n_rows=1000,
        created_at="2026-01-01T00:00:00Z",
        features={},
        task=task,
        positive_label="1" if task == "classification" else None,
        metrics=metrics,
    )


def feed(det: SlicePerformance, batch: Batch, parts: int = 3) -> None:
    """Feed ``batch`` in ``parts`` micro-batches (accumulators must merge exactly)."""
    edges = np.linspace(0, batch.n, parts + 1).astype(int)
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        mask = np.zeros(batch.n, dtype=bool)
        mask[a:b] = True
        det.update(batch.select(mask))


def by_slice(result) -> dict[str, dict]:
    """Evidence rows keyed by the slice value."""
    return {next(iter(r["slice"].values()), "*"): r for r in result.evidence["slices"]}


@pytest.fixture(scope="module")
def profile() -> ReferenceProfile:
    """The healthy reference profile (built once per module)."""
    return reference_profile()


def test_registered_and_schema():
    """Registered under its kind; the schema accepts the test kwargs and refuses bad ones."""
    assert registry()["slice_performance"] is SlicePerformance
    schema = SlicePerformance.params_schema
    jsonschema.validate(SlicePerformance._unit_test_params()["kwargs"], schema)
    jsonschema.validate({"metric": "recall", "slice": {"customer_tier": "enterprise"}}, schema)
    for bad in (
        {"metric": "recall", "slice": {"a": "x"}, "by": "a"},
        {"metric": "recall", "slice": {"a": "x", "b": "y"}},
        {"metric": "recall", "max_dorp": 0.1},
        {"metric": "gini"},
        {},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_docstring_examples_run():
    """The numpydoc example (which slices trigger) is correct."""
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def test_seed_incident_enterprise_recall_drop_while_aggregate_f1_improves(profile):
    """Aggregate F1 improves, enterprise recall collapses: only the enterprise slice triggers."""
    healthy = dict(mid=0.9, smb=0.9)
    window = churn_table(
        7, 5000, {"enterprise": 0.45, **healthy}, {"enterprise": 0.1, "mid": 0.05, "smb": 0.05}
    )
    batch = to_batch(window)

    overall_f1 = SlicePerformance("f1", profile, metric="f1", max_drop=0.0)
    feed(overall_f1, batch)
    r = overall_f1.result()
    assert not r.triggered
    assert r.evidence["slices"][0]["drop"] < 0  # F1 went up

    one = SlicePerformance(
        "enterprise_recall",
        profile,
        metric="recall",
        slice={"customer_tier": "enterprise"},
        max_drop=0.05,
        min_samples=200,
    )
    feed(one, batch)
    r = one.result()
    assert r.triggered
    row = r.evidence["top"][0]
    assert row["slice"] == {"customer_tier": "enterprise"}
    assert row["baseline"] == pytest.approx(
        profile.metrics["slices"]["customer_tier"]["enterprise"]["recall"]
    )
    assert row["drop"] > 0.25 and row["p_value"] < 1e-6

    every = SlicePerformance("tiers", profile, metric="recall", by="customer_tier")
    feed(every, batch)
    rows = by_slice(every.result())
    assert rows["enterprise"]["triggered"]
    assert not rows["mid"]["triggered"] and not rows["smb"]["triggered"]
    assert every.result().evidence["top"][0]["slice"] == {"customer_tier": "enterprise"}


@pytest.mark.parametrize("metric", ["accuracy", "precision", "recall", "f1", "roc_auc"])
def test_metric_values_agree_with_sklearn(profile, metric):
    """Merged accumulators give the same metric as sklearn.metrics on the slice's rows."""
    window = churn_table(3, 3000, dict.fromkeys(TIERS, 0.7), dict.fromkeys(TIERS, 0.15))
    det = SlicePerformance("m", profile, metric=metric, slice={"customer_tier": "mid"})
    feed(det, to_batch(window), parts=4)
    part = window[window.customer_tier == "mid"]
    y, p = part.y.to_numpy(), part.pred.to_numpy()
    expected = {
        "accuracy": lambda: skm.accuracy_score(y, p),
        "precision": lambda: skm.precision_score(y, p),
        "recall": lambda: skm.recall_score(y, p),
        "f1": lambda: skm.f1_score(y, p),
        "roc_auc": lambda: skm.roc_auc_score(y, part.score.to_numpy()),
    }[metric]()
    row = by_slice(det.result())["mid"]
    assert row["value"] == pytest.approx(expected, rel=1e-12)
    assert row["n"] == len(part)


def test_p_values_are_the_documented_tests(profile):
    """Recall uses an exact binomial test; F1 the binomial test of q = TP/(TP+FP+FN)."""
    window = churn_table(5, 2000, dict.fromkeys(TIERS, 0.75), dict.fromkeys(TIERS, 0.1))
    part = window[window.customer_tier == "smb"]
    tp = int(((part.y == 1) & (part.pred == 1)).sum())
    fp = int(((part.y == 0) & (part.pred == 1)).sum())
    fn = int(((part.y == 1) & (part.pred == 0)).sum())
    base = profile.metrics["slices"]["customer_tier"]["smb"]
    for metric, k, m, p0 in (
        ("recall", tp, tp + fn, base["recall"]),
        ("f1", tp, tp + fp + fn, base["f1"] / (2 - base["f1"])),
    ):
        det = SlicePerformance("m", profile, metric=metric, slice={"customer_tier": "smb"})
        det.update(to_batch(window))
        row = by_slice(det.result())["smb"]
        expected = sps.binomtest(k, m, p0, alternative="less").pvalue
        assert row["p_value"] == pytest.approx(expected, rel=1e-9)
        assert row["support"] == m


def test_by_adjusts_p_values_across_slices(profile):
    """With ``by`` the per-slice p-values are BH-adjusted together (fdr.adjust)."""
    window = churn_table(
        9, 4000, {"enterprise": 0.6, "mid": 0.75, "smb": 0.8}, dict.fromkeys(TIERS, 0.1)
    )
    det = SlicePerformance("tiers", profile, metric="recall", by="customer_tier", min_samples=50)
    det.update(to_batch(window))
    rows = [by_slice(det.result())[t] for t in TIERS]
    raw = [r["p_value"] for r in rows]
    np.testing.assert_allclose([r["p_value_adjusted"] for r in rows], fdr.adjust(raw, "bh"))


def test_slice_below_min_samples_never_triggers(profile):
    """A collapsed slice with fewer than min_samples rows says so and does not trigger."""
    window = churn_table(
        11, 1500, {"enterprise": 0.05, "mid": 0.8, "smb": 0.8}, dict.fromkeys(TIERS, 0.1)
    )
    det = SlicePerformance(
        "ent", profile, metric="recall", slice={"customer_tier": "enterprise"}, min_samples=200
    )
    det.update(to_batch(window))
    row = by_slice(det.result())["enterprise"]
    assert row["n"] < 200
    assert row["status"] == "insufficient samples" and not row["triggered"]
    assert row["drop"] > 0.5  # the drop is real, only the sample is too small
    assert not det.result().triggered
    det.update(
        to_batch(
            churn_table(
                12, 1500, {"enterprise": 0.05, "mid": 0.8, "smb": 0.8}, dict.fromkeys(TIERS, 0.1)
            )
        )
    )
    assert by_slice(det.result())["enterprise"]["n"] >= 200
    assert det.result().triggered


def test_a_large_drop_on_little_evidence_does_not_trigger(profile):
    """drop > max_drop is not enough: the one-sided test must also reject at alpha."""
    base = profile.metrics["slices"]["customer_tier"]["enterprise"]["recall"]
    # 30 enterprise positives, 21 caught: recall 0.7, a drop of about 0.1 but p >> 0.05.
    rows = [
        {
            "segment": {"customer_tier": "enterprise"},
            "prediction": {"label": int(i < 21)},
            "label": 1,
        }
        for i in range(30)
    ]
    det = SlicePerformance(
        "ent", profile, metric="recall", slice={"customer_tier": "enterprise"}, min_samples=20
    )
    det.update(Batch.from_records(rows))
    row = by_slice(det.result())["enterprise"]
    assert row["drop"] == pytest.approx(base - 0.7)
    assert row["drop"] > 0.05 and row["p_value"] > 0.05
    assert not det.result().triggered


@pytest.mark.parametrize("metric", ["accuracy", "roc_auc", "mae"])
def test_false_alarm_rate_on_healthy_windows_is_at_most_alpha(metric):
    """On 300 seeded windows drawn at the baseline, the test fires in at most ~alpha of them."""
    d = 1.0  # binormal scores: AUC = Phi(d / sqrt(2))
    base = {
        "accuracy": {"accuracy": 0.85, "n": 5000},
        "roc_auc": {"roc_auc": float(sps.norm.cdf(d / math.sqrt(2))), "n": 5000},
        "mae": {"mae": math.sqrt(2 / math.pi), "rmse": 1.0, "n": 5000},  # |N(0,1)|
    }[metric]
    task = "regression" if metric == "mae" else "classification"
    rng = np.random.default_rng(2026)
    fired = 0
    for _ in range(300):
        n = 400
        if metric == "mae":
            recs = [{"prediction": {"value": float(e)}, "label": 0.0} for e in rng.normal(0, 1, n)]
        elif metric == "accuracy":
            ok = rng.random(n) < 0.85
            recs = [{"prediction": {"label": 1}, "label": int(o)} for o in ok]
        else:
            y = rng.random(n) < 0.4
            s = rng.normal(0, 1, n) + d * y
            recs = [
                {"prediction": {"label": 1, "score": float(v)}, "label": int(t)}
                for v, t in zip(s, y, strict=True)
            ]
        det = SlicePerformance(
            "m",
            simple_profile({"overall": base}, task),
            metric=metric,
            max_drop=0.0,
            min_samples=100,
        )
        det.update(Batch.from_records(recs))
        fired += det.result().triggered
    assert fired / 300 <= 0.05 + 0.03


@pytest.mark.parametrize("metric", ["mae", "rmse"])
def test_regression_error_rise_triggers_and_agrees_with_sklearn(metric):
    """An error rise beyond max_drop triggers; values agree with sklearn's mae/rmse."""
    rng = np.random.default_rng(4)
    y = rng.normal(50, 5, 2000)
    tier = rng.choice(["a", "b"], 2000)
    pred = y + rng.normal(0, np.where(tier == "a", 1.0, 3.0))
    profile = simple_profile(
        {
            "overall": {"mae": 1.0, "rmse": 1.25, "n": 1000},
            "slices": {
                "tier": {
                    "a": {"mae": 0.8, "rmse": 1.0, "n": 500},
                    "b": {"mae": 0.8, "rmse": 1.0, "n": 500},
                }
            },
        },
        task="regression",
    )
    batch = Batch.from_records(
        [
            {"segment": {"tier": t}, "prediction": {"value": float(p)}, "label": float(v)}
            for t, p, v in zip(tier, pred, y, strict=True)
        ]
    )
    det = SlicePerformance("err", profile, metric=metric, by="tier", max_drop=0.5)
    feed(det, batch)
    rows = by_slice(det.result())
    for t in ("a", "b"):
        m = tier == t
        expected = (
            skm.mean_absolute_error(y[m], pred[m])
            if metric == "mae"
            else math.sqrt(skm.mean_squared_error(y[m], pred[m]))
        )
        assert rows[t]["value"] == pytest.approx(expected, rel=1e-9)
    assert rows["b"]["triggered"] and not rows["a"]["triggered"]


def test_roc_auc_keeps_only_the_latest_max_scores(profile):
    """The AUC window is bounded: it equals sklearn's AUC on the latest max_scores rows."""
    window = churn_table(13, 2000, dict.fromkeys(TIERS, 0.7), dict.fromkeys(TIERS, 0.2))
    det = SlicePerformance("auc", profile, metric="roc_auc", max_scores=100)
    feed(det, to_batch(window), parts=5)
    tail = window.iloc[-100:]
    row = det.result().evidence["slices"][0]
    assert row["value"] == pytest.approx(skm.roc_auc_score(tail.y, tail.score))
    assert row["n"] == 2000 and row["support"] == 100


def test_hanley_mcneil_se_matches_the_formula():
    """The AUC standard error is Hanley & McNeil's (checked against a hand computation)."""
    a, n1, n2 = 0.8, 50, 70
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    expected = math.sqrt((a * (1 - a) + 49 * (q1 - a * a) + 69 * (q2 - a * a)) / (n1 * n2))
    assert hanley_mcneil_se(a, n1, n2) == pytest.approx(expected)


@pytest.mark.parametrize("metric", ["recall", "roc_auc"])
def test_state_round_trip_gives_identical_later_results(profile, metric):
    """state_dict -> JSON -> load_state, then the same updates, gives identical results."""
    window = to_batch(churn_table(21, 3000, dict.fromkeys(TIERS, 0.7), dict.fromkeys(TIERS, 0.1)))
    later = to_batch(churn_table(22, 1000, dict.fromkeys(TIERS, 0.5), dict.fromkeys(TIERS, 0.1)))
    a = SlicePerformance("s", profile, metric=metric, by="customer_tier")
    a.update(window)
    b = SlicePerformance("s", profile, metric=metric, by="customer_tier")
    b.load_state(json.loads(json.dumps(a.state_dict())))
    assert b.result() == a.result()
    a.update(later)
    b.update(later)
    assert b.result().to_dict() == a.result().to_dict()


def test_reset_starts_an_empty_window(profile):
    """After reset nothing of the previous window is left."""
    det = SlicePerformance("s", profile, metric="recall", by="customer_tier")
    det.update(to_batch(churn_table(1, 3000, dict.fromkeys(TIERS, 0.3), dict.fromkeys(TIERS, 0.1))))
    assert det.result().triggered
    det.reset()
    r = det.result()
    assert r.n == 0 and not r.triggered and r.evidence["slices"] == []


def test_unknown_state_version_and_other_metric_are_refused(profile):
    """A state of another version, or saved for another metric, is refused."""
    state = SlicePerformance("s", profile, metric="recall").state_dict()
    with pytest.raises(StateVersionError):
        SlicePerformance("s", profile, metric="recall").load_state({**state, "version": 2})
    with pytest.raises(ValueError, match="metric"):
        SlicePerformance("s", profile, metric="f1").load_state(state)


def test_bad_configuration_is_refused(profile):
    """Metric/task mismatches, multi-class without a positive class, slice+by are errors."""
    with pytest.raises(ValueError, match="does not apply"):
        SlicePerformance("s", profile, metric="mae")
    multiclass = ReferenceProfile(
        model="m",
        model_version="1",
        n_rows=1,
        created_at="",
        features={},
        task="classification",
        positive_label=None,
        metrics={},
    )
    with pytest.raises(ValueError, match="positive"):
        SlicePerformance("s", multiclass, metric="recall")
    SlicePerformance("s", multiclass, metric="accuracy")  # accuracy needs no positive class
    with pytest.raises(ValueError, match="either"):
        SlicePerformance("s", profile, metric="recall", slice={"a": "x"}, by="a")


def test_no_baseline_and_missing_column_never_trigger():
    """Without a profile baseline a slice is reported as such; a missing column is ignored."""
    det = SlicePerformance("s", None, metric="accuracy", by="customer_tier", min_samples=10)
    det.update(Batch.from_records([{"prediction": {"label": 1}, "label": 0}] * 50))
    assert det.result().evidence["slices"] == []
    det.update(
        Batch.from_records(
            [{"segment": {"customer_tier": "smb"}, "prediction": {"label": 1}, "label": 0}] * 50
        )
    )
    row = by_slice(det.result())["smb"]
    assert row["status"] == "no baseline" and row["value"] == 0.0
    assert not det.result().triggered


@pytest.mark.parametrize("metric", ["mae", "rmse"])
def test_errors_near_the_float_limit_keep_the_state_json_and_trigger(metric):
    """Valid values near the float limit (a broken unit, a sentinel) would overflow the error
    sums to inf, which JSON cannot hold: the errors are capped, the state round-trips through
    the checkpoint encoding, and the slice triggers."""
    import orjson

    profile = simple_profile(
        {"overall": {"mae": 1.0, "rmse": 1.25, "n": 1000}, "slices": {}}, task="regression"
    )
    big = 1.7976931348623157e308
    batch = Batch.from_records(
        [
            {"segment": {}, "prediction": {"value": (big, -big, 1e100)[i % 3]}, "label": -big}
            for i in range(300)
        ]
    )
    det = SlicePerformance("err", profile, metric=metric, min_samples=50)
    feed(det, batch)
    state = orjson.loads(orjson.dumps(det.state_dict(), option=orjson.OPT_SERIALIZE_NUMPY))
    again = SlicePerformance("err", profile, metric=metric, min_samples=50)
    again.load_state(state)
    assert again.state_dict() == det.state_dict()
    assert again.result().triggered


def test_positive_label_other_than_the_baselines_class_is_refused():
    """A class's precision/recall/f1/roc_auc is compared only with a baseline of that class:
    positive_label on a multi-class profile (macro baselines) or naming the other class of a
    binary profile is refused at construction, and the refusal does not advise it."""
    rng = np.random.default_rng(12)
    y = rng.choice(["a", "b", "c"], 600)
    multi = build_profile(
        pd.DataFrame({"y": y, "p": y}), "m", target="y", prediction="p", created_at="-"
    )
    with pytest.raises(ValueError, match="macro averages") as err:
        SlicePerformance("s", multi, metric="recall", positive_label="a")
    assert "set positive_label" not in str(err.value)
    with pytest.raises(ValueError, match="macro averages"):
        SlicePerformance("s", multi, metric="recall")
    SlicePerformance("s", multi, metric="accuracy", positive_label="a")
    yb = rng.integers(0, 2, 600)
    binary = build_profile(
        pd.DataFrame({"y": yb, "p": yb}), "m", target="y", prediction="p", created_at="-"
    )
    for metric in ("precision", "recall", "f1", "roc_auc"):
        with pytest.raises(ValueError, match="differs from the profile's positive class '1'"):
            SlicePerformance("s", binary, metric=metric, positive_label=0)
    assert SlicePerformance("s", binary, metric="recall", positive_label=1).positive == "1"
    assert SlicePerformance("s", binary, metric="recall").positive == "1"
