"""Slice performance: a model metric on one slice (or every slice of a column) vs its baseline.

An aggregate metric can improve while a small, important segment gets much worse (the seed's
incident: F1 up overall, recall of the ``enterprise`` tier down sharply). This detector keeps,
per slice and per window, only what its metric needs and compares the slice's metric with the
per-slice baseline stored in the reference profile.

A slice triggers only when all three hold: it has at least ``min_samples`` labeled rows, its
metric is worse than the baseline by more than ``max_drop`` (absolute; for ``mae``/``rmse`` an
increase), and a one-sided test rejects "the slice is no worse than its baseline" at level
``alpha`` (adjusted across slices with ``fdr`` when ``by`` tests many). The tests, all
bootstrap-free and treating the baseline as known:

* accuracy, precision, recall: exact binomial test of successes over the metric's own
  denominator (rows, predicted positives, actual positives) against the baseline proportion;
* f1: ``F1 = 2q / (1 + q)`` with ``q = TP / (TP + FP + FN)`` a proportion over the rows that
  are positive in label or prediction; F1 is monotone in ``q``, so the exact binomial test of
  ``q`` against ``F1₀ / (2 - F1₀)`` is a test of F1;
* roc_auc: normal approximation with the Hanley-McNeil (1982) standard error at the baseline
  AUC, for the window's numbers of positives and negatives;
* mae, rmse: one-sided z-test of the mean absolute (squared) error against the baseline MAE
  (RMSE²), with the standard error from the window's own spread.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from scipy import stats as sps

from . import fdr
from .base import Detector, DetectorResult, register
from .batch import Batch
from .concept_drift import label_keys, present
from .stats import abs_errors, binary_roc_auc, value_key

if TYPE_CHECKING:
    from .profile import ReferenceProfile

__all__ = ["SlicePerformance", "CLASSIFICATION_METRICS", "REGRESSION_METRICS"]

CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc")
REGRESSION_METRICS = ("mae", "rmse")
_NEEDS_POSITIVE = ("precision", "recall", "f1", "roc_auc")
_OVERALL = "*"  # the group key when neither `slice` nor `by` is given
_TOP = 5


def _new_acc() -> dict[str, Any]:
    return {"n": 0, "correct": 0, "tp": 0, "fp": 0, "fn": 0, "s1": 0.0, "s2": 0.0, "s4": 0.0}


def _number(v: Any) -> float | None:
    if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    return None


def _binomial_less(k: int, m: int, p0: float) -> float:
    """P-value of "the proportion is at least p0" after ``k`` successes in ``m`` trials."""
    p0 = min(max(p0, 0.0), 1.0)
    return float(sps.binomtest(int(k), int(m), p0, alternative="less").pvalue)


def hanley_mcneil_se(auc: float, n_pos: int, n_neg: int) -> float:
    """Standard error of an ROC AUC estimate (Hanley & McNeil, 1982)."""
    q1 = auc / (2.0 - auc)
    q2 = 2.0 * auc * auc / (1.0 + auc)
    var = (auc * (1.0 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) / (
        n_pos * n_neg
    )
    return math.sqrt(max(var, 0.0))


def _z_greater(mean: float, var: float, n: int, mu0: float) -> float:
    """One-sided p-value of "the mean is at most mu0" (normal approximation)."""
    if n < 2:
        return 1.0
    se = math.sqrt(max(var, 0.0) / n)
    if se == 0.0:
        return 0.0 if mean > mu0 else 1.0
    return float(sps.norm.sf((mean - mu0) / se))


@register
class SlicePerformance(Detector):
    """A metric on a slice (or on every slice of a column) compared with its baseline.

    Parameters
    ----------
    name
        The detector's name in the policy.
    profile
        The reference profile: ``task``, ``positive_label`` and ``metrics`` (per-slice
        baselines in ``metrics["slices"][column][value]``, overall in ``metrics["overall"]``).
    metric
        ``accuracy``, ``precision``, ``recall``, ``f1``, ``roc_auc`` (classification) or
        ``mae``, ``rmse`` (regression; for these a rise is the "drop").
    slice
        One segment column and its value, e.g. ``{"customer_tier": "enterprise"}``.
    by
        A segment column: every value of it is a slice, tested together with ``fdr``.
        Without ``slice`` and ``by`` the whole labeled stream is one slice, checked against
        the overall baseline.
    max_drop
        The absolute drop below the baseline (rise, for mae/rmse) a slice must exceed.
    min_samples
        A slice with fewer labeled rows in the window never triggers ("insufficient samples").
    alpha
        Level of the one-sided test (see the module docstring for which test).
    fdr
        Multiple-testing correction across slices with ``by``: ``bh``, ``by``, ``bonferroni``
        or ``none``.
    max_scores
        ``roc_auc`` only: the most recent scores kept per slice and window (bounds memory).
    positive_label
        The positive class for precision/recall/f1/roc_auc. With a profile it can only be
        the profile's own (its baselines are of that class; another is refused).

    Examples
    --------
    >>> import numpy as np
    >>> from driftwarden.detectors.batch import Batch
    >>> from driftwarden.detectors.profile import ReferenceProfile
    >>> base = {"recall": 0.8, "n": 2000}
    >>> profile = ReferenceProfile(
    ...     model="churn", model_version="1", n_rows=10000, created_at="", features={},
    ...     task="classification", positive_label="1",
    ...     metrics={"overall": base, "slices": {"tier": {"enterprise": base, "smb": base}}})
    >>> rng = np.random.default_rng(3)
    >>> def rows(tier, n, recall):  # actual positives only: predicted 1 with prob. `recall`
    ...     hit = rng.random(n) < recall
    ...     return [{"segment": {"tier": tier}, "prediction": {"label": int(h)}, "label": 1}
    ...             for h in hit]
    >>> det = SlicePerformance("tiers", profile, metric="recall", by="tier", max_drop=0.05)
    >>> det.update(Batch.from_records(rows("enterprise", 300, 0.55) + rows("smb", 3000, 0.85)))
    >>> r = det.result()
    >>> r.triggered, [(s["slice"]["tier"], s["triggered"]) for s in r.evidence["top"]]
    (True, [('enterprise', True), ('smb', False)])
    """

    kind: ClassVar[str] = "slice_performance"
    stream = "labeled"
    state_version: ClassVar[int] = 1
    params_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "properties": {
            "metric": {"enum": [*CLASSIFICATION_METRICS, *REGRESSION_METRICS]},
            "slice": {
                "type": "object",
                "minProperties": 1,
                "maxProperties": 1,
                "additionalProperties": {"type": ["string", "number", "boolean"]},
            },
            "by": {"type": "string", "minLength": 1},
            "max_drop": {"type": "number", "minimum": 0, "default": 0.05},
            "min_samples": {"type": "integer", "minimum": 1, "default": 200},
            "alpha": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
            "fdr": {"enum": list(fdr.METHODS), "default": "bh"},
            "max_scores": {"type": "integer", "minimum": 10, "default": 20000},
            "positive_label": {"type": ["string", "number", "boolean"]},
        },
        "required": ["metric"],
        "not": {"required": ["slice", "by"]},
        "additionalProperties": False,
    }

    def __init__(
        self,
        name: str,
        profile: ReferenceProfile | None = None,
        *,
        metric: str,
        slice: Mapping[str, Any] | None = None,  # the policy's key
        by: str | None = None,
        max_drop: float = 0.05,
        min_samples: int = 200,
        alpha: float = 0.05,
        fdr: str = "bh",
        max_scores: int = 20000,
        positive_label: Any = None,
    ) -> None:
        super().__init__(name, profile)
        where = f"slice_performance detector {name!r}"
        if metric not in (*CLASSIFICATION_METRICS, *REGRESSION_METRICS):
            raise ValueError(f"{where}: unknown metric {metric!r}.")
        if slice is not None and by is not None:
            raise ValueError(f"{where}: give either 'slice' or 'by', not both.")
        if slice is not None and len(slice) != 1:
            raise ValueError(f"{where}: 'slice' must name exactly one segment column.")
        if max_drop < 0 or min_samples < 1 or not 0 < alpha < 1 or max_scores < 10:
            raise ValueError(
                f"{where}: needs max_drop >= 0, min_samples >= 1, 0 < alpha < 1, max_scores >= 10."
            )
        if fdr not in _fdr_methods():
            raise ValueError(f"{where}: unknown fdr method {fdr!r}.")
        task = getattr(profile, "task", None) if profile is not None else None
        regression = metric in REGRESSION_METRICS
        if task is not None and (task == "regression") != regression:
            raise ValueError(f"{where}: metric {metric!r} does not apply to a {task} model.")
        self.metric = metric
        self.column: str | None = None
        self.value: str | None = None
        if slice is not None:
            ((col, val),) = slice.items()
            self.column, self.value = str(col), value_key(val)
        self.by = by
        self.max_drop = float(max_drop)
        self.min_samples = int(min_samples)
        self.alpha = float(alpha)
        self.fdr = fdr
        self.max_scores = int(max_scores)
        pos = positive_label
        ref_pos = getattr(profile, "positive_label", None) if profile is not None else None
        if profile is not None and metric in _NEEDS_POSITIVE:
            # The profile's baselines are of its positive class, or macro averages over the
            # classes when it has none: one class's metric compares only with that class's.
            if ref_pos is None and task == "classification":
                raise ValueError(
                    f"{where}: metric {metric!r} needs a positive class, but the profile has "
                    f"none (a multi-class model): its {metric} baselines are macro averages "
                    "over the classes, which one class's metric cannot be tested against. "
                    "Use metric 'accuracy'."
                )
            if ref_pos is not None and pos is not None and value_key(pos) != ref_pos:
                raise ValueError(
                    f"{where}: positive_label {pos!r} differs from the profile's positive "
                    f"class {ref_pos!r}: the profile's {metric} baselines are of class "
                    f"{ref_pos!r}, which class {pos!r}'s {metric} cannot be tested against; "
                    f"remove positive_label (or set it to {ref_pos!r})."
                )
        if pos is None:
            pos = ref_pos
        self.positive = value_key(pos) if pos is not None else "1"
        self._groups: dict[str, dict[str, Any]] = {}

    # -- windows ---------------------------------------------------------------------------
    def reset(self) -> None:
        """Start a new window (slice performance is purely windowed)."""
        self._groups = {}

    # -- update ----------------------------------------------------------------------------
    def _group_keys(self, batch: Batch) -> np.ndarray | None:
        """Per row the slice key (``None`` = not in any watched slice), or None if no row is."""
        if self.column is None and self.by is None:
            return np.full(batch.n, _OVERALL, dtype=object)
        col = self.by if self.by is not None else self.column
        seg = batch.segments.get(str(col))
        if seg is None:
            return None
        keys = seg.copy()
        if self.value is not None:
            keys[keys != self.value] = None
        return keys

    def update(self, batch: Batch) -> None:
        """Fold the labeled rows of the watched slice(s) into the window's accumulators."""
        if batch.n == 0:
            return
        keys = self._group_keys(batch)
        if keys is None:
            return
        if self.metric in REGRESSION_METRICS:
            lab = np.array([_number(v) for v in batch.label], dtype=np.float64)
            err = abs_errors(batch.value, lab)
            ok = present(keys) & np.isfinite(err)
        else:
            pred = label_keys(batch.predicted)
            lab_k = label_keys(batch.label)
            ok = present(keys) & present(lab_k)
            if self.metric == "roc_auc":
                ok &= np.isfinite(batch.score)
            else:
                ok &= present(pred)
        if not ok.any():
            return
        names, inverse = np.unique(keys[ok].astype(str), return_inverse=True)
        g = len(names)

        def count(mask: np.ndarray | None = None) -> np.ndarray:
            w = None if mask is None else mask.astype(np.float64)
            return np.bincount(inverse, weights=w, minlength=g)

        sums: dict[str, np.ndarray] = {"n": count()}
        if self.metric in REGRESSION_METRICS:
            e = err[ok]
            sums["s1"] = count(e)
            sums["s2"] = count(e**2)
            sums["s4"] = count(e**4)
        else:
            truth = lab_k[ok] == self.positive
            if self.metric == "roc_auc":
                score = batch.score[ok]
            else:
                pk = pred[ok]
                said = pk == self.positive
                sums["correct"] = count(pk == lab_k[ok])
                sums["tp"] = count(truth & said)
                sums["fp"] = count(~truth & said)
                sums["fn"] = count(truth & ~said)
        for i, key in enumerate(names.tolist()):
            acc = self._groups.setdefault(key, _new_acc())
            for field, arr in sums.items():
                if field in ("s1", "s2", "s4"):
                    acc[field] += float(arr[i])
                else:
                    acc[field] += int(round(arr[i]))
            if self.metric == "roc_auc":
                sel = inverse == i
                acc.setdefault("scores", []).extend(score[sel].tolist())
                acc.setdefault("truth", []).extend(truth[sel].astype(int).tolist())
                if len(acc["scores"]) > self.max_scores:
                    del acc["scores"][: -self.max_scores]
                    del acc["truth"][: -self.max_scores]

    # -- result ----------------------------------------------------------------------------
    def _baseline(self, key: str) -> float | None:
        metrics = getattr(self.profile, "metrics", None) or {}
        if key == _OVERALL:
            entry = metrics.get("overall") or {}
        else:
            col = self.by if self.by is not None else self.column
            entry = ((metrics.get("slices") or {}).get(str(col)) or {}).get(key) or {}
        return _number(entry.get(self.metric))

    def _metric_and_p(
        self, acc: Mapping[str, Any], base: float | None
    ) -> tuple[float | None, float | None, int]:
        """The slice's metric in this window, the one-sided p-value, and the metric's support.

        ``None`` where undefined; the support is the number of rows the metric is a proportion
        of (rows, predicted positives, actual positives, ...), or the rows for AUC and errors.
        """
        m = self.metric
        if m in ("accuracy", "precision", "recall", "f1"):
            tp, fp, fn = acc["tp"], acc["fp"], acc["fn"]
            k, denom = {
                "accuracy": (acc["correct"], acc["n"]),
                "precision": (tp, tp + fp),
                "recall": (tp, tp + fn),
                "f1": (tp, tp + fp + fn),
            }[m]
            if denom == 0:
                return None, None, 0
            value = (2 * tp / (2 * tp + fp + fn)) if m == "f1" else k / denom
            if base is None:
                return value, None, denom
            p0 = base / (2.0 - base) if m == "f1" else base
            return value, _binomial_less(k, denom, p0), denom
        if m == "roc_auc":
            truth = np.asarray(acc.get("truth", []), dtype=bool)
            n_pos = int(truth.sum())
            n_neg = int(truth.size - n_pos)
            if n_pos == 0 or n_neg == 0:
                return None, None, int(truth.size)
            auc = binary_roc_auc(truth, np.asarray(acc["scores"], dtype=np.float64))
            if base is None:
                return auc, None, int(truth.size)
            se = hanley_mcneil_se(min(max(base, 0.0), 1.0), n_pos, n_neg)
            if se == 0.0:
                return auc, 0.0 if auc < base else 1.0, int(truth.size)
            return auc, float(sps.norm.cdf((auc - base) / se)), int(truth.size)
        n = acc["n"]
        if n == 0:
            return None, None, 0
        s1, s2, s4 = acc["s1"], acc["s2"], acc["s4"]
        if m == "mae":
            mean, var = s1 / n, (s2 - s1 * s1 / n) / max(n - 1, 1)
            value, mu0 = mean, base
        else:
            mean, var = s2 / n, (s4 - s2 * s2 / n) / max(n - 1, 1)
            value, mu0 = math.sqrt(mean), None if base is None else base * base
        if mu0 is None:
            return value, None, n
        return value, _z_greater(mean, var, n, mu0), n

    def _slice_label(self, key: str) -> dict[str, str]:
        if key == _OVERALL:
            return {}
        return {str(self.by if self.by is not None else self.column): key}

    def result(self) -> DetectorResult:
        """Per-slice verdicts for the window so far (does not change state)."""
        higher_is_better = self.metric in CLASSIFICATION_METRICS
        keys = sorted(self._groups)
        if self.value is not None and self.value not in keys:
            keys.append(self.value)
        if self.column is None and self.by is None and _OVERALL not in keys:
            keys.append(_OVERALL)
        rows: list[dict[str, Any]] = []
        tested: list[int] = []
        for key in keys:
            acc = self._groups.get(key) or _new_acc()
            base = self._baseline(key)
            value, p, support = self._metric_and_p(acc, base)
            drop = None
            if value is not None and base is not None:
                drop = (base - value) if higher_is_better else (value - base)
            if acc["n"] < self.min_samples:
                status = "insufficient samples"
            elif base is None:
                status = "no baseline"
            elif value is None:
                status = "metric undefined"
            else:
                status = "tested"
                tested.append(len(rows))
            rows.append(
                {
                    "slice": self._slice_label(key),
                    "n": acc["n"],
                    "support": support,
                    "metric": self.metric,
                    "value": value,
                    "baseline": base,
                    "drop": drop,
                    "p_value": p,
                    "p_value_adjusted": None,
                    "triggered": False,
                    "status": status,
                }
            )
        if tested:
            pvals = np.array([rows[i]["p_value"] for i in tested], dtype=np.float64)
            method = self.fdr if self.by is not None else "none"
            adjusted = fdr.adjust(pvals, method)
            for i, padj in zip(tested, adjusted.tolist(), strict=True):
                row = rows[i]
                row["p_value_adjusted"] = padj
                row["triggered"] = bool(row["drop"] > self.max_drop and padj <= self.alpha)
        ranked = sorted(
            rows,
            key=lambda r: (
                not r["triggered"],
                r["status"] != "tested",
                -(r["drop"] if r["drop"] is not None else -math.inf),
            ),
        )
        fired = [r for r in rows if r["triggered"]]
        tested_rows = [rows[i] for i in tested]
        worst = max(tested_rows, key=lambda r: r["drop"]) if tested_rows else None
        lead = max(fired, key=lambda r: r["drop"]) if fired else worst
        return DetectorResult(
            name=self.name,
            kind=self.kind,
            triggered=bool(fired),
            statistic=None if worst is None else worst["drop"],
            threshold=self.max_drop,
            p_value=None if lead is None else lead["p_value_adjusted"],
            n=int(sum(a["n"] for a in self._groups.values())),
            evidence={
                "metric": self.metric,
                "positive_label": self.positive if higher_is_better else None,
                "min_samples": self.min_samples,
                "alpha": self.alpha,
                "fdr": self.fdr if self.by is not None else "none",
                "slices": rows,
                "top": ranked[:_TOP],
            },
        )

    # -- state -----------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "groups": {
                k: {f: (list(v) if isinstance(v, list) else v) for f, v in acc.items()}
                for k, acc in self._groups.items()
            },
        }

    def _load(self, state: Mapping[str, Any]) -> None:
        if state.get("metric") != self.metric:
            raise ValueError(
                f"slice_performance detector {self.name!r}: the saved state is for metric "
                f"{state.get('metric')!r}, the policy asks for {self.metric!r}."
            )
        groups: dict[str, dict[str, Any]] = {}
        for key, acc in state["groups"].items():
            new = _new_acc()
            for f in ("n", "correct", "tp", "fp", "fn"):
                new[f] = int(acc[f])
            for f in ("s1", "s2", "s4"):
                new[f] = float(acc[f])
            if "scores" in acc:
                new["scores"] = [float(x) for x in acc["scores"]]
                new["truth"] = [int(x) for x in acc["truth"]]
            groups[str(key)] = new
        self._groups = groups

    @classmethod
    def _unit_test_params(cls) -> dict[str, Any]:
        """Parameters for the shared detector contract suite."""
        from .profile import ReferenceProfile

        base = {"accuracy": 0.9, "precision": 0.8, "recall": 0.8, "f1": 0.8, "n": 5000}
        profile = ReferenceProfile(
            model="churn",
            model_version="1",
            n_rows=10000,
            created_at="2026-01-01T00:00:00Z",
            features={},
            task="classification",
            positive_label="1",
            metrics={
                "overall": base,
                "slices": {"customer_tier": {"enterprise": base, "smb": base}},
            },
        )

        def batch(seed: int) -> Batch:
            rng = np.random.default_rng(seed)
            n = 1200
            tier = rng.choice(["enterprise", "smb"], n, p=[0.3, 0.7])
            y = (rng.random(n) < 0.3).astype(int)
            hit = rng.random(n) < np.where(tier == "enterprise", 0.5, 0.85)
            pred = np.where(hit, y, 1 - y)
            return Batch.from_records(
                [
                    {
                        "segment": {"customer_tier": str(t)},
                        "prediction": {"label": int(p), "score": float(0.5 * p + 0.5 * r)},
                        "label": int(t_),
                    }
                    for t, p, t_, r in zip(tier, pred, y, rng.random(n), strict=True)
                ]
            )

        return {
            "kwargs": {"metric": "recall", "by": "customer_tier", "max_drop": 0.05},
            "profile": profile,
            "batch": batch,
        }


def _fdr_methods() -> tuple[str, ...]:
    return tuple(fdr.METHODS)
