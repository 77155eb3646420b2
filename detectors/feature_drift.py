"""Feature drift: per-feature two-sample tests against the reference profile, FDR-controlled.

Each micro-batch is binned against the profile (numeric: ``np.searchsorted`` on the
reference's quantile edges and its 101-point quantile grid; categorical: the reference
categories plus "other") and only the counts are kept, so the state is small, mergeable and
JSON-ready. At the end of a window every feature gets an effect size (PSI, Jensen-Shannon
distance, KS distance, Cramér's V or a normalised Wasserstein distance) and a p-value (the KS
test for ``method: ks``, else the chi-square homogeneity test on the binned counts). The
p-values are corrected across features (Benjamini-Hochberg by default) and a feature is
flagged only if its corrected p-value is significant *and* its effect exceeds ``threshold``:
the test keeps small windows from paging on noise, the effect size keeps large windows from
paging on negligible shifts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import jsonschema
import numpy as np
import pandas as pd

from . import fdr
from .base import Detector, DetectorResult, register
from .batch import Batch, FeatureColumn
from .profile import OTHER, FeatureProfile, ReferenceProfile
from .stats import (
    chi2_homogeneity,
    grid_cdf,
    is_numeric_like,
    js_distance,
    ks_from_grid,
    numeric_keys,
    psi,
    wasserstein_from_grid,
)

__all__ = ["DRIFT_METHODS", "DEFAULT_THRESHOLDS", "DriftCore", "FeatureDrift", "check_params"]

DRIFT_METHODS = ("psi", "js", "ks", "chi2", "wasserstein")
# Effect-size cutoffs for psi/js/wasserstein; for ks/chi2 the threshold is the FDR level.
DEFAULT_THRESHOLDS: Mapping[str, float | None] = {
    "psi": 0.2,
    "js": 0.1,
    "wasserstein": 0.1,
    "ks": None,
    "chi2": None,
}
_TOP = 20
_FLOAT_MAX = float(np.finfo(np.float64).max)


def check_params(
    kind: str, name: str, schema: Mapping[str, Any], params: Mapping[str, Any]
) -> None:
    """Validate keyword parameters against a detector's ``params_schema`` (plain-sentence error)."""
    try:
        jsonschema.validate(dict(params), dict(schema))
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "parameters"
        raise ValueError(f"{kind} detector {name!r}: {where}: {e.message}.") from None


@dataclass
class _Binner:
    """How one feature's window values become counts, built once from its profile."""

    kind: str
    ref_freqs: np.ndarray
    n_ref: float | None
    edges: np.ndarray
    grid: np.ndarray
    grid_cdf: np.ndarray
    std: float | None
    categories: pd.Index | None
    numbers_are_categories: bool
    # Derived once per profile: both grids as one sorted-search query, and category slots.
    queries: np.ndarray = field(init=False, repr=False)
    slots: dict[Any, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.queries = np.concatenate([self.edges, self.grid])
        names = [] if self.categories is None else list(self.categories)
        self.slots = {c: i for i, c in enumerate(names)}

    @classmethod
    def from_profile(cls, fp: FeatureProfile) -> _Binner:
        n_ref = float(fp.n) if fp.n > 0 else None
        if fp.type == "numeric":
            # Profiles written before quantile_cdf was stored fall back to the grid's
            # probabilities (approximate where ties repeat a value).
            grid, cdf = grid_cdf(fp.quantiles, fp.quantile_cdf or None)
            return cls(
                kind="numeric",
                ref_freqs=np.asarray(fp.bin_freqs or [1.0], dtype=np.float64),
                n_ref=n_ref,
                edges=np.asarray(fp.bin_edges, dtype=np.float64),
                grid=grid,
                grid_cdf=cdf,
                std=fp.std if fp.std else None,
                categories=None,
                numbers_are_categories=False,
            )
        names = [c for c in fp.categories if c != OTHER]
        freqs = [fp.categories[c] for c in names] + [fp.categories.get(OTHER, 0.0)]
        return cls(
            kind="categorical",
            ref_freqs=np.asarray(freqs, dtype=np.float64),
            n_ref=n_ref,
            edges=np.empty(0),
            grid=np.empty(0),
            grid_cdf=np.empty(0),
            std=None,
            categories=pd.Index(names, dtype=object),
            numbers_are_categories=is_numeric_like(names),
        )

    def empty(self) -> dict[str, Any]:
        if self.kind == "numeric":
            return {
                "n": 0,
                "coarse": np.zeros(self.edges.size + 1, dtype=np.int64),
                "fine": np.zeros(self.grid.size + 1, dtype=np.int64),
                "low": 0.0,
                "high": 0.0,
            }
        assert self.categories is not None
        return {"n": 0, "coarse": np.zeros(len(self.categories) + 1, dtype=np.int64)}

    def add_numbers(self, acc: dict[str, Any], x: np.ndarray) -> None:
        """Fold numeric values (finite only) into an accumulator."""
        if x.size == 0:
            return
        self._add_sorted(acc, np.sort(x))

    def _add_sorted(self, acc: dict[str, Any], xs: np.ndarray) -> None:
        """Fold sorted values without NaN into an accumulator.

        One sort serves every grid (a few binary searches into the sorted values), and the
        tail sums only touch the values outside the grid, which sit at the two ends.
        """
        n = xs.size
        if n == 0:
            return
        acc["n"] += int(n)
        # Values at or below each edge and grid point, in one binary search per query point
        # (what stats.sorted_bin_counts does per grid; per-call overhead matters for small
        # micro-batches).
        at = xs.searchsorted(self.queries, side="right")
        ne = self.edges.size
        acc["coarse"] += _counts_from_cumulative(at[:ne], n)
        if self.grid.size:
            acc["fine"] += _counts_from_cumulative(at[ne:], n)
            lo, hi = self.grid[0], self.grid[-1]
            below = int(xs.searchsorted(lo, side="left"))
            above = int(at[-1])
            # Capped at the largest float: values near it (valid input) would overflow the sums
            # to inf, which JSON cannot hold, and the checkpoint would not load again.
            with np.errstate(over="ignore"):
                if below:
                    acc["low"] = min(acc["low"] + float(np.sum(lo - xs[:below])), _FLOAT_MAX)
                if above < xs.size:
                    acc["high"] = min(acc["high"] + float(np.sum(xs[above:] - hi)), _FLOAT_MAX)

    def add_keys(self, acc: dict[str, Any], keys: np.ndarray) -> None:
        """Fold category keys into an accumulator (unknown categories count as "other")."""
        if keys.size == 0:
            return
        assert self.categories is not None
        idx = self.categories.get_indexer(keys)
        idx[idx < 0] = len(self.categories)
        acc["n"] += int(keys.size)
        acc["coarse"] += np.bincount(idx, minlength=len(self.categories) + 1)

    def add_text(self, acc: dict[str, Any], text: np.ndarray) -> None:
        """Fold a text view (nulls allowed) into an accumulator in one hashing pass.

        ``pandas.factorize`` codes the values and drops the nulls (the same values
        ``pandas.notna`` rejects); only its few distinct values are then looked up among the
        reference categories, so no per-row key array is built.
        """
        if text.size == 0:
            return
        assert self.categories is not None
        codes, uniques = pd.factorize(text, use_na_sentinel=True)
        if len(uniques) == 0:
            return
        per_unique = np.bincount(codes + 1, minlength=len(uniques) + 1)[1:]
        other = len(self.categories)
        coarse = acc["coarse"]
        for u, c in zip(uniques, per_unique.tolist(), strict=True):
            coarse[self.slots.get(u, other)] += c
        acc["n"] += int(per_unique.sum())

    def add_column(self, acc: dict[str, Any], col: FeatureColumn) -> None:
        """Fold a feature column's correctly typed, non-null values into an accumulator."""
        if self.kind == "numeric":
            x = col.numeric
            n_nan = int(np.count_nonzero(np.isnan(x)))
            if n_nan < x.size:
                # NaN sorts last: the valid values are the sorted array's head (a view).
                self._add_sorted(acc, np.sort(x)[: x.size - n_nan])
            return
        self.add_text(acc, col.text)
        if self.numbers_are_categories:
            has_num = ~np.isnan(col.numeric)
            if has_num.any():
                self.add_keys(acc, numeric_keys(col.numeric[has_num]))

    def score(self, acc: Mapping[str, Any], method: str) -> tuple[float, float]:
        """``(effect, p_value)`` of the accumulated window for ``method``."""
        counts = np.asarray(acc["coarse"])
        numeric = self.kind == "numeric" and self.grid.size > 1
        if method == "ks" and numeric:
            return ks_from_grid(self.grid_cdf, np.asarray(acc["fine"]), self.n_ref)
        stat, p, _ = chi2_homogeneity(self.ref_freqs, counts, self.n_ref)
        if method == "psi":
            return psi(self.ref_freqs, counts), p
        if method == "wasserstein" and numeric:
            w = wasserstein_from_grid(
                self.grid, self.grid_cdf, np.asarray(acc["fine"]), acc["low"], acc["high"]
            )
            return (min(w / self.std, _FLOAT_MAX) if self.std else w), p
        if method in ("chi2", "ks"):
            # Cramér's V of the 2 x k table: an effect size that does not grow with n.
            total = float(acc["n"]) + (self.n_ref or float(acc["n"]))
            return (float(np.sqrt(stat / total)) if np.isfinite(stat) else 1.0), p
        # js, and wasserstein on a categorical feature
        return js_distance(self.ref_freqs, counts), p


def _counts_from_cumulative(at: np.ndarray, n: int) -> np.ndarray:
    """Counts per right-closed bin from the number of values at or below each inner edge."""
    cum = np.empty(at.size + 2, dtype=np.int64)
    cum[0], cum[-1] = 0, n
    cum[1:-1] = at
    return cum[1:] - cum[:-1]


def _acc_to_json(acc: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in acc.items()}


def _acc_from_json(d: Mapping[str, Any], template: Mapping[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in template.items():
        if k not in d:
            raise ValueError(f"saved drift state for {where!r} lacks {k!r}.")
        if isinstance(v, np.ndarray):
            arr = np.asarray(d[k], dtype=np.int64)
            if arr.shape != v.shape:
                raise ValueError(
                    f"saved drift state for {where!r} has {arr.size} bins; the reference "
                    f"profile has {v.size}."
                )
            out[k] = arr
        else:
            out[k] = type(v)(d[k])
    return out


class DriftCore:
    """Binned-count accumulators for several named distributions and their verdict.

    Shared by :class:`FeatureDrift` (one entry per feature) and
    :class:`~driftwarden.detectors.prediction_drift.PredictionDrift` (one entry).
    """

    def __init__(
        self,
        profiles: Mapping[str, FeatureProfile],
        *,
        method: str,
        threshold: float | None,
        fdr_method: str,
        alpha: float,
        min_effect: float,
        min_samples: int,
    ) -> None:
        self.method = method
        self.fdr_method = fdr_method
        self.alpha = alpha
        self.min_effect = min_effect
        self.min_samples = min_samples
        self.threshold = DEFAULT_THRESHOLDS[method] if threshold is None else float(threshold)
        self.binners = {k: _Binner.from_profile(fp) for k, fp in profiles.items()}
        self.accs = {k: b.empty() for k, b in self.binners.items()}

    @property
    def is_test_method(self) -> bool:
        """ks/chi2: the threshold is the FDR level, not an effect cutoff."""
        return self.method in ("ks", "chi2")

    def reset(self) -> None:
        """Empty every accumulator."""
        self.accs = {k: b.empty() for k, b in self.binners.items()}

    def result(self, name: str, kind: str) -> DetectorResult:
        """The window's verdict as a detector result (shared by feature and prediction drift)."""
        triggered, stat, p, n, evidence = self.verdict()
        return DetectorResult(
            name=name,
            kind=kind,
            triggered=triggered,
            statistic=stat,
            threshold=self.threshold if self.threshold else self.alpha,
            p_value=p,
            n=n,
            evidence=evidence,
        )

    def verdict(self) -> tuple[bool, float | None, float | None, int, dict[str, Any]]:
        """``(triggered, statistic, min adjusted p, n, evidence)`` for the current window."""
        names = [k for k, a in self.accs.items() if a["n"] >= self.min_samples]
        skipped = [k for k, a in self.accs.items() if a["n"] < self.min_samples]
        n = max((int(a["n"]) for a in self.accs.values()), default=0)
        level = self.threshold if self.is_test_method and self.threshold else self.alpha
        evidence: dict[str, Any] = {
            "method": self.method,
            "fdr": self.fdr_method,
            "alpha": level,
            "tested": len(names),
            "skipped": skipped[:_TOP],
            "top": [],
        }
        if not names:
            return False, None, None, n, evidence
        scored = [self.binners[k].score(self.accs[k], self.method) for k in names]
        effects = np.array([s[0] for s in scored], dtype=np.float64)
        pvals = np.array([s[1] for s in scored], dtype=np.float64)
        adj = fdr.adjust(pvals, self.fdr_method)
        cutoff = self.min_effect if self.is_test_method else float(self.threshold or 0.0)
        if self.is_test_method:
            flagged = (adj <= level) & (effects >= cutoff)
        else:
            flagged = (adj <= level) & (effects > cutoff)
        order = [i for i in np.argsort(-effects, kind="stable") if flagged[i]]
        evidence["n_flagged"] = int(flagged.sum())
        evidence["top"] = [
            {
                "feature": names[i],
                "statistic": round(float(effects[i]), 6),
                "p_value": float(pvals[i]),
                "p_adjusted": float(adj[i]),
                "n": int(self.accs[names[i]]["n"]),
            }
            for i in order[:_TOP]
        ]
        return bool(flagged.any()), float(effects.max()), float(adj.min()), n, evidence

    def state(self) -> dict[str, Any]:
        """JSON-ready accumulators."""
        return {k: _acc_to_json(a) for k, a in self.accs.items()}

    def load(self, state: Mapping[str, Any], owner: str) -> None:
        """Restore :meth:`state`; the saved names must match the profile's."""
        if set(state) != set(self.binners):
            raise ValueError(
                f"saved state of detector {owner!r} covers {sorted(state)} but its reference "
                f"profile covers {sorted(self.binners)}."
            )
        self.accs = {k: _acc_from_json(state[k], self.binners[k].empty(), k) for k in self.binners}


DRIFT_PARAMS_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "method": {"enum": list(DRIFT_METHODS)},
        "threshold": {"type": "number", "exclusiveMinimum": 0},
        "fdr": {"enum": list(fdr.METHODS)},
        "alpha": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "min_effect": {"type": "number", "minimum": 0},
        "min_samples": {"type": "integer", "minimum": 1},
    },
}


@register
class FeatureDrift(Detector):
    """Per-feature drift against the reference profile, corrected across features.

    Parameters
    ----------
    name
        The detector's name in the policy.
    profile
        The reference profile (required).
    method
        ``psi`` | ``js`` (default) | ``ks`` | ``chi2`` | ``wasserstein`` (normalised by the
        reference standard deviation; categorical features use JS distance).
    threshold
        psi/js/wasserstein: the effect a flagged feature must exceed (defaults 0.2 / 0.1 /
        0.1). ks/chi2: the FDR level (default ``alpha``).
    features
        ``"all"`` (default) or a list of profile features.
    fdr
        Multiple-testing correction across features: ``bh`` (default), ``by``,
        ``bonferroni`` or ``none``.
    alpha
        Level of the corrected tests for psi/js/wasserstein (default 0.05).
    min_effect
        ks/chi2 only: smallest KS distance / Cramér's V that may flag (default 0).
    min_samples
        Features with fewer values in the window are not tested (default 30).

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from driftwarden.detectors.profile import build_profile
    >>> rng = np.random.default_rng(42)
    >>> ref = pd.DataFrame({f"x{i}": rng.normal(size=5000) for i in range(5)})
    >>> det = FeatureDrift("drift", build_profile(ref, "m", created_at="-"), method="ks")
    >>> win = {f"x{i}": rng.normal(size=2000) + (0.5 if i == 3 else 0.0) for i in range(5)}
    >>> det.update(Batch.from_records([{"features": {k: float(v[j]) for k, v in win.items()}}
    ...                                for j in range(2000)]))
    >>> r = det.result()
    >>> r.triggered, [t["feature"] for t in r.evidence["top"]]
    (True, ['x3'])
    """

    kind: ClassVar[str] = "feature_drift"
    stream = "predictions"
    state_version: ClassVar[int] = 1
    params_schema: ClassVar[Mapping[str, Any]] = {
        **DRIFT_PARAMS_SCHEMA,
        "properties": {
            **DRIFT_PARAMS_SCHEMA["properties"],
            "features": {
                "oneOf": [
                    {"const": "all"},
                    {"type": "array", "items": {"type": "string"}, "minItems": 1},
                ]
            },
        },
    }

    def __init__(
        self,
        name: str,
        profile: ReferenceProfile | None = None,
        *,
        method: str = "js",
        threshold: float | None = None,
        features: str | Sequence[str] = "all",
        fdr: str = "bh",
        alpha: float = 0.05,
        min_effect: float = 0.0,
        min_samples: int = 30,
    ) -> None:
        super().__init__(name, profile)
        params: dict[str, Any] = {
            "method": method,
            "features": features if isinstance(features, str) else list(features),
            "fdr": fdr,
            "alpha": alpha,
            "min_effect": min_effect,
            "min_samples": min_samples,
        }
        if threshold is not None:
            params["threshold"] = threshold
        check_params(self.kind, name, self.params_schema, params)
        if profile is None:
            raise ValueError(f"feature_drift detector {name!r} needs a reference profile.")
        if features == "all":
            chosen = list(profile.features)
        else:
            chosen = list(features)
            unknown = [f for f in chosen if f not in profile.features]
            if unknown:
                raise ValueError(
                    f"feature_drift detector {name!r} names feature(s) {', '.join(unknown)} "
                    f"that the reference profile of {profile.model!r} does not have."
                )
        self.method = method
        self.features = chosen
        self._core = DriftCore(
            {f: profile.features[f] for f in chosen},
            method=method,
            threshold=threshold,
            fdr_method=fdr,
            alpha=alpha,
            min_effect=min_effect,
            min_samples=min_samples,
        )
        self.threshold = self._core.threshold

    def update(self, batch: Batch) -> None:
        """Add the batch's values to the per-feature counts."""
        for f in self.features:
            col = batch.features.get(f)
            if col is not None:
                self._core.binners[f].add_column(self._core.accs[f], col)

    def result(self) -> DetectorResult:
        """Flagged features of the current window (see the class docstring)."""
        return self._core.result(self.name, self.kind)

    def reset(self) -> None:
        """Start a new window."""
        self._core.reset()

    def _state(self) -> dict[str, Any]:
        return {"method": self.method, "features": self._core.state()}

    def _load(self, state: Mapping[str, Any]) -> None:
        self._core.load(state["features"], self.name)

    def __repr__(self) -> str:
        return (
            f"FeatureDrift(name={self.name!r}, method={self.method!r}, "
            f"threshold={self.threshold!r}, features={len(self.features)}, "
            f"fdr={self._core.fdr_method!r})"
        )

    @classmethod
    def _unit_test_params(cls) -> dict[str, Any]:
        """Parameters for the shared detector contract suite."""
        return {
            "kwargs": {"method": "psi", "threshold": 0.1},
            "profile": unit_test_profile(),
            "batch": unit_test_batch,
        }


def unit_test_profile() -> ReferenceProfile:
    """A small seeded reference profile used by the contract suite and docstrings."""
    from .profile import build_profile

    rng = np.random.default_rng(7)
    n = 2000
    df = pd.DataFrame(
        {
            "x": rng.normal(0, 1, n),
            "days": rng.exponential(12, n).round(),
            "plan": rng.choice(["free", "pro", "team"], n, p=[0.6, 0.3, 0.1]),
            "score": rng.random(n),
            "label": rng.integers(0, 2, n),
        }
    )
    return build_profile(df, "unit", target="label", score="score", prediction=None, created_at="-")


def unit_test_batch(seed: int) -> Batch:
    """A seeded batch matching :func:`unit_test_profile`, drifting with the seed's parity."""
    rng = np.random.default_rng(seed)
    n = 400
    shift = 0.6 if seed % 2 else 0.0
    return columns_batch(
        {
            "x": rng.normal(shift, 1, n),
            "days": rng.exponential(12, n).round(),
            "plan": rng.choice(["free", "pro", "team"], n, p=[0.6, 0.3, 0.1]),
        },
        score=rng.random(n),
    )


def columns_batch(
    columns: Mapping[str, np.ndarray],
    *,
    score: np.ndarray | None = None,
    predicted: np.ndarray | None = None,
    value: np.ndarray | None = None,
) -> Batch:
    """A :class:`Batch` straight from numpy columns (no per-event Python work).

    Float columns become numeric features (NaN = null), object/string columns text features
    (``None`` = null). Used by tests and the benchmark to build large batches quickly.
    """
    n = len(next(iter(columns.values()))) if columns else len(score if score is not None else [])
    feats: dict[str, FeatureColumn] = {}
    for k, v in columns.items():
        arr = np.asarray(v)
        if arr.dtype.kind in "fiu":
            num = arr.astype(np.float64)
            feats[k] = FeatureColumn(
                numeric=num,
                text=np.full(n, None, dtype=object),
                null=np.isnan(num),
                absent=np.zeros(n, dtype=bool),
            )
        else:
            text = arr.astype(object)
            feats[k] = FeatureColumn(
                numeric=np.full(n, np.nan),
                text=text,
                null=pd.isna(text),
                absent=np.zeros(n, dtype=bool),
            )
    return Batch(
        features=feats,
        segments={},
        score=np.full(n, np.nan) if score is None else np.asarray(score, dtype=np.float64),
        value=np.full(n, np.nan) if value is None else np.asarray(value, dtype=np.float64),
        predicted=np.full(n, None, dtype=object) if predicted is None else predicted,
        label=np.full(n, None, dtype=object),
        timestamp=np.zeros(n),
        model_version=np.full(n, None, dtype=object),
    )
