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
