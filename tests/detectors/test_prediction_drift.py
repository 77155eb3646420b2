"""Prediction drift on scores, predicted classes and regression values."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pandas as pd
import pytest

from driftwarden.detectors.batch import Batch
from driftwarden.detectors.feature_drift import columns_batch
from driftwarden.detectors.prediction_drift import PredictionDrift
from driftwarden.detectors.profile import build_profile


def _classifier_table(rng: np.random.Generator, n: int) -> pd.DataFrame:
    score = rng.beta(2, 5, n)
    return pd.DataFrame(
        {
            "x": rng.normal(size=n),
            "score": score,
            "pred": np.where(score >= 0.5, "churn", "stay"),
            "y": np.where(rng.random(n) < score, "churn", "stay"),
        }
    )


def test_score_drift_is_found_and_clean_scores_are_not() -> None:
    """Scores from the reference distribution pass; scores pushed upwards trigger."""
    rng = np.random.default_rng(1)
    prof = build_profile(_classifier_table(rng, 20_000), "m", target="y", score="score")
    det = PredictionDrift("scores", prof)
    det.update(columns_batch({}, score=rng.beta(2, 5, 5000)))
    assert not det.result().triggered
    det.reset()
    det.update(columns_batch({}, score=rng.beta(3, 4, 5000)))
    r = det.result()
    assert r.triggered and r.evidence["top"][0]["feature"] == "prediction"
    assert r.statistic is not None and r.statistic > 0.1


def test_predicted_class_mix() -> None:
    """Without scores, the predicted class is profiled as categorical and compared by share."""
    rng = np.random.default_rng(2)
    prof = build_profile(_classifier_table(rng, 20_000), "m", target="y", prediction="pred")
    assert prof.prediction is not None and prof.prediction.type == "categorical"
    share = prof.prediction.categories["churn"]
    det = PredictionDrift("classes", prof, method="chi2")
    labels = np.where(rng.random(4000) < share, "churn", "stay").astype(object)
    det.update(Batch.from_records([{"prediction": {"label": v}} for v in labels]))
    assert not det.result().triggered
    det.reset()
    labels = np.where(rng.random(4000) < share + 0.15, "churn", "stay").astype(object)
    det.update(Batch.from_records([{"prediction": {"label": v}} for v in labels]))
    assert det.result().triggered


def test_regression_values() -> None:
    """A regression profile describes prediction.value; a shifted value stream triggers."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=10_000)
    prof = build_profile(
        pd.DataFrame({"x": x, "y": 3 * x + rng.normal(size=10_000), "yhat": 3 * x}),
        "price",
        target="y",
        prediction="yhat",
    )
    det = PredictionDrift("values", prof, method="wasserstein")
    det.update(columns_batch({}, value=3 * rng.normal(0.5, 1.0, 3000)))
    r = det.result()
    assert r.triggered and r.statistic == pytest.approx(0.5, abs=0.1)


def test_state_round_trip_and_errors() -> None:
    """The JSON state resumes the window; a profile without a prediction is refused."""
    rng = np.random.default_rng(4)
    prof = build_profile(_classifier_table(rng, 5000), "m", target="y", score="score")
    a = PredictionDrift("scores", prof, method="ks")
    b = PredictionDrift("scores", prof, method="ks")
    first, second = rng.beta(3, 4, 1000), rng.beta(3, 4, 1000)
    a.update(columns_batch({}, score=first))
    b.load_state(json.loads(json.dumps(a.state_dict())))
    a.update(columns_batch({}, score=second))
    b.update(columns_batch({}, score=second))
    assert a.result() == b.result()
    no_pred = build_profile(_classifier_table(rng, 100)[["x"]], "m")
    with pytest.raises(ValueError, match="prediction distribution"):
        PredictionDrift("scores", no_pred)
    with pytest.raises(jsonschema.ValidationError, match="'features' was unexpected"):
        jsonschema.validate({"method": "js", "features": "all"}, PredictionDrift.params_schema)
    with pytest.raises(ValueError, match="prediction_drift detector 'p': threshold"):
        PredictionDrift("p", prof, threshold=-1.0)
