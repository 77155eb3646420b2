"""Reference profiles: what "normal" looks like for a model, without keeping raw rows.

A :class:`ReferenceProfile` is built from the training/validation table when a model is
trained (:func:`build_profile`) and stored as JSON (``driftwarden/profile.json`` on the model
version's MLflow run, or a local file). Per feature it holds the type, null rate, min/max,
quantile bin edges and shares (numeric), category shares (categorical) and the most common
exact values; for the prediction the same; and baseline metrics overall and per slice.

>>> import numpy as np, pandas as pd
>>> rng = np.random.default_rng(0)
>>> df = pd.DataFrame({"age": rng.normal(40, 10, 1000).round(),
...                    "plan": rng.choice(["free", "pro"], 1000),
...                    "y": rng.integers(0, 2, 1000)})
>>> p = build_profile(df, "churn", target="y", prediction="y", created_at="2026-01-01T00:00:00Z")
>>> sorted(p.features), p.features["age"].type, len(p.features["age"].bin_edges)
(['age', 'plan'], 'numeric', 9)
>>> p.metrics["overall"]["accuracy"], ReferenceProfile.from_json(p.to_json()) == p
(1.0, True)
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from .stats import (
    bin_counts,
    binary_roc_auc,
    numeric_keys,
    object_keys,
    quantile_edges,
    value_key,
)

__all__ = [
    "OTHER",
    "PROFILE_FORMAT",
    "FeatureProfile",
    "ReferenceProfile",
    "build_profile",
    "read_table",
]

PROFILE_FORMAT = "driftwarden.profile/v1"
# Categorical features keep at most this many categories; the rest are pooled under OTHER so a
# high-cardinality column (ids) cannot blow up the profile.
MAX_CATEGORIES = 1000
OTHER = "__other__"
# Value shares: the most common exact values, down to this share.
MAX_VALUE_SHARES = 20
MIN_VALUE_SHARE = 0.001
QUANTILE_POINTS = 101
SENTINELS = ("0", "-1", "99", "999", "9999", "-999", "-9999", "", "unknown", "none", "null")


def _clean(x: float | None) -> float | None:
    """JSON has no NaN/inf: store them as null."""
    if x is None:
        return None
    f = float(x)
    return f if math.isfinite(f) else None


@dataclass(frozen=True)
class FeatureProfile:
    """The reference distribution of one feature (or of the prediction).

    ``n`` is the number of non-null values the distribution was estimated from (it sets the
    reference's sample size in two-sample tests); ``null_rate`` is the share of rows that were
    null. Numeric: ``bin_edges`` are inner quantile edges of right-closed bins, ``bin_freqs``
    the reference share per bin (``len(bin_edges) + 1``), ``quantiles`` a 101-point quantile
    grid and ``quantile_cdf`` the exact share of values at or below each quantile (where ties
    repeat a value it differs from the grid's probabilities; empty in profiles written before
    it was stored, which then use those probabilities). Categorical: ``categories`` maps each
    category (string form) to its share. ``value_shares`` lists the most common exact values
    (string form, see :func:`~driftwarden.detectors.stats.value_key`) with their shares among
    non-null values.
    """

    type: Literal["numeric", "categorical"]
    n: int
    null_rate: float
    min: float | None = None
    max: float | None = None
    mean: float | None = None
    std: float | None = None
    bin_edges: list[float] = field(default_factory=list)
    bin_freqs: list[float] = field(default_factory=list)
    quantiles: list[float] = field(default_factory=list)
    quantile_cdf: list[float] = field(default_factory=list)
    categories: dict[str, float] = field(default_factory=dict)
    value_shares: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "type": self.type,
            "n": self.n,
            "null_rate": self.null_rate,
            "min": self.min,
            "max": self.max,
            "mean": self.mean,
            "std": self.std,
            "bin_edges": list(self.bin_edges),
            "bin_freqs": list(self.bin_freqs),
            "quantiles": list(self.quantiles),
            "quantile_cdf": list(self.quantile_cdf),
            "categories": dict(self.categories),
            "value_shares": dict(self.value_shares),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "feature") -> FeatureProfile:
        """Inverse of :meth:`to_dict`; ``where`` names the entry in error messages."""
        kind = d.get("type")
        if kind not in ("numeric", "categorical"):
            raise ValueError(
                f"profile entry {where!r} has type {kind!r}; expected 'numeric' or 'categorical'."
            )
        if "n" not in d or "null_rate" not in d:
            raise ValueError(f"profile entry {where!r} lacks 'n' or 'null_rate'.")
        quantiles = [float(x) for x in d.get("quantiles") or []]
        quantile_cdf = [float(x) for x in d.get("quantile_cdf") or []]
        if quantile_cdf and len(quantile_cdf) != len(quantiles):
            raise ValueError(
                f"profile entry {where!r} has {len(quantile_cdf)} quantile_cdf values for "
                f"{len(quantiles)} quantiles."
            )
        return cls(
            type=kind,
            n=int(d["n"]),
            null_rate=float(d["null_rate"]),
            min=_clean(d.get("min")),
            max=_clean(d.get("max")),
            mean=_clean(d.get("mean")),
            std=_clean(d.get("std")),
            bin_edges=[float(x) for x in d.get("bin_edges") or []],
            bin_freqs=[float(x) for x in d.get("bin_freqs") or []],
            quantiles=quantiles,
            quantile_cdf=quantile_cdf,
            categories={str(k): float(v) for k, v in (d.get("categories") or {}).items()},
            value_shares={str(k): float(v) for k, v in (d.get("value_shares") or {}).items()},
        )


@dataclass(frozen=True)
class ReferenceProfile:
    """The reference for one model version: features, prediction, baseline metrics.

    ``metrics`` is ``{"overall": {...}, "slices": {column: {value: {...}}}}`` where each metric
    dict holds ``accuracy, precision, recall, f1, roc_auc, n`` (classification; ``roc_auc``
    only with scores) or ``mae, rmse, n`` (regression).
    """

    model: str
    model_version: str | None
    n_rows: int
    created_at: str
    features: Mapping[str, FeatureProfile]
    prediction: FeatureProfile | None = None
    task: Literal["classification", "regression"] | None = None
    positive_label: str | None = None
    metrics: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, tagged with :data:`PROFILE_FORMAT`."""
        return {
            "format": PROFILE_FORMAT,
            "model": self.model,
            "model_version": self.model_version,
            "n_rows": self.n_rows,
            "created_at": self.created_at,
            "task": self.task,
            "positive_label": self.positive_label,
            "features": {k: f.to_dict() for k, f in self.features.items()},
            "prediction": None if self.prediction is None else self.prediction.to_dict(),
            "metrics": _json_ready(self.metrics),
        }

    def to_json(self) -> str:
        """The profile as a JSON string (the stored artifact)."""
        return json.dumps(self.to_dict(), indent=1, sort_keys=False, allow_nan=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ReferenceProfile:
        """Read a profile dict; refuses a missing or unknown ``format``."""
        fmt = d.get("format")
        if fmt != PROFILE_FORMAT:
            raise ValueError(
                f"reference profile format {fmt!r} is not supported; this version of "
                f"driftwarden reads {PROFILE_FORMAT!r}."
            )
        if "model" not in d or not isinstance(d.get("features"), Mapping):
            raise ValueError("reference profile lacks 'model' or a 'features' mapping.")
        task = d.get("task")
        if task not in (None, "classification", "regression"):
            raise ValueError(f"reference profile has an unknown task {task!r}.")
        pred = d.get("prediction")
        return cls(
            model=str(d["model"]),
            model_version=None if d.get("model_version") is None else str(d["model_version"]),
            n_rows=int(d.get("n_rows", 0)),
            created_at=str(d.get("created_at", "")),
            features={
                str(k): FeatureProfile.from_dict(v, where=str(k)) for k, v in d["features"].items()
            },
            prediction=None if pred is None else FeatureProfile.from_dict(pred, "prediction"),
            task=task,
            positive_label=None if d.get("positive_label") is None else str(d["positive_label"]),
            metrics=dict(d.get("metrics") or {}),
        )

    @classmethod
    def from_json(cls, s: str | bytes) -> ReferenceProfile:
        """Parse the JSON produced by :meth:`to_json`."""
        return cls.from_dict(json.loads(s))

    @classmethod
    def load(cls, path: str | Path) -> ReferenceProfile:
        """Read a profile file."""
        return cls.from_json(Path(path).read_text(encoding="utf-8"))

    def save(self, path: str | Path) -> None:
        """Write the profile as JSON (parent folders must exist)."""
        Path(path).write_text(self.to_json(), encoding="utf-8")


def _json_ready(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _json_ready(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_ready(v) for v in x]
    if isinstance(x, bool | np.bool_):
        return bool(x)
    if isinstance(x, int | np.integer):
        return int(x)
    if isinstance(x, float | np.floating):
        return _clean(float(x))
    return x


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV or parquet table, chosen by the file suffix."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return pd.read_parquet(p)
    if suffix in (".csv", ".tsv", ".txt") or p.name.lower().endswith(".csv.gz"):
        return pd.read_csv(p, sep="\t" if suffix == ".tsv" else ",")
    raise ValueError(f"cannot read table {str(p)!r}: use a .csv or .parquet file.")


def _is_numeric(s: pd.Series) -> bool:
    return bool(pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s))


def _category_keys(s: pd.Series) -> pd.Series:
    """Non-null values of a categorical column as profile keys (bools as "true"/"false")."""
    v = s.dropna()
    # value_key runs once per distinct value, not once per row.
    return pd.Series(object_keys(v.to_numpy(dtype=object)), index=v.index, dtype=object)


def _top_shares(keys: np.ndarray, counts: np.ndarray, n: int) -> dict[str, float]:
    order = np.argsort(-counts, kind="stable")[:MAX_VALUE_SHARES]
    out = {str(keys[i]): float(counts[i] / n) for i in order if counts[i] / n >= MIN_VALUE_SHARE}
    # Typical stand-ins for "missing" are kept even when rare, so a spike of them is measured
    # against their true reference share.
    for i in np.flatnonzero(np.isin(keys.astype(str), SENTINELS)):
        out.setdefault(str(keys[i]), float(counts[i] / n))
    return out


def _numeric_top_shares(uniq: np.ndarray, counts: np.ndarray, n: int) -> dict[str, float]:
    """:func:`_top_shares` for sorted unique floats, keying only the values it keeps."""
    sentinels = np.array([float(k) for k in SENTINELS if k.lstrip("-").isdigit()])
    keep = np.union1d(
        np.argsort(-counts, kind="stable")[:MAX_VALUE_SHARES],
        np.flatnonzero(np.isin(uniq, sentinels)),
    )
    return _top_shares(numeric_keys(uniq[keep]), counts[keep], n)


def _numeric_profile(s: pd.Series, bins: int) -> FeatureProfile:
    raw = pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    rows = raw.shape[0]
    v = raw[np.isfinite(raw)]
    n = int(v.size)
    null_rate = float((rows - n) / rows) if rows else 0.0
    if n == 0:
        return FeatureProfile(type="numeric", n=0, null_rate=null_rate, bin_freqs=[1.0])
    edges = quantile_edges(v, bins)
    freqs = bin_counts(v, edges) / n
    uniq, counts = np.unique(v, return_counts=True)
    quantiles = np.quantile(v, np.linspace(0, 1, QUANTILE_POINTS))
    at_or_below = np.r_[0, np.cumsum(counts)][np.searchsorted(uniq, quantiles, side="right")]
    return FeatureProfile(
        type="numeric",
        n=n,
        null_rate=null_rate,
        min=float(v.min()),
        max=float(v.max()),
        mean=float(v.mean()),
        std=float(v.std(ddof=1)) if n > 1 else 0.0,
        bin_edges=[float(e) for e in edges],
        bin_freqs=[float(f) for f in freqs],
        quantiles=[float(q) for q in quantiles],
        quantile_cdf=[float(c) for c in at_or_below / n],
        value_shares=_numeric_top_shares(uniq, counts, n),
    )


def _categorical_profile(s: pd.Series) -> FeatureProfile:
    rows = int(s.shape[0])
    keys = _category_keys(s)
    n = int(keys.shape[0])
    null_rate = float((rows - n) / rows) if rows else 0.0
    vc = keys.value_counts()
    cats = {str(k): float(c / n) for k, c in vc.iloc[:MAX_CATEGORIES].items()} if n else {}
    if vc.shape[0] > MAX_CATEGORIES:
        cats[OTHER] = float(vc.iloc[MAX_CATEGORIES:].sum() / n)
    top = vc.iloc[:MAX_VALUE_SHARES]
    return FeatureProfile(
        type="categorical",
        n=n,
        null_rate=null_rate,
        categories=cats,
        value_shares=_top_shares(
            np.asarray(top.index, dtype=object), top.to_numpy(dtype=np.float64), max(n, 1)
        ),
    )


def _feature_profile(s: pd.Series, bins: int) -> FeatureProfile:
    return _numeric_profile(s, bins) if _is_numeric(s) else _categorical_profile(s)


def _infer_task(y: pd.Series) -> Literal["classification", "regression"]:
    if not _is_numeric(y):
        return "classification"
    v = y.dropna().to_numpy(dtype=np.float64)
    integral = bool(np.all(v == np.round(v)))
    return "classification" if integral and np.unique(v).size <= 20 else "regression"


def _binary_counts(yk: np.ndarray, pk: np.ndarray, positive: str | None) -> dict[str, float] | None:
    """Accuracy, precision, recall and F1 of a binary task from its confusion counts.

    The values sklearn's binary-average scores give (``zero_division=0``; one division of
    integer counts each, so equal to the last bit), without their per-call label checks.
    ``None`` when sklearn must decide (no rows, no positive label, more than two labels, or
    two labels without the positive one, which sklearn refuses).
    """
    if positive is None or yk.size == 0:
        return None
    labels = set(pd.unique(yk).tolist()) | set(pd.unique(pk).tolist())
    if len(labels) > 2 or (len(labels) == 2 and positive not in labels):
        return None
    true_pos, pred_pos = yk == positive, pk == positive
    tp = int(np.count_nonzero(true_pos & pred_pos))
    n_true, n_pred = int(np.count_nonzero(true_pos)), int(np.count_nonzero(pred_pos))
    return {
        "accuracy": int(np.count_nonzero(yk == pk)) / yk.size,
        "precision": tp / n_pred if n_pred else 0.0,
        "recall": tp / n_true if n_true else 0.0,
        "f1": 2.0 * tp / (n_true + n_pred) if n_true + n_pred else 0.0,
    }


def _sklearn_label_metrics(yk: pd.Series, pk: pd.Series, positive: str | None) -> dict[str, float]:
    """Accuracy, precision, recall and F1 through sklearn (macro average without a positive)."""
    from sklearn import metrics as skm

    kw: dict[str, Any]
    if positive is not None:
        kw = {"pos_label": positive, "average": "binary", "zero_division": 0}
    else:
        kw = {"average": "macro", "zero_division": 0}
    return {
        "accuracy": float(skm.accuracy_score(yk, pk)),
        "precision": float(skm.precision_score(yk, pk, **kw)),
        "recall": float(skm.recall_score(yk, pk, **kw)),
        "f1": float(skm.f1_score(yk, pk, **kw)),
    }


def _classification_metrics(
    y: pd.Series, pred: pd.Series | None, score: pd.Series | None, positive: str | None
) -> dict[str, Any]:
    return _keyed_classification_metrics(
        _str_keys(y),
        None if pred is None else _str_keys(pred),
        None if score is None else score.to_numpy(dtype=np.float64),
        positive,
    )


def _str_keys(values: pd.Series) -> np.ndarray:
    """``values.map(value_key).astype(str).to_numpy()`` (an object array of str), vectorised
    for int64, bool and float64 columns (a retrain keys its holdout's targets and
    predictions: 15 000 Python calls each otherwise)."""
    arr = values.to_numpy()
    if arr.dtype == np.int64:
        out: np.ndarray = arr.astype(str).astype(object)
    elif arr.dtype == np.bool_:
        out = np.where(arr, "true", "false").astype(object)
    elif arr.dtype == np.float64:
        out = numeric_keys(arr)
    else:
        out = values.map(value_key).astype(str).to_numpy()
    return out


def _keyed_classification_metrics(
    yk: np.ndarray, pk: np.ndarray | None, score: np.ndarray | None, positive: str | None
) -> dict[str, Any]:
    """:func:`_classification_metrics` of targets and predictions already keyed
    (:func:`value_key` as ``str``): a table is keyed once, then sliced.

    A row without a prediction (``None`` in ``pk``) or without a score (NaN) is left out of
    the metrics that need it, as slice_performance leaves such events out; metrics with no
    row left are left out (no baseline)."""

    out: dict[str, Any] = {"n": int(yk.shape[0])}
    if pk is not None:
        has = pd.notna(pk)
        yp, pp = (yk, pk) if has.all() else (yk[has], pk[has])
        fast = _binary_counts(yp, pp, positive)
        if fast is not None:
            out.update(fast)
        elif yp.size:
            out.update(_sklearn_label_metrics(pd.Series(yp), pd.Series(pp), positive))
    if score is not None and positive is not None:
        has = np.isfinite(score)
        truth = yk[has] == positive
        # ROC AUC is undefined when the slice holds one class only.
        auc_ok = 0 < truth.sum() < truth.size
        out["roc_auc"] = binary_roc_auc(truth, score[has]) if auc_ok else None
    return out


def _regression_metrics(y: pd.Series, pred: pd.Series) -> dict[str, Any]:
    from sklearn import metrics as skm

    yt = y.to_numpy(dtype=np.float64)
    yp = pred.to_numpy(dtype=np.float64)
    if yt.size == 0:  # sklearn refuses no rows: no baseline
        return {"n": 0}
    return {
        "n": int(yt.size),
        "mae": float(skm.mean_absolute_error(yt, yp)),
        "rmse": float(np.sqrt(skm.mean_squared_error(yt, yp))),
    }


def _positive_label(y: pd.Series) -> str | None:
    keys = sorted(set(_category_keys(y)))
    if len(keys) != 2:
        return None
    for pos in ("1", "true", "yes", "positive"):
        if pos in keys:
            return pos
    return keys[1]


def build_profile(
    df: pd.DataFrame,
    model: str,
    *,
    target: str | None = None,
    prediction: str | None = None,
    score: str | None = None,
    segments: Sequence[str] = (),
    model_version: str | None = None,
    feature_columns: Sequence[str] | None = None,
    bins: int = 10,
    task: Literal["classification", "regression"] | None = None,
    positive_label: str | None = None,
    created_at: str | None = None,
) -> ReferenceProfile:
    """Build the reference profile of ``model`` from a table (the validation split).

    Features are all columns except ``target``/``prediction``/``score``/``segments``, or
    exactly ``feature_columns``. Numeric dtypes are profiled as numeric (``bins``
    equal-frequency bins), object/category/bool columns as categorical. The prediction profile
    is numeric on ``score`` when given, else on ``prediction`` (numeric for regression,
    categorical for classes). Metrics need ``target`` and ``prediction`` (and ``score`` for ROC
    AUC); ``task`` and ``positive_label`` are inferred from the target when not given.
    """
    special = [c for c in (target, prediction, score, *segments) if c is not None]
    missing = [c for c in special + list(feature_columns or []) if c not in df.columns]
    if missing:
        raise ValueError(f"table for model {model!r} has no column(s) {', '.join(missing)}.")
    if feature_columns is None:
        feature_columns = [c for c in df.columns if c not in special]
    features = {str(c): _feature_profile(df[c], bins) for c in feature_columns}

    if task is None and target is not None:
        task = _infer_task(df[target])
    if task is None and prediction is not None:
        task = _infer_task(df[prediction])
    if task is None and score is not None:
        task = "classification"
    if positive_label is None and task == "classification":
        if target is not None:
            positive_label = _positive_label(df[target])
        elif prediction is not None:
            positive_label = _positive_label(df[prediction])

    pred_profile: FeatureProfile | None = None
    if score is not None:
        pred_profile = _numeric_profile(df[score], bins)
    elif prediction is not None:
        col = df[prediction]
        if task == "regression":
            pred_profile = _numeric_profile(col, bins)
        else:
            pred_profile = _categorical_profile(col)

    metrics: dict[str, Any] = {}
    if target is not None and (prediction is not None or score is not None):
        # Targets and predictions are keyed once for the whole table; each slice takes its
        # rows by position (not as a sub-table: that would copy every column per slice).
        labeled = df[target].notna().to_numpy()
        keyed = task != "regression"
        yk = _str_keys(df[target]) if keyed else None
        pk = _str_keys(df[prediction]) if keyed and prediction is not None else None
        if pk is not None:
            pk[df[prediction].isna().to_numpy()] = None  # no prediction, not a class "nan"
        scores = None if score is None else df[score].to_numpy(np.float64, na_value=np.nan)
        # Regression rows without a prediction are left out, as rows without a target are.
        predicted = (
            np.isfinite(df[prediction].to_numpy(dtype=np.float64, na_value=np.nan))
            if not keyed and prediction is not None
            else None
        )

        def compute(rows: np.ndarray) -> dict[str, Any]:
            rows = rows[labeled[rows]]
            if yk is None:
                if predicted is None:
                    return {"n": int(rows.size)}
                part = df.iloc[rows[predicted[rows]]]
                return _regression_metrics(part[target], part[prediction])
            return _keyed_classification_metrics(
                yk[rows],
                None if pk is None else pk[rows],
                None if scores is None else scores[rows],
                positive_label,
            )

        metrics["overall"] = compute(np.arange(df.shape[0]))
        slices: dict[str, dict[str, Any]] = {}
        for seg in segments:
            # value_key per distinct value (object_keys), not per row; None: no slice
            keys = pd.Series(object_keys(df[seg].to_numpy(dtype=object)), index=df.index)
            groups = df.groupby(keys, dropna=True).indices
            # sorted: the order in which the groupby yields its groups
            slices[str(seg)] = {str(k): compute(groups[k]) for k in sorted(groups)}
        metrics["slices"] = slices

    return ReferenceProfile(
        model=model,
        model_version=model_version,
        n_rows=int(df.shape[0]),
        created_at=created_at or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        features=features,
        prediction=pred_profile,
        task=task,
        positive_label=positive_label,
        metrics=_json_ready(metrics),
    )
