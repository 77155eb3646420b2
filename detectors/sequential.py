"""Sequential change detection against a known reference: a bank of one-sided CUSUMs (Page, 1954).

Where the reference is known (a feature's mean and standard deviation in the profile, or the
model's baseline error rate), a CUSUM on the standardised stream ``z`` detects a mean shift
with the smallest delay for the shift it is tuned to: ``S_t = max(0, S_{t-1} + z_t - k)``,
alarm when ``S_t > h``, then ``S`` restarts at 0. ``k`` is half the shift (in σ) it is tuned
to; ``h`` sets the false-alarm rate. One CUSUM is tuned to one shift size, so the default is a
bank, ``k = 0.125, 0.25, 0.5`` (tuned to 0.25, 0.5 and 1 σ), each run side by side (and per
direction).

The default ``h`` of each CUSUM follows from one number, ``arl0``: the in-control average run
length (samples between false alarms) of the whole detector. Siegmund's approximation gives a
one-sided CUSUM's in-control ARL as

    ARL0(k, h) ≈ (exp(θ b) - θ b - 1) / (θ k),   b = h + 1.166,

where ``θ > 0`` solves ``E[exp(θ (z - k))] = 1`` under the reference: ``θ = 2 k`` for normal
``z``; for 0/1 errors at baseline rate ``p`` it is found numerically (checked here against 20 M
simulated Bernoulli(0.1) samples: within 10 % for k = 0.125 and 0.25, 26 % low — on the
safe side — for k = 0.5). The false alarms of the ``m`` CUSUMs (k values × directions) add up
at most, so each is given ``ARL0 = m · arl0`` and the detector's in-control ARL is about
``arl0`` or more. The default ``arl0 = 5e6`` is the
smallest of 2, 5 and 10 million whose measured false-alarm rate (every CUSUM's alarm counted)
was no higher than that of river's ``ADWIN`` at its defaults on the same in-control streams:
ADWIN gave 10 false alarms in 20 M N(0, 1) samples (0.05 per 100 k) and 3 in 20 M
Bernoulli(0.1) samples (0.015 per 100 k); the default bank gave 9 in 40 M (0.0225 per 100 k,
two directions) and 3 in 40 M (0.0075 per 100 k, error_cusum, up). With ``arl0 = 2e6`` it gave
22 in 40 M N(0, 1) samples, more than ADWIN. For N(0, 1) and two directions the default gives
``h ≈ 53.8, 29.1, 15.4``. An explicit ``h`` overrides ``arl0``.

The recursion is evaluated without a Python loop per event: with ``X`` the cumulative sum of
``z - k`` (``X_0 = 0``), ``S_t = X_t - min(-S_0, min_{s<=t} X_s)`` (Lindley); a Python loop
runs only once per alarm.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from scipy.optimize import brentq

from .base import Detector, DetectorResult, register
from .batch import Batch
from .concept_drift import batch_errors

if TYPE_CHECKING:
    from .profile import ReferenceProfile

__all__ = [
    "DEFAULT_ARL0",
    "DEFAULT_K",
    "Cusum",
    "ErrorCusum",
    "bernoulli_theta",
    "cusum_path",
    "siegmund_arl0",
    "threshold_for_arl0",
]

_MAX_ALARMS = 20
DEFAULT_K = (0.125, 0.25, 0.5)  # tuned to shifts of 0.25, 0.5 and 1 sigma
DEFAULT_ARL0 = 5e6  # in-control run length of the whole bank (see the module docstring)
_RHO = 1.166  # Siegmund's overshoot correction (2 x 0.583) for normal increments


def siegmund_arl0(k: float, h: float, theta: float) -> float:
    """Siegmund's approximation of a one-sided CUSUM's in-control average run length.

    ``theta`` solves ``E[exp(theta (z - k))] = 1`` for the in-control ``z`` (``2 k`` when
    ``z`` is N(0, 1)).

    >>> round(siegmund_arl0(0.5, 4.0, 1.0))  # the textbook k = 0.5, h = 4: ARL0 ≈ 336
    338
    """
    b = theta * (h + _RHO)
    return (math.expm1(b) - b) / (theta * k)


def threshold_for_arl0(k: float, arl0: float, theta: float) -> float:
    """The ``h`` whose :func:`siegmund_arl0` is ``arl0`` (at least 0.1).

    >>> round(threshold_for_arl0(0.5, 338.0, 1.0), 2)
    4.0
    """
    hi = 1.0
    while siegmund_arl0(k, hi, theta) < arl0:
        hi *= 2.0
    return max(0.1, float(brentq(lambda h: siegmund_arl0(k, h, theta) - arl0, -_RHO + 1e-9, hi)))


def bernoulli_theta(k: float, p: float, std: float) -> float:
    """``theta > 0`` with ``E[exp(theta (z - k))] = 1`` for ``z = (e - p) / std``, e ~ Bernoulli(p).

    >>> round(bernoulli_theta(0.25, 0.1, 0.3), 4)
    0.3642
    """
    up, down = (1.0 - p) / std - k, -p / std - k

    def excess(t: float) -> float:
        return p * math.exp(t * up) + (1.0 - p) * math.exp(t * down) - 1.0

    hi = 1.0
    while excess(hi) <= 0:
        hi *= 2.0
    # excess is convex, 0 at t = 0 and negative just above it (E[z - k] = -k < 0).
    return float(brentq(excess, 1e-12 * hi, hi))


def cusum_path(x: np.ndarray, s0: float, k: float, h: float) -> tuple[list[int], float, float]:
    """Run a one-sided CUSUM over ``x`` (already standardised) from the statistic ``s0``.

    Returns the indices (into ``x``) where ``S`` exceeded ``h`` (by more than rounding;
    restarting at 0 after each),
    the final statistic and the largest value it reached.

    >>> x = np.r_[np.zeros(50), np.full(10, 2.0)]
    >>> cusum_path(x, 0.0, 0.5, 5.0)
    ([53, 57], 3.0, 6.0)
    """
    alarms: list[int] = []
    start, s, s_max = 0, float(s0), float(s0)
    # 0/1 errors put S on a lattice where S == h exactly happens; the cumulative sums carry
    # rounding (~1e-12) the one-step recursion does not, so "equal within rounding" is no alarm.
    tol = 1e-9 * max(1.0, abs(h))
    # A step above h + k alarms by itself and one below -(h + k) empties S, however large they
    # are: capped beyond that, alarms and S are unchanged (only the largest S reported is
    # capped), and valid numbers near the float limit no longer overflow the cumulative sums
    # to inf (S to NaN, for good) or drown the later steps in their rounding.
    cap = 2.0 * (abs(h) + abs(k)) + 1.0
    x = np.clip(x, -cap, cap)
    while start < x.size:
        cum = np.cumsum(x[start:] - k)
        path = cum - np.minimum(np.minimum.accumulate(cum), -s)
        over = np.flatnonzero(path > h + tol)
        if over.size == 0:
            s_max = max(s_max, float(path.max()))
            s = float(path[-1])
            break
        s_max = max(s_max, float(path[: over[0] + 1].max()))
        alarms.append(start + int(over[0]))
        start += int(over[0]) + 1
        s = 0.0
    return alarms, s, s_max


def _as_list(v: float | Sequence[float], name: str, where: str) -> list[float]:
    out = [float(v)] if isinstance(v, int | float) else [float(a) for a in v]
    if not out or any(not math.isfinite(a) or a < 0 for a in out):
        raise ValueError(f"{where}: {name} must be a non-negative number or a list of them.")
    return out


class _CusumBase(Detector):
    """Shared machinery: a bank of one-sided CUSUMs on ``(x - mean) / std``."""

    state_version: ClassVar[int] = 1
    _common_schema: ClassVar[dict[str, Any]] = {
        "k": {
            "oneOf": [
                {"type": "number", "minimum": 0},
                {"type": "array", "items": {"type": "number", "minimum": 0}, "minItems": 1},
            ],
            "default": list(DEFAULT_K),
        },
        "h": {
            "oneOf": [
                {"type": "number", "exclusiveMinimum": 0},
                {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0}},
            ],
        },
        "arl0": {"type": "number", "exclusiveMinimum": 1, "default": DEFAULT_ARL0},
        "direction": {"enum": ["up", "down", "both"]},
        "mean": {"type": "number"},
        "std": {"type": "number", "exclusiveMinimum": 0},
    }

    def _setup(
        self,
        k: float | Sequence[float],
        h: float | Sequence[float] | None,
        direction: str,
        mean: float | None,
        std: float | None,
        arl0: float,
    ) -> None:
        where = f"{self.kind} detector {self.name!r}"
        ks = _as_list(k, "k", where)
        if direction not in ("up", "down", "both"):
            raise ValueError(f"{where}: direction must be 'up', 'down' or 'both'.")
        if mean is None or std is None or not std > 0:
            raise ValueError(
                f"{where}: no reference mean and positive std (give 'mean' and 'std', or a "
                "profile that has them)."
            )
        self.mean, self.std = float(mean), float(std)
        self._signs = {"up": [1.0], "down": [-1.0], "both": [1.0, -1.0]}[direction]
        if h is None:
            if not (math.isfinite(arl0) and arl0 > 1) or any(a <= 0 for a in ks):
                raise ValueError(
                    f"{where}: without an explicit h, arl0 must be a number above 1 and every "
                    "k positive."
                )
            # Union bound: the m CUSUMs' false-alarm rates add up at most.
            per = float(arl0) * len(ks) * len(self._signs)
            hs = [round(threshold_for_arl0(a, per, self._theta(a)), 3) for a in ks]
        else:
            hs = _as_list(h, "h", where)
        if len(hs) == 1:
            hs = hs * len(ks)
        if len(hs) != len(ks) or any(a <= 0 for a in hs):
            raise ValueError(f"{where}: h must be positive and give one value per k.")
        self.ks, self.hs, self.direction = ks, hs, direction
        self._s = [[0.0] * len(ks) for _ in self._signs]  # per sign, per k
        self._seen = 0
        self.reset()

    def reset(self) -> None:
        """Start a new window; the CUSUM statistics carry on across windows."""
        self._alarms: list[dict[str, Any]] = []
        self._alarm_count = 0
        self._win_n = 0
        self._win_max = [0.0] * len(self.ks)

    def _values(self, batch: Batch) -> np.ndarray:
        raise NotImplementedError

    def _theta(self, k: float) -> float:
        """Siegmund's ``theta`` for allowance ``k`` under the reference (normal ``z``: 2 k)."""
        return 2.0 * k

    def update(self, batch: Batch) -> None:
        """Run every CUSUM of the bank over the batch's standardised values."""
        x = self._values(batch)
        x = x[np.isfinite(x)]
        if x.size == 0:
            return
        with np.errstate(over="ignore"):
            z = (x - self.mean) / self.std  # ±inf past the float limit: cusum_path caps it
        for si, sign in enumerate(self._signs):
            for ki, (k, h) in enumerate(zip(self.ks, self.hs, strict=True)):
                alarms, s_end, s_max = cusum_path(sign * z, self._s[si][ki], k, h)
                self._s[si][ki] = s_end
                self._win_max[ki] = max(self._win_max[ki], s_max)
                self._alarm_count += len(alarms)
                for a in alarms:
                    self._alarms.append(
                        {
                            "index": self._seen + a,
                            "direction": "up" if sign > 0 else "down",
                            "k": k,
                            "h": h,
                        }
                    )
        # Keep the earliest alarms: the first one dates the change; the rest are counted.
        self._alarms = sorted(self._alarms, key=lambda a: a["index"])[:_MAX_ALARMS]
        self._seen += int(x.size)
        self._win_n += int(x.size)

    def result(self) -> DetectorResult:
        """Triggered when any CUSUM of the bank raised an alarm during the window."""
        ratio = [m / h for m, h in zip(self._win_max, self.hs, strict=True)]
        best = int(np.argmax(ratio))
        return DetectorResult(
            name=self.name,
            kind=self.kind,
            triggered=bool(self._alarms),
            statistic=self._win_max[best],
            threshold=self.hs[best],
            p_value=None,
            n=self._win_n,
            evidence={
                "alarms": [dict(a) for a in self._alarms],
                "alarm_count": self._alarm_count,
                "top": [dict(a) for a in self._alarms[:5]],
                "reference": {"mean": self.mean, "std": self.std},
                "k": self.ks,
                "h": self.hs,
                "events_seen": self._seen,
                "statistic_now": self._s,
            },
        )

    def _state(self) -> dict[str, Any]:
        return {
            "k": self.ks,
            "h": self.hs,
            "direction": self.direction,
            "s": self._s,
            "seen": self._seen,
            "window": {
                "n": self._win_n,
                "max": self._win_max,
                "alarms": self._alarms,
                "alarm_count": self._alarm_count,
            },
        }

    def _load(self, state: Mapping[str, Any]) -> None:
        if (state.get("k"), state.get("h"), state.get("direction")) != (
            self.ks,
            self.hs,
            self.direction,
        ):
            raise ValueError(
                f"{self.kind} detector {self.name!r}: the saved state is for other k/h/direction "
                "settings than the policy's."
            )
        self._s = [[float(v) for v in row] for row in state["s"]]
        self._seen = int(state["seen"])
        w = state["window"]
        self._win_n = int(w["n"])
        self._win_max = [float(v) for v in w["max"]]
        self._alarms = [dict(a) for a in w["alarms"]]
        self._alarm_count = int(w["alarm_count"])


@register
class Cusum(_CusumBase):
    """CUSUM on a numeric feature, or on the prediction score/value, against the profile.

    Parameters
    ----------
    name, profile
        As for every detector; the reference ``mean``/``std`` come from
        ``profile.features[feature]`` (or ``profile.prediction`` for ``feature="prediction"``)
        unless given explicitly.
    feature
        A numeric feature name, or ``"prediction"`` (the score, else the regression value).
    k
        Allowance in σ units (half the shift a CUSUM is tuned to), or a list (a bank); default
        ``[0.125, 0.25, 0.5]``.
    h
        Decision interval in σ units, one for all ``k`` or one per ``k``; default: derived
        from ``arl0`` (the module docstring), ≈ ``[53.8, 29.1, 15.4]`` for the default bank.
    direction
        ``up``, ``down`` or ``both`` (two one-sided CUSUMs per ``k``; the default).
    mean, std
        Explicit reference, overriding the profile.
    arl0
        In-control average run length of the whole detector (all ``k`` and directions), in
        samples, from which the default ``h`` follows; default ``5e6``.

    Examples
    --------
    >>> import numpy as np
    >>> from driftwarden.detectors.batch import Batch
    >>> rng = np.random.default_rng(1)
    >>> x = np.r_[rng.normal(0, 1, 20000), rng.normal(0.5, 1, 2000)]
    >>> det = Cusum("age", feature="x", mean=0.0, std=1.0)
    >>> det.update(Batch.from_records([{"features": {"x": float(v)}} for v in x]))
    >>> [a["index"] for a in det.result().evidence["alarms"]][:1]
    [20077]
    """

    kind: ClassVar[str] = "cusum"
    stream = "predictions"
    params_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "properties": {
            "feature": {"type": "string", "minLength": 1},
            **_CusumBase._common_schema,
        },
        "required": ["feature"],
        "additionalProperties": False,
    }

    def __init__(
        self,
        name: str,
        profile: ReferenceProfile | None = None,
        *,
        feature: str,
        k: float | Sequence[float] = DEFAULT_K,
        h: float | Sequence[float] | None = None,
        direction: str = "both",
        mean: float | None = None,
        std: float | None = None,
        arl0: float = DEFAULT_ARL0,
    ) -> None:
        super().__init__(name, profile)
        self.feature = feature
        ref = None
        if profile is not None:
            feats = getattr(profile, "features", {}) or {}
            ref = (
                getattr(profile, "prediction", None)
                if feature == "prediction"
                else feats.get(feature)
            )
        self._setup(
            k,
            h,
            direction,
            mean if mean is not None else getattr(ref, "mean", None),
            std if std is not None else getattr(ref, "std", None),
            arl0,
        )

    def _values(self, batch: Batch) -> np.ndarray:
        if self.feature == "prediction":
            return np.where(np.isfinite(batch.score), batch.score, batch.value)
        col = batch.features.get(self.feature)
        return np.empty(0) if col is None else col.numeric

    @classmethod
    def _unit_test_params(cls) -> dict[str, Any]:
        """Parameters for the shared detector contract suite."""

        def batch(seed: int) -> Batch:
            rng = np.random.default_rng(seed)
            x = np.r_[rng.normal(0, 1, 1000), rng.normal(1.5, 1, 1000)]
            return Batch.from_records([{"features": {"x": float(v)}} for v in x])

        return {
            "kwargs": {"feature": "x", "mean": 0.0, "std": 1.0, "k": 0.5, "h": 8.0},
            "profile": None,
            "batch": batch,
        }


@register
class ErrorCusum(_CusumBase):
    """CUSUM on the labeled error stream against the profile's baseline error.

    Classification: errors are 0/1 with reference mean ``p = 1 - accuracy`` and std
    ``sqrt(p (1 - p))``. Regression: absolute errors with reference mean MAE and std
    ``sqrt(RMSE² - MAE²)``. ``mean``/``std`` override the profile. Defaults watch a rise only,
    with the bank ``k = [0.125, 0.25, 0.5]`` and ``h`` derived from ``arl0`` (``5e6``): for 0/1
    errors Siegmund's ``theta`` is that of the two-point standardised error (``h ≈ [60.7,
    37.6, 24.0]`` at a baseline error of 0.1, higher than for a normal ``z`` because the
    errors are skewed); for regression, that of a normal ``z``.

    Examples
    --------
    >>> import numpy as np
    >>> from driftwarden.detectors.batch import Batch
    >>> rng = np.random.default_rng(2)
    >>> wrong = np.r_[rng.random(5000) < 0.1, rng.random(3000) < 0.2]
    >>> det = ErrorCusum("errors", mean=0.1, std=0.3)
    >>> det.update(Batch.from_records(
    ...     [{"prediction": {"label": 1}, "label": 0 if w else 1} for w in wrong]))
    >>> [a["index"] for a in det.result().evidence["alarms"]][:1]
    [5209]
    """

    kind: ClassVar[str] = "error_cusum"
    stream = "labeled"
    params_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "properties": dict(_CusumBase._common_schema),
        "additionalProperties": False,
    }

    def __init__(
        self,
        name: str,
        profile: ReferenceProfile | None = None,
        *,
        k: float | Sequence[float] = DEFAULT_K,
        h: float | Sequence[float] | None = None,
        direction: str = "up",
        mean: float | None = None,
        std: float | None = None,
        arl0: float = DEFAULT_ARL0,
    ) -> None:
        super().__init__(name, profile)
        self._task = getattr(profile, "task", None) if profile is not None else None
        overall = ((getattr(profile, "metrics", None) or {}).get("overall")) or {}
        ref_mean = ref_std = None
        if self._task == "regression" and overall.get("mae") is not None:
            mae, rmse = float(overall["mae"]), float(overall.get("rmse") or 0.0)
            ref_mean, ref_std = mae, math.sqrt(max(rmse * rmse - mae * mae, 0.0))
        elif overall.get("accuracy") is not None:
            p = 1.0 - float(overall["accuracy"])
            ref_mean, ref_std = p, math.sqrt(p * (1.0 - p))
        self._setup(
            k,
            h,
            direction,
            mean if mean is not None else ref_mean,
            std if std is not None else ref_std,
            arl0,
        )

    def _values(self, batch: Batch) -> np.ndarray:
        return batch_errors(batch, self._task)[0]

    def _theta(self, k: float) -> float:
        """0/1 errors (classification) are far from normal: theta of the two-point ``z``."""
        if self._task != "regression" and 0.0 < self.mean < 1.0:
            return bernoulli_theta(k, self.mean, self.std)
        return 2.0 * k

    @classmethod
    def _unit_test_params(cls) -> dict[str, Any]:
        """Parameters for the shared detector contract suite."""

        def batch(seed: int) -> Batch:
            rng = np.random.default_rng(seed)
            wrong = np.r_[rng.random(1500) < 0.1, rng.random(1500) < 0.3]
            return Batch.from_records(
                [{"prediction": {"label": 1}, "label": 0 if w else 1} for w in wrong]
            )

        return {
            "kwargs": {"mean": 0.1, "std": 0.3, "k": 0.5, "h": 8.0},
            "profile": None,
            "batch": batch,
        }
