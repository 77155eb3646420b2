"""Prediction drift: the model's output distribution against the reference profile.

The same binned-count machinery as feature drift (:class:`~driftwarden.detectors.feature_drift.
DriftCore`) on one distribution: the score (or the regression value) when the profile's
prediction is numeric, the predicted class when it is categorical. A shift in what the model
outputs is often the first sign of trouble before any label arrives.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from .base import Detector, DetectorResult, register
from .batch import Batch
from .feature_drift import (
    DRIFT_PARAMS_SCHEMA,
    DriftCore,
    check_params,
    columns_batch,
    unit_test_profile,
)
from .profile import ReferenceProfile
from .stats import object_keys

__all__ = ["PredictionDrift"]

_KEY = "prediction"


@register
class PredictionDrift(Detector):
    """Drift of the model's predictions against ``profile.prediction``.

    Parameters
    ----------
    name
        The detector's name in the policy.
    profile
        The reference profile; it must have a ``prediction`` entry.
    method
        ``js`` (default) | ``psi`` | ``ks`` | ``chi2`` | ``wasserstein``.
    threshold
        psi/js/wasserstein: the effect that must be exceeded (defaults 0.2 / 0.1 / 0.1);
        ks/chi2: the test level (default ``alpha``).
    alpha, min_effect, min_samples
        As for :class:`~driftwarden.detectors.feature_drift.FeatureDrift` (``fdr`` is
        accepted for symmetry; with one distribution it changes nothing).

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from driftwarden.detectors.profile import build_profile
    >>> rng = np.random.default_rng(5)
    >>> ref = pd.DataFrame({"x": rng.normal(size=4000), "score": rng.beta(2, 5, 4000),
    ...                     "y": rng.integers(0, 2, 4000)})
    >>> prof = build_profile(ref, "churn", target="y", score="score", created_at="-")
    >>> det = PredictionDrift("scores", prof)
    >>> det.update(Batch.from_records([{"prediction": {"score": float(s)}}
    ...                                for s in rng.beta(2, 5, 2000)]))
    >>> det.result().triggered
    False
    >>> det.update(Batch.from_records([{"prediction": {"score": float(s)}}
    ...                                for s in rng.beta(5, 2, 2000)]))
    >>> r = det.result()
    >>> r.triggered, round(r.statistic, 2)
    (True, 0.37)
    """

    kind: ClassVar[str] = "prediction_drift"
    stream = "predictions"
    state_version: ClassVar[int] = 1
    params_schema: ClassVar[Mapping[str, Any]] = DRIFT_PARAMS_SCHEMA

    def __init__(
        self,
        name: str,
        profile: ReferenceProfile | None = None,
        *,
        method: str = "js",
        threshold: float | None = None,
        fdr: str = "bh",
        alpha: float = 0.05,
        min_effect: float = 0.0,
        min_samples: int = 30,
    ) -> None:
        super().__init__(name, profile)
        params: dict[str, Any] = {
            "method": method,
            "fdr": fdr,
            "alpha": alpha,
            "min_effect": min_effect,
            "min_samples": min_samples,
        }
        if threshold is not None:
            params["threshold"] = threshold
        check_params(self.kind, name, self.params_schema, params)
        if profile is None or profile.prediction is None:
            raise ValueError(
                f"prediction_drift detector {name!r} needs a reference profile with a "
                f"prediction distribution."
            )
        self.method = method
        self._numeric = profile.prediction.type == "numeric"
        self._regression = profile.task == "regression"
        self._core = DriftCore(
            {_KEY: profile.prediction},
            method=method,
            threshold=threshold,
            fdr_method=fdr,
            alpha=alpha,
            min_effect=min_effect,
            min_samples=min_samples,
        )
        self.threshold = self._core.threshold

    def _values(self, batch: Batch) -> np.ndarray:
        if not self._numeric:
            keys = object_keys(batch.predicted)
            return keys[pd.notna(keys)]
        # Regression profiles describe prediction.value, classification ones the score; an
        # event stream that carries the other one is used as a fallback.
        first, second = (
            (batch.value, batch.score) if self._regression else (batch.score, batch.value)
        )
        x = first[~np.isnan(first)]
        return x if x.size else second[~np.isnan(second)]

    def update(self, batch: Batch) -> None:
        """Add the batch's predictions to the counts."""
        values = self._values(batch)
        binner, acc = self._core.binners[_KEY], self._core.accs[_KEY]
        if self._numeric:
            binner.add_numbers(acc, values)
        else:
            binner.add_keys(acc, values)

    def result(self) -> DetectorResult:
        """The verdict on the current window's prediction distribution."""
        return self._core.result(self.name, self.kind)

    def reset(self) -> None:
        """Start a new window."""
        self._core.reset()

    def _state(self) -> dict[str, Any]:
        return {"method": self.method, "prediction": self._core.state()[_KEY]}

    def _load(self, state: Mapping[str, Any]) -> None:
        self._core.load({_KEY: state["prediction"]}, self.name)

    def __repr__(self) -> str:
        return (
            f"PredictionDrift(name={self.name!r}, method={self.method!r}, "
            f"threshold={self.threshold!r})"
        )

    @classmethod
    def _unit_test_params(cls) -> dict[str, Any]:
        """Parameters for the shared detector contract suite."""

        def batch(seed: int) -> Batch:
            rng = np.random.default_rng(seed)
            n = 300
            score = rng.random(n) ** (2.0 if seed % 2 else 1.0)
            return columns_batch({"x": rng.normal(0, 1, n)}, score=score)

        return {"kwargs": {"method": "js"}, "profile": unit_test_profile(), "batch": batch}
