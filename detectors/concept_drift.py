"""Concept drift: a river change detector on the labeled error stream.

A model's inputs can look exactly like its training data while the relation between inputs and
labels has moved on; the only place that shows is the error stream. This detector turns each
labeled event into an error (classification: 1 when the predicted class differs from the label,
else 0; regression: the absolute error, divided by the reference MAE when the profile has one)
and feeds it, in order, to one of river's streaming change detectors.
"""

from __future__ import annotations

import base64
import math
import pickle
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from river import drift
from river.drift import binary

from .base import Detector, DetectorResult, register
from .batch import Batch
from .stats import ERROR_CAP, abs_errors, object_keys

if TYPE_CHECKING:
    from .profile import ReferenceProfile

__all__ = ["ConceptDrift", "METHODS", "batch_errors", "label_keys", "present"]

# method name -> (river class, accepts only 0/1 input, defaults we set on top of river's)
METHODS: Mapping[str, tuple[Callable[..., Any], bool, Mapping[str, Any]]] = {
    "adwin": (drift.ADWIN, False, {}),
    "page_hinkley": (drift.PageHinkley, False, {}),
    # KSWIN samples with random.Random(seed); seed=None would make the detector impure.
    "kswin": (drift.KSWIN, False, {"seed": 0}),
    "ddm": (binary.DDM, True, {}),
    "hddm_a": (binary.HDDMA, True, {}),
    "hddm_w": (binary.HDDMW, True, {}),
}
# FHDDM is left out on purpose: in river 0.26.1 it fires on a *fall* of its input, which on an
# error stream means the model got better. EDDM is left out for lack of a use case here.

_MAX_CHANGES = 20  # changes kept per window in evidence (a flapping stream must stay bounded)
_TOP = 5


def label_keys(values: np.ndarray | list[Any]) -> np.ndarray:
    """Class labels as comparable strings (object array; ``None`` where there is no label).

    Producers may write the same class as ``1`` or ``1.0``; comparing raw Python objects
    would be fragile. Keys are the profile's :func:`~driftwarden.detectors.stats.value_key`
    (integral numbers lose their ``.0``, bools become ``"true"``/``"false"``), so they match
    the profile's ``positive_label`` and the keys its baseline metrics were computed on.

    Missing labels (``None``, NaN, ±inf) are ``None``. Vectorised
    (:func:`~driftwarden.detectors.stats.object_keys`): no Python per event.

    >>> label_keys([1, 1.0, True, "churned", None, float("nan"), float("inf")]).tolist()
    ['1', '1', 'true', 'churned', None, None, None]
    """
    return object_keys(values, finite=True)


def present(values: np.ndarray) -> np.ndarray:
    """Boolean mask of the entries of an object array that are not ``None``."""
    return np.fromiter((v is not None for v in values), dtype=bool, count=len(values))


def _profile_task(profile: ReferenceProfile | None) -> str | None:
    return getattr(profile, "task", None) if profile is not None else None


def _overall_metric(profile: ReferenceProfile | None, metric: str) -> float | None:
    metrics = getattr(profile, "metrics", None) or {}
    v = (metrics.get("overall") or {}).get(metric)
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    return None


def batch_errors(
    batch: Batch, task: str | None, mae_scale: float | None = None
) -> tuple[np.ndarray, str]:
    """The labeled rows' errors, in batch order, and the task they were computed for.

    Classification: 1.0 where the predicted class differs from the label, else 0.0.
    Regression: ``|value - label|``, divided by ``mae_scale`` when it is positive. Rows without
    a label (or without a prediction) are dropped. Without a known ``task`` a batch is treated
    as regression when it has numeric ``value`` predictions and no predicted classes.
    """
    if task is None:
        has_value = bool(np.isfinite(batch.value).any()) if batch.n else False
        has_class = bool(present(batch.predicted).any()) if batch.n else False
        task = "regression" if has_value and not has_class else "classification"
    if task == "regression":
        label = np.array(
            [
                float(v)
                if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
                else math.nan
                for v in batch.label
            ],
            dtype=np.float64,
        )
        err = abs_errors(batch.value, label)
        err = err[np.isfinite(err)]
        if mae_scale is not None and mae_scale > 0:
            with np.errstate(over="ignore"):
                err = np.minimum(err / mae_scale, ERROR_CAP)
        return err, task
    pred = label_keys(batch.predicted)
    lab = label_keys(batch.label)
    ok = present(pred) & present(lab)
    return (pred[ok] != lab[ok]).astype(np.float64), task


@register
class ConceptDrift(Detector):
    """Streaming change detection on the labeled error stream, with river.

    Each labeled event becomes an error (0/1 for classification; the absolute error scaled by
    the reference MAE for regression) and is fed to a river detector in stream order. A change
    river reports at stream index ``i`` is *reported* unless it falls within ``debounce``
    events of the previous reported change (ADWIN can fire several times for one change,
    river#574); such re-fires are only counted. For each reported change the evidence gives
    the error rate before it (the mean since the previous river detection, excluding the
    latest events) and after it (the mean of the latest ``min(recent, segment/2)`` events),
    and its direction. The window triggers when a reported change raised the error rate
    (``direction="increase"``, the default) or on any reported change (``"both"``).

    ``reset()`` starts a new window: the river detector and the stream position are kept
    (a change is a property of the stream, not of the window).

    Parameters
    ----------
    name
        The detector's name in the policy.
    profile
        The reference profile; only ``task`` and the overall ``mae`` (regression scale) are used.
    method
        ``adwin`` (default), ``page_hinkley``, ``ddm``, ``hddm_a``, ``hddm_w`` or ``kswin``.
        ``ddm``/``hddm_*`` need 0/1 input and are refused for regression. Page-Hinkley's
        threshold is absolute, which is why regression errors are scaled by the reference MAE.
    options
        Keyword arguments passed to the river class (e.g. ``{"delta": 0.001}`` for ADWIN).
    debounce
        Detections within this many events after a reported change are counted as re-fires.
    direction
        ``increase`` (default): only a rise of the error rate triggers; ``both``: any change.
    recent
        How many of the latest errors make the "after" error rate of a change.

    Examples
    --------
    >>> import numpy as np
    >>> from driftwarden.detectors.batch import Batch
    >>> rng = np.random.default_rng(7)
    >>> wrong = np.r_[rng.random(5000) < 0.1, rng.random(5000) < 0.2]
    >>> batch = Batch.from_records(
    ...     [{"prediction": {"label": 1}, "label": 0 if w else 1} for w in wrong]
    ... )
    >>> det = ConceptDrift("errors")
    >>> det.update(batch)
    >>> r = det.result()
    >>> r.triggered, [c["index"] for c in r.evidence["changes"]]
    (True, [5183])
    """

    kind: ClassVar[str] = "concept_drift"
    stream = "labeled"
    state_version: ClassVar[int] = 1
    params_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "properties": {
            "method": {"enum": sorted(METHODS), "default": "adwin"},
            "options": {"type": "object", "default": {}},
            "debounce": {"type": "integer", "minimum": 0, "default": 500},
            "direction": {"enum": ["increase", "both"], "default": "increase"},
            "recent": {"type": "integer", "minimum": 2, "default": 200},
        },
        "additionalProperties": False,
    }

    def __init__(
        self,
        name: str,
        profile: ReferenceProfile | None = None,
        *,
        method: str = "adwin",
        options: Mapping[str, Any] | None = None,
        debounce: int = 500,
        direction: str = "increase",
        recent: int = 200,
    ) -> None:
        super().__init__(name, profile)
        if method not in METHODS:
            raise ValueError(
                f"concept_drift detector {name!r}: unknown method {method!r}; "
                f"known methods: {', '.join(sorted(METHODS))}."
            )
        if direction not in ("increase", "both"):
            raise ValueError(
                f"concept_drift detector {name!r}: direction must be 'increase' or 'both', "
                f"not {direction!r}."
            )
        if debounce < 0 or recent < 2:
            raise ValueError(
                f"concept_drift detector {name!r}: debounce must be >= 0 and recent >= 2."
            )
        cls, binary_only, defaults = METHODS[method]
        self.method = method
        self.options = {**defaults, **dict(options or {})}
        self.debounce = int(debounce)
        self.direction = direction
        self.recent = int(recent)
        self._binary_only = binary_only
        self._task = _profile_task(profile)
        if binary_only and self._task == "regression":
            raise ValueError(
                f"concept_drift detector {name!r}: method {method!r} needs 0/1 errors and "
                "cannot watch a regression model; use adwin, page_hinkley or kswin."
            )
        self._scale = _overall_metric(profile, "mae")
        try:
            self._river = cls(**self.options)
        except TypeError as exc:
            raise ValueError(
                f"concept_drift detector {name!r}: options {sorted(self.options)} do not fit "
                f"river's {cls.__name__} ({exc})."
            ) from exc
        # Long-run stream state (kept across windows).
        self._seen = 0  # errors fed to river so far = stream index of the next event
        self._seg_sum = 0.0  # errors since the last river detection
        self._seg_n = 0
        self._ring = np.empty(0, dtype=np.float64)  # the latest `recent` errors
        self._last_change: int | None = None  # stream index of the last reported change
        self._reset_window()

    # -- windows ---------------------------------------------------------------------------
    def _reset_window(self) -> None:
        self._win_n = 0
        self._win_sum = 0.0
        self._changes: list[dict[str, Any]] = []
        self._refires = 0

    def reset(self) -> None:
        """Start a new window; the river detector keeps its long-run state."""
        self._reset_window()

    # -- update ----------------------------------------------------------------------------
    def update(self, batch: Batch) -> None:
        """Feed the batch's labeled errors to the river detector, in order."""
        errs, task = batch_errors(batch, self._task, self._scale)
        if errs.size == 0:
            return
        if self._binary_only and task == "regression":
            raise ValueError(
                f"concept_drift detector {self.name!r}: method {self.method!r} needs 0/1 "
                "errors but the labeled batch is a regression batch."
            )
        # river's update is per element by nature; keep the loop to exactly that.
        river_det = self._river
        hits = []
        for j, x in enumerate(errs.tolist()):
            river_det.update(x)
            if river_det.drift_detected:
                hits.append(j)
        if hits:
            self._record(errs, hits)
        else:
            self._seg_sum += float(errs.sum())
            self._seg_n += int(errs.size)
        self._ring = np.concatenate([self._ring, errs])[-self.recent :]
        self._seen += int(errs.size)
        self._win_n += int(errs.size)
        self._win_sum += float(errs.sum())

    def _record(self, errs: np.ndarray, hits: list[int]) -> None:
        csum = np.cumsum(errs)
        base_sum, base_n, off_sum, off_n = self._seg_sum, self._seg_n, 0.0, 0
        tail_src = np.concatenate([self._ring, errs])
        ring_len = self._ring.size
        for j in hits:
            seg_sum = base_sum + float(csum[j]) - off_sum
            seg_n = base_n + j + 1 - off_n
            k = min(self.recent, seg_n // 2)
            before = after = None
            if k >= 1:
                tail = tail_src[ring_len + j + 1 - k : ring_len + j + 1]
                after = float(tail.mean())
                before = (seg_sum - float(tail.sum())) / (seg_n - k)
            index = self._seen + j
            base_sum, base_n, off_sum, off_n = 0.0, 0, float(csum[j]), j + 1
            if self._last_change is not None and index - self._last_change < self.debounce:
                self._refires += 1
                continue
            self._last_change = index
            direction = (
                "increase"
                if after is not None and before is not None and after > before
                else "decrease"
            )
            if len(self._changes) >= _MAX_CHANGES:
                self._changes.pop(0)
            self._changes.append(
                {
                    "index": index,
                    "error_rate_before": before,
                    "error_rate_after": after,
                    "direction": direction,
                    "method": self.method,
                }
            )
        self._seg_sum = base_sum + float(csum[-1]) - off_sum
        self._seg_n = base_n + int(errs.size) - off_n

    # -- result ----------------------------------------------------------------------------
    def _counts(self, change: Mapping[str, Any]) -> bool:
        return self.direction == "both" or change["direction"] == "increase"

    def result(self) -> DetectorResult:
        """Whether a (debounced) change that counts happened during this window."""
        counted = [c for c in self._changes if self._counts(c)]

        def rise(c: Mapping[str, Any]) -> float:
            b, a = c["error_rate_before"], c["error_rate_after"]
            return (a - b) if a is not None and b is not None else 0.0

        top = sorted(counted, key=rise, reverse=True)[:_TOP]
        return DetectorResult(
            name=self.name,
            kind=self.kind,
            triggered=bool(counted),
            statistic=rise(top[0]) if top else None,
            threshold=None,
            p_value=None,
            n=self._win_n,
            evidence={
                "method": self.method,
                "changes": [dict(c) for c in self._changes],
                "top": [dict(c) for c in top],
                "refires_ignored": self._refires,
                "window_error_rate": self._win_sum / self._win_n if self._win_n else None,
                "events_seen": self._seen,
                "error_scale": self._scale,
            },
        )

    # -- state -----------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        # river detectors have no public state form other than pickle (several keep their
        # state in a compiled Rust helper), so the river object travels as base64(pickle).
        # Checkpoints are written and read only by the daemon itself: never load a state from
        # an untrusted source.
        return {
            "river": base64.b64encode(pickle.dumps(self._river)).decode("ascii"),
            "method": self.method,
            "seen": self._seen,
            "seg_sum": self._seg_sum,
            "seg_n": self._seg_n,
            "ring": self._ring.tolist(),
            "last_change": self._last_change,
            "window": {
                "n": self._win_n,
                "sum": self._win_sum,
                "changes": [dict(c) for c in self._changes],
                "refires": self._refires,
            },
        }

    def _load(self, state: Mapping[str, Any]) -> None:
        if state.get("method") != self.method:
            raise ValueError(
                f"concept_drift detector {self.name!r}: the saved state is for method "
                f"{state.get('method')!r}, the policy asks for {self.method!r}."
            )
        self._river = pickle.loads(base64.b64decode(state["river"]))  # noqa: S301 (own checkpoint)
        self._seen = int(state["seen"])
        self._seg_sum = float(state["seg_sum"])
        self._seg_n = int(state["seg_n"])
        self._ring = np.asarray(state["ring"], dtype=np.float64)
        last = state.get("last_change")
        self._last_change = None if last is None else int(last)
        w = state["window"]
        self._win_n = int(w["n"])
        self._win_sum = float(w["sum"])
        self._changes = [dict(c) for c in w["changes"]]
        self._refires = int(w["refires"])

    @classmethod
    def _unit_test_params(cls) -> dict[str, Any]:
        """Parameters for the shared detector contract suite."""

        def batch(seed: int) -> Batch:
            rng = np.random.default_rng(seed)
            wrong = np.r_[rng.random(1500) < 0.1, rng.random(1500) < 0.3]
            return Batch.from_records(
                [{"prediction": {"label": 1}, "label": 0 if w else 1} for w in wrong]
            )

        return {"kwargs": {"method": "adwin", "debounce": 200}, "profile": None, "batch": batch}
