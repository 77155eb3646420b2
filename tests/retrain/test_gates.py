"""Model gates and trainer loading (pure: no MLflow)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from driftwarden.retrain.gates import check_gates, evaluate, validate_gates
from driftwarden.retrain.pipeline import snapshot_hash
from driftwarden.retrain.trainers import TrainerError, load_trainer

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "config")


def _metrics(overall: dict[str, Any], slices: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"overall": overall, "slices": slices or {}}


def test_min_gate_and_missing_metric_fail_closed() -> None:
    """A threshold below the bar fails; a metric that could not be computed fails too."""
    gates = {"min": {"roc_auc": 0.8, "recall": 0.5}, "min_holdout": 10}
    res = check_gates(gates, _metrics({"roc_auc": 0.79, "recall": None}), None, holdout_n=50)
    verdicts = {(r.gate, r.metric): r.passed for r in res}
    assert verdicts == {
        ("min_holdout", None): True,
        ("min", "roc_auc"): False,
        ("min", "recall"): False,
    }
    assert "missing evidence" in next(r.reason for r in res if r.metric == "recall")


def test_regression_against_champion_and_no_champion() -> None:
    """max_regression compares with the champion; without one it passes with a note."""
    gates = {"max_regression": {"roc_auc": 0.01}, "min_holdout": 1}
    cand = _metrics({"roc_auc": 0.80})
    worse = check_gates(gates, cand, _metrics({"roc_auc": 0.82}), holdout_n=5)
    assert [r.passed for r in worse if r.gate == "max_regression"] == [False]
    within = check_gates(gates, cand, _metrics({"roc_auc": 0.805}), holdout_n=5)
    assert all(r.passed for r in within)
    alone = check_gates(gates, cand, None, holdout_n=5)
    assert all(r.passed for r in alone)
    assert "no champion" in alone[-1].reason


def test_slice_gate_names_the_slice_and_respects_min_samples() -> None:
    """A slice whose recall drops too far fails by name; a tiny slice is not judged."""
    gates = {
        "slices": {"tier": {"max_drop": {"recall": 0.05}, "min_samples": 30}},
        "min_holdout": 1,
    }
    cand = _metrics(
        {},
        {
            "tier": {
                "ent": {"n": 40, "recall": 0.5},
                "smb": {"n": 500, "recall": 0.7},
                "x": {"n": 3, "recall": 0.0},
            }
        },
    )
    champ = _metrics(
        {},
        {
            "tier": {
                "ent": {"n": 40, "recall": 0.7},
                "smb": {"n": 500, "recall": 0.7},
                "x": {"n": 3, "recall": 1.0},
            }
        },
    )
    res = check_gates(gates, cand, champ, holdout_n=543)
    failed = [r for r in res if not r.passed]
    assert [dict(r.slice or {}) for r in failed] == [{"tier": "ent"}]
    assert "tier=ent" in failed[0].reason
    assert not any(r.slice == {"tier": "x"} for r in res)


def test_min_holdout_and_missing_slice_column_fail() -> None:
    """Too small a holdout fails, and so does a slice column absent from the holdout."""
    res = check_gates(
        {"slices": {"tier": {"max_drop": {"recall": 0.1}}}}, _metrics({}), None, holdout_n=99
    )
    assert [r.passed for r in res] == [False, False]


class _ByScore:
    """A classifier that predicts 1 from the column ``s`` above ``t`` (its proba is ``s``)."""

    classes_ = np.array([0, 1])

    def __init__(self, t: float) -> None:
        self.t = t

    def predict_proba(self, x: pd.DataFrame) -> np.ndarray:
        p = x["s"].to_numpy(float)
        return np.column_stack([1 - p, p])

    def predict(self, x: pd.DataFrame) -> np.ndarray:
        return (x["s"].to_numpy() >= self.t).astype(int)


@pytest.mark.parametrize("tier", ["absent", "null", "too-few"])
def test_a_slice_gate_without_one_value_to_judge_fails_closed(tier: str) -> None:
    """The gate column missing from the holdout (the events stopped carrying it), null in
    every holdout row, or every value under min_samples: the candidate's per-slice
    performance was never checked, so the gate fails (it raised KeyError, or passed)."""
    holdout = pd.DataFrame({"s": np.linspace(0, 1, 200), "y": [0, 1] * 100})
    if tier == "null":
        holdout["tier"] = None
    elif tier == "too-few":
        holdout["tier"] = [f"t{i % 10}" for i in range(200)]  # 20 rows each
    gates = {"slices": {"tier": {"max_drop": {"recall": 0.0}, "min_samples": 30}}}
    kw: dict[str, Any] = {"target": "y", "features": ["s"], "slices": ["tier", "region"]}
    cand = evaluate(_ByScore(0.9), holdout, **kw)
    champ = evaluate(_ByScore(0.1), holdout, **kw)
    assert "region" not in cand["slices"]  # only reported, and not there: left out
    [res] = [r for r in check_gates(gates, cand, champ, holdout_n=200) if r.gate == "slice"]
    assert not res.passed and "missing evidence" in res.reason and res.slice == {"tier": "*"}
    if tier != "absent":  # without a max_drop there is nothing to judge the values on
        gates = {"slices": {"tier": {"min_samples": 30}}}
        assert [r.gate for r in check_gates(gates, cand, champ, holdout_n=200)] == ["min_holdout"]


def test_validate_gates_refuses_unknown_keys() -> None:
    """Unknown gate names and metrics are refused with a sentence naming them."""
    with pytest.raises(ValueError, match="maximum"):
        validate_gates({"maximum": {}})
    with pytest.raises(ValueError, match="auc_roc"):
        validate_gates({"min": {"auc_roc": 0.8}})


def test_evaluate_per_slice_with_sklearn_metrics() -> None:
    """evaluate() scores a model overall and per slice value."""

    class Fixed:
        classes_ = np.array([0, 1])

        def predict_proba(self, x: pd.DataFrame) -> np.ndarray:
            p = x["s"].to_numpy(dtype=float)
            return np.column_stack([1 - p, p])

        def predict(self, x: pd.DataFrame) -> np.ndarray:
            return (x["s"].to_numpy() >= 0.5).astype(int)

    df = pd.DataFrame(
        {"s": [0.9, 0.2, 0.8, 0.4, 0.6, 0.1], "y": [1, 0, 1, 1, 0, 0], "g": list("aaabbb")}
    )
    out = evaluate(Fixed(), df, target="y", features=["s"], slices=["g"])
    assert out["overall"]["n"] == 6
    assert out["overall"]["recall"] == pytest.approx(2 / 3)
    assert out["slices"]["g"]["a"]["roc_auc"] == 1.0
    assert out["slices"]["g"]["b"]["recall"] == 0.0


def test_snapshot_hash_is_canonical() -> None:
    """Column order does not change the hash; a changed value does."""
    a = pd.DataFrame({"x": [1.0, np.nan], "p": ["a", "b"]})
    assert snapshot_hash(a) == snapshot_hash(a[["p", "x"]])
    assert snapshot_hash(a) != snapshot_hash(a.assign(x=[1.0, 0.0]))


def test_load_trainer_from_config_dir_and_errors() -> None:
    """'examples.churn:train' is found on the config dir; bad specs fail with a sentence."""
    train = load_trainer("examples.churn:train", [CONFIG_DIR])
    assert callable(train) and train.__name__ == "train"
    with pytest.raises(TrainerError, match="no function"):
        load_trainer("examples.churn:nope", [CONFIG_DIR])
    with pytest.raises(TrainerError, match="cannot be imported"):
        load_trainer("no_such_module_xyz:train", [CONFIG_DIR])
    with pytest.raises(TrainerError, match="module:function"):
        load_trainer("just_a_name", [])
    with pytest.raises(TrainerError, match="list of strings"):
        load_trainer({"command": "train.sh"}, [])


def _sklearn_metric_set(y: np.ndarray, score: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    from sklearn import metrics as skm

    return {
        "accuracy": skm.accuracy_score(y, pred),
        "recall": skm.recall_score(y, pred, zero_division=0) if y.sum() else None,
        "precision": skm.precision_score(y, pred, zero_division=0) if pred.sum() else None,
        "f1": skm.f1_score(y, pred, zero_division=0) if y.sum() else None,
        "roc_auc": skm.roc_auc_score(y, score) if 0 < y.sum() < y.size else None,
        "log_loss": (
            skm.log_loss(y, np.clip(score, 1e-15, 1 - 1e-15), labels=[0, 1])
            if 0 < y.sum() < y.size
            else None
        ),
        "brier": skm.brier_score_loss(y, score) if 0 < y.sum() < y.size else None,
    }


# The score metrics are computed in numpy (rank sums for the AUC): sklearn's to ~1e-15.
_SCORE_METRICS = frozenset({"roc_auc", "log_loss", "brier"})


@pytest.mark.parametrize("seed", range(6))
def test_evaluate_count_metrics_equal_sklearn_exactly(seed: int) -> None:
    """Accuracy/precision/recall/F1 from confusion counts are sklearn's to the last bit,
    ROC AUC, log loss and Brier score (numpy) sklearn's within 1e-12 relative, overall and
    per slice (including slices with one class or no predicted positives)."""

    class Threshold:
        classes_ = np.array([0, 1])

        def predict_proba(self, x: pd.DataFrame) -> np.ndarray:
            p = x["s"].to_numpy(dtype=float)
            return np.column_stack([1 - p, p])

        def predict(self, x: pd.DataFrame) -> np.ndarray:
            return (x["s"].to_numpy() >= 0.7).astype(int)

    rng = np.random.default_rng(seed)
    n = 400
    g = rng.choice(np.array(["a", "b", "c", None], dtype=object), n)
    s = rng.random(n)
    y = (rng.random(n) < np.where(g == "c", 0.0, s)).astype(int)  # slice c: no positives
    s[g == "b"] = 0.1  # slice b: no predicted positives
    df = pd.DataFrame({"s": s, "y": y, "g": g})
    out = evaluate(Threshold(), df, target="y", features=["s"], slices=["g"])
    pred = (s >= 0.7).astype(int)
    cases = {"overall": np.ones(n, dtype=bool)} | {f"g={v}": g == v for v in "abc"}
    for where, mask in cases.items():
        got = out["overall"] if where == "overall" else out["slices"]["g"][where[2:]]
        want = _sklearn_metric_set(y[mask], s[mask], pred[mask])
        for metric, value in want.items():
            if metric in _SCORE_METRICS and value is not None:
                assert got[metric] == pytest.approx(value, rel=1e-12), (where, metric)
            else:
                assert got[metric] == value, (where, metric)
    assert set(out["slices"]["g"]) == {"a", "b", "c"}


def test_profile_count_metrics_equal_sklearn_exactly() -> None:
    """The reference profile's binary metrics (fast path) equal sklearn's binary scores,
    and cases sklearn must judge (three labels) still go to sklearn."""
    from sklearn import metrics as skm

    from driftwarden.detectors.profile import _classification_metrics

    rng = np.random.default_rng(42)
    for labels, positive in ((["0", "1"], "1"), (["no", "yes"], "yes"), (["0"], "1")):
        for _ in range(5):
            y = pd.Series(rng.choice(labels, 300))
            p = pd.Series(rng.choice(labels, 300))
            got = _classification_metrics(y, p, None, positive)
            kw: dict[str, Any] = {"pos_label": positive, "average": "binary", "zero_division": 0}
            assert got["accuracy"] == skm.accuracy_score(y, p)
            assert got["precision"] == skm.precision_score(y, p, **kw)
            assert got["recall"] == skm.recall_score(y, p, **kw)
            assert got["f1"] == skm.f1_score(y, p, **kw)
    y = pd.Series(rng.choice(["a", "b", "c"], 300))
    with pytest.raises(ValueError):
        _classification_metrics(y, y, None, "a")
    macro = _classification_metrics(
        y, y.sample(frac=1.0, random_state=1).reset_index(drop=True), None, None
    )
    assert 0.0 < macro["f1"] < 1.0


def _reference_snapshot_hash(frame: pd.DataFrame) -> str:
    """The value-by-value form of :func:`snapshot_hash` (the definition it must keep)."""
    import hashlib

    import orjson

    cols = sorted(map(str, frame.columns))
    data = [
        [None if isinstance(v, float) and v != v else v for v in frame[c].astype(object).tolist()]
        for c in cols
    ]
    blob = orjson.dumps(
        {"columns": cols, "data": data},
        option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS,
        default=str,
    )
    return hashlib.sha256(blob).hexdigest()


def test_snapshot_hash_equals_value_by_value_definition() -> None:
    """Float NaN becomes null; None, NaT, pd.NA, bools, ints and strings keep their form."""
    rng = np.random.default_rng(3)
    n = 600
    frame = pd.DataFrame(
        {
            "f": np.where(rng.random(n) < 0.2, np.nan, rng.normal(size=n)),
            "i": rng.integers(0, 9, n),
            "s": rng.choice(np.array(["x", "y", None], dtype=object), n),
            "o": np.array(
                [np.nan, "s", None, 1.5, True, np.float32("nan")] * (n // 6), dtype=object
            ),
            # float NaN of a float subclass, pd.NA and NaT among strings (object dtype)
            "m": np.array(
                [np.float64("nan"), "s", pd.NA, pd.NaT, float("nan"), None] * (n // 6),
                dtype=object,
            ),
            "b": rng.random(n) < 0.5,
            "ni": pd.array([1, None, 3] * (n // 3), dtype="Int64"),
            "t": pd.to_datetime(np.where(rng.random(n) < 0.1, None, "2024-01-01")),
            "ps": pd.Series(["a", None, "b"] * (n // 3), dtype="string"),
        }
    )
    assert snapshot_hash(frame) == _reference_snapshot_hash(frame)
    assert snapshot_hash(frame.iloc[:0]) == _reference_snapshot_hash(frame.iloc[:0])
    # Numeric columns go to orjson as arrays: the same bytes for every float, NaN and ±inf.
    floats = np.concatenate(
        [
            rng.normal(size=n) * 10.0 ** rng.integers(-300, 300, n),
            [np.nan, np.inf, -np.inf, -0.0, 0.0, 5e-324, 1.7976931348623157e308, 0.1, 1e16],
        ]
    )
    edge = pd.DataFrame(
        {
            "f": floats,
            "i": rng.integers(-(2**63), 2**63 - 1, floats.size),
            "b": rng.random(floats.size) < 0.5,
            "f32": rng.normal(size=floats.size).astype(np.float32),  # value by value, as before
        }
    )
    assert snapshot_hash(edge) == _reference_snapshot_hash(edge)
    assert snapshot_hash(edge.iloc[::3]) == _reference_snapshot_hash(edge.iloc[::3])


def _classifiers() -> list[Any]:
    from sklearn.compose import make_column_transformer
    from sklearn.ensemble import (
        ExtraTreesClassifier,
        GradientBoostingClassifier,
        HistGradientBoostingClassifier,
        RandomForestClassifier,
    )
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder
    from sklearn.tree import DecisionTreeClassifier

    encode = make_column_transformer(
        (OneHotEncoder(handle_unknown="ignore"), ["plan"]), remainder="passthrough"
    )
    return [
        make_pipeline(encode, HistGradientBoostingClassifier(max_iter=30)),
        make_pipeline(encode, GradientBoostingClassifier(n_estimators=20)),
        make_pipeline(encode, RandomForestClassifier(n_estimators=10, random_state=0)),
        make_pipeline(encode, ExtraTreesClassifier(n_estimators=10, random_state=0)),
        make_pipeline(encode, DecisionTreeClassifier(max_depth=4)),
        make_pipeline(encode, LogisticRegression(max_iter=500)),
    ]


@pytest.mark.parametrize("classes", ["binary ints", "binary strings", "three"])
def test_model_outputs_predictions_equal_predict(classes: str) -> None:
    """Read off ``predict_proba`` for the classifiers that predict by its argmax, the
    predicted classes are exactly ``predict``'s, in a pipeline, for ints and strings."""
    from driftwarden.retrain.gates import model_outputs

    rng = np.random.default_rng(3)
    n = 3000
    frame = pd.DataFrame(
        {"x": rng.normal(size=n), "z": rng.normal(size=n), "plan": rng.choice(["a", "b"], n)}
    )
    raw = frame.x + 0.5 * (frame.plan == "a") + rng.normal(size=n)
    y = (raw > 0).astype(int) if classes != "three" else np.digitize(raw, [-0.5, 0.5])
    if classes == "binary strings":
        y = np.where(y == 1, "churn", "stay")
    for model in _classifiers():
        model.fit(frame, y)
        out = model_outputs(model, frame, ["x", "z", "plan"])
        assert out.predicted.tolist() == model.predict(frame).tolist(), model
        assert out.classes == list(model.classes_)


def test_model_outputs_ties_are_broken_by_predict() -> None:
    """A row whose classes tie in ``predict_proba`` takes ``predict``'s class: gradient
    boosting predicts the positive class at a raw score of exactly 0 (argmax would say 0)."""
    from sklearn.ensemble import GradientBoostingClassifier

    from driftwarden.retrain.gates import model_outputs

    rng = np.random.default_rng(4)
    frame = pd.DataFrame({"x": rng.normal(size=200)})
    y = (frame.x > 0).astype(int)
    model = GradientBoostingClassifier(init="zero", n_estimators=2).fit(frame, y)
    for tree in model.estimators_.ravel():
        tree.tree_.value[:] = 0.0  # every raw score 0: probabilities 0.5 / 0.5
    out = model_outputs(model, frame, ["x"])
    assert out.predicted.tolist() == model.predict(frame).tolist() == [1] * 200


def test_model_outputs_other_classifiers_use_their_predict() -> None:
    """A subclass (it may predict its own way, a tuned threshold here) is asked ``predict``."""
    from sklearn.linear_model import LogisticRegression

    from driftwarden.retrain.gates import model_outputs

    class Thresholded(LogisticRegression):
        def predict(self, X: Any) -> np.ndarray:
            return (self.predict_proba(X)[:, 1] > 0.8).astype(int)

    rng = np.random.default_rng(5)
    frame = pd.DataFrame({"x": rng.normal(size=500)})
    y = (frame.x + rng.normal(size=500) > 0).astype(int)
    model = Thresholded().fit(frame, y)
    out = model_outputs(model, frame, ["x"])
    assert out.predicted.tolist() == model.predict(frame).tolist()
    assert out.predicted.sum() < (out.proba[:, 1] > 0.5).sum()


def test_single_threaded_limits_openmp_and_keeps_its_controller() -> None:
    """Inside the context the calling thread's OpenMP runs one thread, after it as before; the
    library lookup is kept between calls and made again once a module has been imported."""
    import sys
    import types

    import sklearn.ensemble  # noqa: F401 - loads scikit-learn's OpenMP runtime
    from threadpoolctl import threadpool_info

    from driftwarden.retrain import gates

    def openmp_threads() -> list[int]:
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "openmp"]

    before = openmp_threads()
    assert before
    with gates._single_threaded():
        assert openmp_threads() == [1] * len(before)
    assert openmp_threads() == before
    assert gates._controller is not None
    kept = gates._controller[1]
    with gates._single_threaded():
        pass
    assert gates._controller[1] is kept
    sys.modules["_driftwarden_test_new_module"] = types.ModuleType("_driftwarden_test_new_module")
    try:
        with gates._single_threaded():
            assert openmp_threads() == [1] * len(before)
        assert gates._controller[1] is not kept
    finally:
        del sys.modules["_driftwarden_test_new_module"]
