"""Evaluation on the holdout and the model gates (pure: no MLflow, no I/O).

:func:`evaluate` computes metrics with :mod:`sklearn.metrics` overall and per slice;
:func:`check_gates` compares a candidate's metrics with fixed thresholds and with the
champion's metrics on the same holdout. Missing evidence fails closed: a metric that could not
be computed, or a slice the candidate or champion has no number for, is a failed gate.

Gates (the policy's ``retrain.gates``)::

    min:            {roc_auc: 0.80}          # candidate overall >= value
    max_regression: {roc_auc: 0.01}          # candidate overall >= champion - value
    slices:         {customer_tier: {max_drop: {recall: 0.05}, min_samples: 30}}
    min_holdout:    200                      # holdout rows (default 100)

Without a champion there is nothing to regress from: ``max_regression`` and slice
``max_drop`` pass with a note saying so.
"""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from driftwarden.detectors.stats import binary_roc_auc

__all__ = [
    "DEFAULT_MIN_HOLDOUT",
    "GATE_KEYS",
    "GateResult",
    "METRICS",
    "ModelOutputs",
    "SLICE_GATE_KEYS",
    "check_gates",
    "evaluate",
    "model_outputs",
    "validate_gates",
]

DEFAULT_MIN_HOLDOUT = 100
METRICS = ("roc_auc", "recall", "precision", "f1", "accuracy", "log_loss", "brier")
# The keys of a policy's ``retrain.gates`` and of one of its ``slices``. The policy loader
# checks policies against these (and METRICS), so what `driftwarden validate` accepts is what
# validate_gates accepts at retrain time: extend them here, where check_gates implements them.
GATE_KEYS = ("min", "max_regression", "slices", "min_holdout")
SLICE_GATE_KEYS = ("max_drop", "min_samples")
# Metrics where lower is better (a "drop" is an increase).
_LOWER_IS_BETTER = frozenset({"log_loss", "brier"})


@dataclass(frozen=True)
class GateResult:
    """One gate's verdict, JSON-ready through :meth:`to_dict`."""

    gate: str
    passed: bool
    reason: str
    metric: str | None = None
    slice: Mapping[str, str] | None = None
    candidate: float | None = None
    champion: float | None = None
    threshold: float | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "gate": self.gate,
            "passed": self.passed,
            "reason": self.reason,
            "metric": self.metric,
            "slice": dict(self.slice) if self.slice else None,
            "candidate": self.candidate,
            "champion": self.champion,
            "threshold": self.threshold,
        }


def validate_gates(gates: Mapping[str, Any]) -> None:
    """Refuse unknown gate keys and metrics with a plain sentence (policies are operator input)."""
    for key in gates:
        if key not in GATE_KEYS:
            raise ValueError(
                f"unknown retrain gate {key!r}; known gates: {', '.join(sorted(GATE_KEYS))}."
            )
    for key in ("min", "max_regression"):
        for metric in gates.get(key) or {}:
            if metric not in METRICS:
                raise ValueError(
                    f"gate {key}.{metric}: unknown metric; known: {', '.join(METRICS)}."
                )
    for col, spec in (gates.get("slices") or {}).items():
        for k in spec:
            if k not in SLICE_GATE_KEYS:
                raise ValueError(
                    f"gate slices.{col}.{k}: unknown key ({', '.join(SLICE_GATE_KEYS)})."
                )
        for metric in spec.get("max_drop") or {}:
            if metric not in METRICS:
                raise ValueError(
                    f"gate slices.{col}.max_drop.{metric}: unknown metric; known: {', '.join(METRICS)}."
                )


@dataclass(frozen=True)
class ModelOutputs:
    """A model's raw outputs on a table: ``predict`` and (if it has one) ``predict_proba``.

    Computed once per model and table, then shared by :func:`evaluate` and whatever else
    needs the same predictions (the pipeline's candidate profile).
    """

    predicted: np.ndarray
    proba: np.ndarray | None
    classes: list[Any]


def model_outputs(model: Any, frame: pd.DataFrame, features: Sequence[str]) -> ModelOutputs:
    """``predict`` and ``predict_proba`` of ``model`` on ``frame[features]``.

    OpenMP runs single-threaded meanwhile: a holdout is small, and a team of threads that must
    meet at every parallel loop is what makes small predictions slow on a busy machine (4x
    here under load; equal results, the per-row predictions do not depend on the threads).
    The setting is the calling thread's own, so two threads can each predict with one.

    For the scikit-learn classifiers whose ``predict`` is the class of highest
    ``predict_proba`` (:func:`_predicts_by_argmax`) the classes are read off the
    probabilities instead of running the model a second time; rows where two classes tie
    for the highest probability still ask ``predict`` (these models break such ties from
    their raw scores, which the rounded probabilities no longer show).
    """
    x = frame[list(features)]
    with _single_threaded():
        proba = np.asarray(model.predict_proba(x)) if hasattr(model, "predict_proba") else None
        classes = getattr(model, "classes_", None)
        if proba is not None and _predicts_by_argmax(model, proba, classes):
            top = proba.argmax(axis=1)
            predicted = np.asarray(classes)[top]
            tied = np.flatnonzero((proba == proba[np.arange(len(top)), top][:, None]).sum(1) > 1)
            if tied.size:
                predicted[tied] = np.asarray(model.predict(x.iloc[tied]))
        else:
            predicted = np.asarray(model.predict(x))
    return ModelOutputs(predicted, proba, list(classes if classes is not None else [0, 1]))


def _argmax_types() -> tuple[type, ...]:
    """scikit-learn classifiers whose ``predict`` is ``classes_[argmax(predict_proba)]`` up
    to ties: the trees and forests take the argmax itself; the boosting models and logistic
    regression threshold a raw score that their probabilities are a monotone function of.
    Exact types only: a subclass may predict its own way (a tuned threshold, say)."""
    from sklearn.ensemble import (
        ExtraTreesClassifier,
        GradientBoostingClassifier,
        HistGradientBoostingClassifier,
        RandomForestClassifier,
    )
    from sklearn.linear_model import LogisticRegression
    from sklearn.tree import DecisionTreeClassifier, ExtraTreeClassifier

    return (
        HistGradientBoostingClassifier,
        GradientBoostingClassifier,
        RandomForestClassifier,
        ExtraTreesClassifier,
        DecisionTreeClassifier,
        ExtraTreeClassifier,
        LogisticRegression,
    )


def _predicts_by_argmax(model: Any, proba: np.ndarray, classes: Any) -> bool:
    """Whether ``model.predict`` is the argmax of ``proba`` (see :func:`_argmax_types`); a
    :class:`~sklearn.pipeline.Pipeline` predicts with its last step on the same transformed
    input as its ``predict_proba``."""
    from sklearn.pipeline import Pipeline

    final = model
    while type(final) is Pipeline:
        final = final.steps[-1][1]
    return (
        type(final) in _argmax_types()
        and classes is not None
        and proba.ndim == 2
        and proba.shape[1] == len(classes) >= 2
    )


#: (modules imported when it was made, threadpoolctl's controller): see _single_threaded
_controller: tuple[int, Any] | None = None
_controller_lock = threading.Lock()


def _single_threaded() -> AbstractContextManager[Any]:
    """OpenMP limited to one thread for the calling thread, until the context exits.

    ``threadpool_limits`` looks up every loaded native library each time it is made (3.3 ms
    here, twice per retrain attempt); a ``ThreadpoolController`` keeps what it found and
    limits in 0.05 ms. It is made again once more modules have been imported since (a
    trainer or model that brings its own OpenMP runtime loads it with a module import).
    """
    global _controller
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - scikit-learn depends on threadpoolctl
        return nullcontext()
    with _controller_lock:
        loaded = len(sys.modules)
        if _controller is None or _controller[0] != loaded:
            _controller = (loaded, ThreadpoolController())
        controller = _controller[1]
    return controller.limit(limits=1, user_api="openmp")


def _metric_set(y: np.ndarray, score: np.ndarray | None, pred: np.ndarray) -> dict[str, Any]:
    from sklearn import metrics as skm

    n, positives, predicted = int(y.size), int(y.sum()), int(pred.sum())
    out: dict[str, Any] = {"n": n, "positives": positives}
    two_classes = 0 < positives < n
    # The count metrics straight from the confusion counts (sklearn's definitions, without
    # its per-call input checks; equal to the last bit: integer counts, one division each).
    tp = int(np.count_nonzero(y & pred))
    out["accuracy"] = int(np.count_nonzero(y == pred)) / n if n else None
    # Recall is undefined without positives and precision without predicted positives:
    # record None (missing evidence) rather than sklearn's zero_division fill.
    out["recall"] = tp / positives if positives else None
    out["precision"] = tp / predicted if predicted else None
    out["f1"] = 2.0 * tp / (positives + predicted) if positives else None
    if score is not None and two_classes and np.isfinite(score).all():
        # sklearn's definitions in numpy, without its per-call input checks (a retrain
        # computes them for each slice of both models); equal to sklearn's within ~1e-15
        # (tests/retrain/test_gates.py).
        positive = y.astype(bool)
        out["roc_auc"] = binary_roc_auc(positive, score)
        clipped = np.clip(score, 1e-15, 1 - 1e-15)
        out["log_loss"] = float(-np.mean(np.where(positive, np.log(clipped), np.log(1 - clipped))))
        out["brier"] = float(np.mean((y - score) ** 2))
    elif score is not None and two_classes:  # NaN or inf scores: sklearn's error
        out["roc_auc"] = float(skm.roc_auc_score(y, score))
        clipped = np.clip(score, 1e-15, 1 - 1e-15)
        out["log_loss"] = float(skm.log_loss(y, clipped, labels=[0, 1]))
        out["brier"] = float(skm.brier_score_loss(y, score))
    else:
        out["roc_auc"] = out["log_loss"] = out["brier"] = None
    return out


def evaluate(
    model: Any,
    holdout: pd.DataFrame,
    *,
    target: str,
    features: Sequence[str],
    slices: Sequence[str] = (),
    positive: Any = 1,
    outputs: ModelOutputs | None = None,
) -> dict[str, Any]:
    """Metrics of a binary classifier on ``holdout``: ``{"overall": {...}, "slices": {col:
    {value: {...}}}}``, each with ``n``. ``score`` is ``predict_proba`` of the positive class.

    ``outputs`` are the model's :func:`model_outputs` on ``holdout`` when the caller has them
    already (the model is then not called again).
    """
    out = outputs if outputs is not None else model_outputs(model, holdout, features)
    y = (holdout[target].to_numpy() == positive).astype(int)
    score: np.ndarray | None = None
    if out.proba is not None:
        col = out.classes.index(positive) if positive in out.classes else out.proba.shape[1] - 1
        score = out.proba[:, col].astype(np.float64)
    pred = (out.predicted == positive).astype(int)
    result: dict[str, Any] = {"overall": _metric_set(y, score, pred), "slices": {}}
    # A slice column the holdout lacks has no entry: a gate on it fails closed (check_gates),
    # one only reported is left out (as the candidate's profile leaves it out).
    for col in (c for c in slices if c in holdout.columns):
        # One string key per row (None for nulls), then one mask per distinct value.
        keys = holdout[col].astype(object).where(holdout[col].notna(), None).to_numpy()
        keys = np.array([None if v is None else str(v) for v in keys], dtype=object)
        per: dict[str, Any] = {}
        for v in sorted({k for k in keys if k is not None}):
            mask = keys == v
            per[v] = _metric_set(y[mask], None if score is None else score[mask], pred[mask])
        result["slices"][col] = per
    return result


def _num(x: Any) -> float | None:
    if x is None:
        return None
    f = float(x)
    return f if math.isfinite(f) else None


def check_gates(
    gates: Mapping[str, Any],
    candidate: Mapping[str, Any],
    champion: Mapping[str, Any] | None,
    *,
    holdout_n: int,
) -> list[GateResult]:
    """Every gate's verdict (see the module docstring); all must pass to register."""
    results: list[GateResult] = []
    min_holdout = int(gates.get("min_holdout", DEFAULT_MIN_HOLDOUT))
    results.append(
        GateResult(
            "min_holdout",
            holdout_n >= min_holdout,
            f"holdout has {holdout_n} rows; at least {min_holdout} are required",
            candidate=float(holdout_n),
            threshold=float(min_holdout),
        )
    )
    cand_all = candidate.get("overall", {})
    champ_all = (champion or {}).get("overall", {})
    for metric, thr in (gates.get("min") or {}).items():
        value = _num(cand_all.get(metric))
        lower = metric in _LOWER_IS_BETTER
        if value is None:
            passed, why = False, f"candidate {metric} could not be computed (missing evidence)"
        else:
            passed = value <= thr if lower else value >= thr
            why = f"candidate {metric} {value:.4f} {'<=' if lower else '>='} {thr} is {passed}"
        results.append(GateResult("min", passed, why, metric, None, value, None, float(thr)))
    for metric, allowed in (gates.get("max_regression") or {}).items():
        results.append(
            _compare("max_regression", metric, float(allowed), cand_all, champ_all, champion, None)
        )
    for col, spec in (gates.get("slices") or {}).items():
        cand_slices = candidate.get("slices", {}).get(col)
        if cand_slices is None:
            results.append(
                GateResult(
                    "slice",
                    False,
                    f"slice column {col!r} is not in the holdout (missing evidence)",
                    slice={col: "*"},
                )
            )
            continue
        min_samples = int(spec.get("min_samples", 1))
        champ_slices = (champion or {}).get("slices", {}).get(col, {})
        judged = False
        for value, cand_m in cand_slices.items():
            if cand_m.get("n", 0) < min_samples:
                continue  # too few rows to judge; the policy's min_samples says so
            judged = True
            for metric, allowed in (spec.get("max_drop") or {}).items():
                results.append(
                    _compare(
                        "slice",
                        metric,
                        float(allowed),
                        cand_m,
                        champ_slices.get(value, {}),
                        champion,
                        {col: value},
                    )
                )
        if not judged and spec.get("max_drop"):
            # Not one value to judge (the column null in every holdout row, or every value
            # under min_samples): the per-slice gate would pass on no evidence at all.
            results.append(
                GateResult(
                    "slice",
                    False,
                    f"no value of slice column {col!r} has {min_samples} or more holdout rows "
                    "with it (missing evidence)",
                    slice={col: "*"},
                )
            )
    return results


def _compare(
    gate: str,
    metric: str,
    allowed: float,
    cand: Mapping[str, Any],
    champ: Mapping[str, Any],
    champion: Mapping[str, Any] | None,
    where: Mapping[str, str] | None,
) -> GateResult:
    label = f"{metric}" + (f" in slice {_fmt(where)}" if where else "")
    if champion is None:
        return GateResult(
            gate, True, f"no champion to compare {label} with", metric, where, threshold=allowed
        )
    c, p = _num(cand.get(metric)), _num(champ.get(metric))
    if c is None or p is None:
        who = "candidate" if c is None else "champion"
        return GateResult(
            gate,
            False,
            f"{who} {label} could not be computed (missing evidence)",
            metric,
            where,
            c,
            p,
            allowed,
        )
    drop = (c - p) if metric in _LOWER_IS_BETTER else (p - c)
    passed = drop <= allowed + 1e-12
    return GateResult(
        gate,
        passed,
        f"{label}: candidate {c:.4f} vs champion {p:.4f}, drop {drop:.4f} "
        f"{'within' if passed else 'exceeds'} the allowed {allowed}",
        metric,
        where,
        c,
        p,
        allowed,
    )


def _fmt(where: Mapping[str, str] | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in (where or {}).items())
