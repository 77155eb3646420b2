"""Data quality: is the input broken, judged against the reference profile?

Checked per feature and window: the feature is missing from events (``absent``), values have
the wrong type (``type``), the null rate rose (``null_rate``), numbers fall outside the
reference range (``out_of_range``), categories never seen in the reference (``new_category``),
one value for the whole window where the reference had spread (``constant``), and a
**default-value spike** (``value_spike``): one value's share far above its reference share —
0, -1, 999 or "" standing in for missing data, as when a broken pipeline fills nulls with 0.
Zero is a valid number, so that case reads as *broken input* here rather than as a population
shift for drift detection to retrain on.

Every rate check is a one-sided binomial test of "the true rate exceeds the allowed rate", so a
window of 20 events with one null does not page. The state is counts plus a small
Misra-Gries heavy-hitter summary per feature: mergeable, bounded and JSON-ready.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from scipy import stats as sps

from .base import Detector, DetectorResult, register
from .batch import Batch, FeatureColumn
from .feature_drift import check_params, columns_batch, unit_test_profile
from .profile import MAX_VALUE_SHARES, OTHER, SENTINELS, FeatureProfile, ReferenceProfile
from .stats import categorical_keys, is_numeric_like, numeric_keys

__all__ = ["DataQuality"]

_SKETCH = 32  # heavy hitters kept per feature: a value above 1/33 of the window is never lost
_MAX_PROBLEMS = 50
_TOP = 10

_COUNTERS = ("rows", "absent", "null", "wrong_type", "values", "out_of_range", "new_category")


def _mg_reduce(counts: dict[str, int], k: int) -> dict[str, int]:
    """Misra-Gries reduction to ``k`` entries; counts become lower bounds (error <= n/(k+1))."""
    if len(counts) <= k:
        return counts
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    cut = ordered[k][1]
    return {key: c - cut for key, c in ordered[:k] if c - cut > 0}


def _merge_sketch(sketch: dict[str, int], keys: Sequence[str], counts: Sequence[int]) -> None:
    batch = _mg_reduce({str(k): int(c) for k, c in zip(keys, counts, strict=True)}, _SKETCH)
    for key, c in batch.items():
        sketch[key] = sketch.get(key, 0) + c
    reduced = dict(_mg_reduce(sketch, _SKETCH))
    sketch.clear()
    sketch.update(reduced)


def _exceeds(count: int, n: int, allowed: float, alpha: float) -> tuple[bool, float]:
    """One-sided binomial test that a rate is above ``allowed``; returns (significant, p)."""
    if n <= 0 or count <= 0:
        return False, 1.0
    if count / n <= allowed:
        return False, 1.0
    if allowed <= 0.0:
        return True, 0.0
    if allowed >= 1.0:
        return False, 1.0
    p = float(sps.binom.sf(count - 1, n, allowed))
    return p < alpha, p


@dataclass
class _FeatureCheck:
    """The per-feature reference facts the checks need, derived once from the profile."""

    fp: FeatureProfile
    low: float | None
    high: float | None
    #: the reference's categories (categorical features; empty for numeric ones)
    category_set: frozenset[str]
    numbers_are_categories: bool
    other_share: float
    known: list[str]
    known_set: frozenset[str]
    known_numbers: np.ndarray

    @classmethod
    def from_profile(cls, fp: FeatureProfile, margin: float) -> _FeatureCheck:
        low = high = None
        if fp.type == "numeric" and fp.min is not None and fp.max is not None:
            # Widen the reference range a little: a validation split rarely holds the extremes.
            # By its width, not by the values' size, which would switch the check off for values
            # far from 0 (kelvins); a constant reference has no width: its value's size then.
            width = fp.max - fp.min
            pad = margin * (width if width > 0 else max(abs(fp.max), 1e-12))
            low, high = fp.min - pad, fp.max + pad
        cats = [c for c in fp.categories if c != OTHER]
        # Values counted exactly (the reference's listed values and the usual stand-ins for
        # "missing"); any other value is caught by the bounded heavy-hitter summary.
        known = list(dict.fromkeys([*fp.value_shares, *SENTINELS]))
        if fp.type == "numeric":
            known = [k for k in known if _as_number(k) is not None]
        return cls(
            fp=fp,
            low=low,
            high=high,
            category_set=frozenset(cats) if fp.type == "categorical" else frozenset(),
            numbers_are_categories=is_numeric_like(cats),
            other_share=fp.categories.get(OTHER, 0.0),
            known=known,
            known_set=frozenset(known),
            known_numbers=np.array(
                [_as_number(k) for k in known] if fp.type == "numeric" else [], dtype=np.float64
            ),
        )

    def ref_share(self, key: str) -> float:
        """Reference share of one exact value among non-null values (0 if not listed)."""
        shares = self.fp.value_shares
        if key in shares:
            return shares[key]
        if key in self.fp.categories:
            return self.fp.categories[key]
        # value_shares lists the top values only: an unlisted value is at most the smallest.
        if len(shares) >= MAX_VALUE_SHARES:
            return sorted(shares.values(), reverse=True)[MAX_VALUE_SHARES - 1]
        return 0.0


def _as_number(key: str) -> float | None:
    try:
        return float(key)
    except ValueError:
        return None


def _empty_acc(known: Sequence[str]) -> dict[str, Any]:
    acc: dict[str, Any] = dict.fromkeys(_COUNTERS, 0)
    acc.update({"lo": None, "hi": None, "known": dict.fromkeys(known, 0), "sketch": {}})
    return acc


@register
class DataQuality(Detector):
    """Broken-input checks against the reference profile (see the module docstring).

    Parameters
    ----------
    name
        The detector's name in the policy.
    profile
        The reference profile (required).
    features
        ``"all"`` (default) or a list of profile features.
    max_null_rate_increase
        Allowed rise of the null rate over the reference's (default 0.05).
    max_out_of_range_rate
        Allowed share of numbers outside the reference [min, max] widened by ``range_margin``
        times its width (times the value's size when the reference is constant; defaults 0.01
        and 0.05).
    max_new_category_rate
        Allowed share of categories the reference never saw (default 0.01).
    max_absent_rate, max_type_error_rate
        Allowed shares of events lacking the feature / giving it the wrong type (0.01 each).
    max_value_share_increase, spike_factor
        A value spikes when its share exceeds its reference share by more than
        ``max_value_share_increase`` (default 0.1) *and* is ``spike_factor`` (default 5) times
        it, so an ordinary mix shift (40 % → 52 %) is left to drift detection.
    alpha
        Level of each one-sided binomial test (default 0.01).
    min_samples
        Windows with fewer events do not trigger (default 50).

    Examples
    --------
    A pipeline starts filling the nulls of ``days`` with 0:

    >>> import numpy as np, pandas as pd
    >>> from driftwarden.detectors.profile import build_profile
    >>> rng = np.random.default_rng(3)
    >>> days = rng.exponential(12, 5000).round() + 1
    >>> days[rng.random(5000) < 0.01] = 0
    >>> prof = build_profile(pd.DataFrame({"days": days}), "churn", created_at="-")
    >>> det = DataQuality("quality", prof)
    >>> win = rng.exponential(12, 1000).round() + 1
    >>> win[rng.random(1000) < 0.38] = 0
    >>> det.update(Batch.from_records([{"features": {"days": float(v)}} for v in win]))
    >>> r = det.result()
    >>> r.triggered, [(p["feature"], p["check"], p["value"]) for p in r.evidence["problems"]]
    (True, [('days', 'value_spike', '0')])
    """

    kind: ClassVar[str] = "data_quality"
    stream = "predictions"
    state_version: ClassVar[int] = 1
    params_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "features": {
                "oneOf": [
                    {"const": "all"},
                    {"type": "array", "items": {"type": "string"}, "minItems": 1},
                ]
            },
            "max_null_rate_increase": {"type": "number", "minimum": 0, "maximum": 1},
            "max_out_of_range_rate": {"type": "number", "minimum": 0, "maximum": 1},
            "range_margin": {"type": "number", "minimum": 0},
            "max_new_category_rate": {"type": "number", "minimum": 0, "maximum": 1},
            "max_absent_rate": {"type": "number", "minimum": 0, "maximum": 1},
            "max_type_error_rate": {"type": "number", "minimum": 0, "maximum": 1},
            "max_value_share_increase": {"type": "number", "minimum": 0, "maximum": 1},
            "spike_factor": {"type": "number", "minimum": 1},
            "alpha": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
            "min_samples": {"type": "integer", "minimum": 1},
        },
    }

    def __init__(
        self,
        name: str,
        profile: ReferenceProfile | None = None,
        *,
        features: str | Sequence[str] = "all",
        max_null_rate_increase: float = 0.05,
        max_out_of_range_rate: float = 0.01,
        range_margin: float = 0.05,
        max_new_category_rate: float = 0.01,
        max_absent_rate: float = 0.01,
        max_type_error_rate: float = 0.01,
        max_value_share_increase: float = 0.1,
        spike_factor: float = 5.0,
        alpha: float = 0.01,
        min_samples: int = 50,
    ) -> None:
        super().__init__(name, profile)
        self.params: dict[str, Any] = {
            "features": features if isinstance(features, str) else list(features),
            "max_null_rate_increase": max_null_rate_increase,
            "max_out_of_range_rate": max_out_of_range_rate,
            "range_margin": range_margin,
            "max_new_category_rate": max_new_category_rate,
            "max_absent_rate": max_absent_rate,
            "max_type_error_rate": max_type_error_rate,
            "max_value_share_increase": max_value_share_increase,
            "spike_factor": spike_factor,
            "alpha": alpha,
            "min_samples": min_samples,
        }
        check_params(self.kind, name, self.params_schema, self.params)
        if profile is None:
            raise ValueError(f"data_quality detector {name!r} needs a reference profile.")
        chosen = list(profile.features) if features == "all" else list(features)
        unknown = [f for f in chosen if f not in profile.features]
        if unknown:
            raise ValueError(
                f"data_quality detector {name!r} names feature(s) {', '.join(unknown)} that "
                f"the reference profile of {profile.model!r} does not have."
            )
        self.features = chosen
        self._checks = {
            f: _FeatureCheck.from_profile(profile.features[f], range_margin) for f in chosen
        }
        self._accs = {f: _empty_acc(self._checks[f].known) for f in chosen}

    # -- update ---------------------------------------------------------------------------

    def update(self, batch: Batch) -> None:
        """Fold the batch's counts into the window (vectorised per feature)."""
        if batch.n == 0:
            return
        for f in self.features:
            acc = self._accs[f]
            acc["rows"] += batch.n
            col = batch.features.get(f)
            if col is None:
                acc["absent"] += batch.n
                continue
            self._update_feature(self._checks[f], acc, col)

    def _update_feature(self, chk: _FeatureCheck, acc: dict[str, Any], col: FeatureColumn) -> None:
        acc["absent"] += int(col.absent.sum())
        acc["null"] += int(col.null.sum())
        lo_key: float | str
        hi_key: float | str
        if chk.fp.type == "numeric":
            has_num = ~np.isnan(col.numeric)
            acc["wrong_type"] += int(pd.notna(col.text).sum())
            x = col.numeric[has_num]
            if x.size == 0:
                return
            acc["values"] += int(x.size)
            if chk.low is not None and chk.high is not None:
                acc["out_of_range"] += int(np.sum((x < chk.low) | (x > chk.high)))
            lo_key, hi_key = float(x.min()), float(x.max())
            uniq, counts = np.unique(x, return_counts=True)
            kn = chk.known_numbers
            pos = np.clip(np.searchsorted(uniq, kn), 0, max(uniq.size - 1, 0))
            hit = uniq[pos] == kn
            for key, c in zip(chk.known, np.where(hit, counts[pos], 0).tolist(), strict=True):
                acc["known"][key] += c
            counts = counts.copy()
            counts[pos[hit]] = 0  # known values are counted exactly, keep them out of the sketch
            top = np.argsort(-counts, kind="stable")[: _SKETCH + 1]
            top = top[counts[top] > 0]
            # With more than _SKETCH values, all as frequent as the (_SKETCH+1)-th (continuous
            # values: each seen once), the batch's Misra-Gries summary is empty and the merge
            # changes nothing: the values' keys are not made.
            if top.size <= _SKETCH or counts[top[0]] != counts[top[_SKETCH]]:
                _merge_sketch(acc["sketch"], list(numeric_keys(uniq[top])), counts[top].tolist())
        else:
            keys_arr, wrong = categorical_keys(col.numeric, col.text, chk.numbers_are_categories)
            acc["wrong_type"] += wrong
            if keys_arr.size == 0:
                return
            acc["values"] += int(keys_arr.size)
            # Counted per distinct key with a Counter (keys are strings; a batch holds few
            # distinct ones): 10x less than pandas' value_counts / get_indexer / isin here.
            per_key: Counter[str] = Counter(keys_arr.tolist())
            cats = chk.category_set
            acc["new_category"] += sum(c for k, c in per_key.items() if k not in cats)
            known = acc["known"]
            for key in chk.known:
                known[key] += per_key.get(key, 0)
            # Every other key goes to the merge, most frequent first (as value_counts listed
            # them: the sketch's key order). Its Misra-Gries step keeps what exceeds the
            # (_SKETCH+1)-th largest count: the same whether it sees all of them or only the
            # top _SKETCH+1 (whichever of equal counts those are).
            rest = sorted(
                ((k, c) for k, c in per_key.items() if k not in chk.known_set),
                key=itemgetter(1),
                reverse=True,
            )
            if rest:
                _merge_sketch(acc["sketch"], [k for k, _ in rest], [c for _, c in rest])
            # Only equality matters for "constant": the smallest and largest key suffice.
            lo_key, hi_key = str(min(per_key)), str(max(per_key))
        acc["lo"] = lo_key if acc["lo"] is None else min(acc["lo"], lo_key)
        acc["hi"] = hi_key if acc["hi"] is None else max(acc["hi"], hi_key)

    # -- verdict --------------------------------------------------------------------------

    def _problems(self, f: str) -> list[dict[str, Any]]:
        chk, acc, p = self._checks[f], self._accs[f], self.params
        alpha = p["alpha"]
        out: list[dict[str, Any]] = []

        def add(check: str, observed: float, expected: float, **extra: Any) -> None:
            out.append(
                {
                    "feature": f,
                    "check": check,
                    "observed": round(float(observed), 6),
                    "expected": round(float(expected), 6),
                    **extra,
                }
            )

        rows = acc["rows"]
        if _exceeds(acc["absent"], rows, p["max_absent_rate"], alpha)[0]:
            add("absent", acc["absent"] / rows, 0.0)
        present = rows - acc["absent"]
        ref_null = chk.fp.null_rate
        allowed_null = min(1.0, ref_null + p["max_null_rate_increase"])
        if _exceeds(acc["null"], present, allowed_null, alpha)[0]:
            add("null_rate", acc["null"] / present, ref_null)
        typed = acc["values"] + acc["wrong_type"]
        if _exceeds(acc["wrong_type"], typed, p["max_type_error_rate"], alpha)[0]:
            add("type", acc["wrong_type"] / typed, 0.0, expected_type=chk.fp.type)
        n = acc["values"]
        if n == 0:
            return out
        if chk.fp.type == "numeric":
            if _exceeds(acc["out_of_range"], n, p["max_out_of_range_rate"], alpha)[0]:
                add("out_of_range", acc["out_of_range"] / n, 0.0, range=[chk.fp.min, chk.fp.max])
        else:
            allowed_new = min(1.0, chk.other_share + p["max_new_category_rate"])
            if _exceeds(acc["new_category"], n, allowed_new, alpha)[0]:
                add("new_category", acc["new_category"] / n, chk.other_share)
        counts = {**acc["sketch"], **{k: c for k, c in acc["known"].items() if c}}
        constant = n >= p["min_samples"] and acc["lo"] == acc["hi"]
        if constant:
            key = max(counts, key=lambda k: counts[k]) if counts else None
            share = chk.ref_share(str(key)) if key is not None else 0.0
            # Chance of n draws all equal to that value under the reference; must be tiny.
            if share < 1.0 and n * np.log(max(share, 1e-300)) < np.log(alpha):
                add("constant", 1.0, share, value=key)
        for key, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
            share = count / n
            ref = chk.ref_share(key)
            if share - ref <= p["max_value_share_increase"] or share < p["spike_factor"] * ref:
                continue
            allowed = min(1.0, ref + p["max_value_share_increase"])
            if _exceeds(count, n, allowed, alpha)[0]:
                add("value_spike", share, ref, value=key)
        return out

    def result(self) -> DetectorResult:
        """Every failed check of the current window; triggered if there is any."""
        rows = max((a["rows"] for a in self._accs.values()), default=0)
        evidence: dict[str, Any] = {"problems": [], "top": [], "features_checked": 0}
        if rows < self.params["min_samples"]:
            evidence["note"] = f"{rows} events, fewer than min_samples={self.params['min_samples']}"
            return DetectorResult(
                self.name, self.kind, False, 0.0, 0.0, None, rows, evidence=evidence
            )
        problems = [pr for f in self.features for pr in self._problems(f)]
        problems.sort(key=lambda pr: -(pr["observed"] - pr["expected"]))
        evidence["features_checked"] = len(self.features)
        evidence["problems"] = problems[:_MAX_PROBLEMS]
        seen: dict[str, None] = {}
        for pr in problems:
            seen.setdefault(pr["feature"], None)
        evidence["top"] = [
            {"feature": f, "checks": [pr["check"] for pr in problems if pr["feature"] == f]}
            for f in list(seen)[:_TOP]
        ]
        return DetectorResult(
            name=self.name,
            kind=self.kind,
            triggered=bool(problems),
            statistic=float(len(problems)),
            threshold=0.0,
            p_value=None,
            n=rows,
            evidence=evidence,
        )

    def reset(self) -> None:
        """Start a new window."""
        self._accs = {f: _empty_acc(self._checks[f].known) for f in self.features}

    def _state(self) -> dict[str, Any]:
        return {
            f: {**a, "known": dict(a["known"]), "sketch": dict(a["sketch"])}
            for f, a in self._accs.items()
        }

    def _load(self, state: Mapping[str, Any]) -> None:
        if set(state) != set(self.features):
            raise ValueError(
                f"saved state of detector {self.name!r} covers {sorted(state)} but it checks "
                f"{sorted(self.features)}."
            )
        accs = {}
        for f in self.features:
            s = state[f]
            acc = _empty_acc(self._checks[f].known)
            for k in _COUNTERS:
                acc[k] = int(s[k])
            acc["lo"], acc["hi"] = s.get("lo"), s.get("hi")
            if set(s["known"]) != set(acc["known"]):
                raise ValueError(
                    f"saved state of detector {self.name!r} tracks other values of {f!r} than "
                    f"its reference profile lists."
                )
            acc["known"] = {str(k): int(v) for k, v in s["known"].items()}
            acc["sketch"] = {str(k): int(v) for k, v in s["sketch"].items()}
            accs[f] = acc
        self._accs = accs

    def __repr__(self) -> str:
        return f"DataQuality(name={self.name!r}, features={len(self.features)})"

    @classmethod
    def _unit_test_params(cls) -> dict[str, Any]:
        """Parameters for the shared detector contract suite."""

        def batch(seed: int) -> Batch:
            rng = np.random.default_rng(seed)
            n = 300
            days = rng.exponential(12, n).round()
            if seed % 2:
                days[rng.random(n) < 0.4] = 0.0
            return columns_batch(
                {
                    "x": rng.normal(0, 1, n),
                    "days": days,
                    "plan": rng.choice(["free", "pro", "team"], n, p=[0.6, 0.3, 0.1]),
                },
                score=rng.random(n),
            )

        return {"kwargs": {}, "profile": unit_test_profile(), "batch": batch}
