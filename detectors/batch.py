"""Columnar micro-batches: the one input shape every detector's ``update`` takes.

The daemon decodes events one by one (that is unavoidable: they arrive as JSON bytes) and
assembles them into a :class:`Batch` of numpy columns, so detectors never loop over events in
Python. A batch is built from plain record dicts with :meth:`Batch.from_records`, which tests
and the retrain pipeline use as well.

Feature columns keep four views of one feature, so a detector can tell apart "null",
"absent", "wrong type" and a real value without looking at Python objects again:

* ``numeric``  float64, the value where it is a number (bools excluded), NaN otherwise;
* ``text``     object array, the value where it is a string or a bool (bools as
  ``"true"``/``"false"``), ``None`` otherwise;
* ``null``     bool, the key was present with the value ``null``;
* ``absent``   bool, the key was missing from the event.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from operator import itemgetter
from typing import Any

import numpy as np

from .stats import value_key

__all__ = ["Batch", "FeatureColumn"]


@dataclass(frozen=True)
class FeatureColumn:
    """One feature's values in a batch (see the module docstring for the four views)."""

    numeric: np.ndarray
    text: np.ndarray
    null: np.ndarray
    absent: np.ndarray

    @property
    def present_number(self) -> np.ndarray:
        """Mask of rows holding a finite number."""
        return ~np.isnan(self.numeric)

    @property
    def present_text(self) -> np.ndarray:
        """Mask of rows holding a string (or bool)."""
        return np.not_equal(self.text, np.array(None))

    @classmethod
    def from_values(
        cls, values: Sequence[Any], absent: Sequence[bool] | None = None
    ) -> FeatureColumn:
        """Build a column from raw values (``_ABSENT`` marks a missing key)."""
        n = len(values)
        numeric = np.full(n, np.nan, dtype=np.float64)
        text = np.empty(n, dtype=object)
        null = np.zeros(n, dtype=bool)
        absent_arr = np.zeros(n, dtype=bool) if absent is None else np.asarray(absent, dtype=bool)
        for i, v in enumerate(values):
            t = type(v)
            # Exact types first (what JSON decoding yields), the general checks last.
            if t is float:
                if v - v == 0.0:  # finite: inf - inf and nan - nan are nan
                    numeric[i] = v
            elif t is str:
                text[i] = v
            elif t is int:
                numeric[i] = v
            elif v is None:
                null[i] = True
            elif v is _ABSENT:
                absent_arr[i] = True
            elif t is bool:
                text[i] = "true" if v else "false"
            elif isinstance(v, bool | np.bool_):
                text[i] = "true" if v else "false"
            elif isinstance(v, int | float | np.integer | np.floating):
                fv = float(v)
                if math.isfinite(fv):
                    numeric[i] = fv
            elif isinstance(v, str):
                text[i] = v
        return cls(numeric=numeric, text=text, null=null, absent=absent_arr)


class _Absent:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<absent>"


_ABSENT = _Absent()


def _column(records: Sequence[Mapping[str, Any]], key: str) -> list[Any]:
    return [r.get(key, _ABSENT) for r in records]


# Exact value types the vectorised column builder handles; anything else (numpy scalars,
# subclasses, containers) goes through :meth:`FeatureColumn.from_values` one value at a time.
_FAST_TYPES = frozenset({float, int, str, bool, type(None), _Absent})
_NUMBER_TYPES = frozenset({float, int})
_NUMBER_OR_NULL = _NUMBER_TYPES | {type(None)}


def _feature_column(values: Sequence[Any]) -> FeatureColumn:
    """:meth:`FeatureColumn.from_values` with numpy doing the per-value work.

    Gives the same four arrays; one pass of ``type()`` over the values picks the route.
    """
    kinds = set(map(type, values))
    if not kinds <= _FAST_TYPES:
        return FeatureColumn.from_values(values)
    n = len(values)
    try:
        if kinds <= _NUMBER_TYPES:
            numeric = np.fromiter(values, dtype=np.float64, count=n)
            numeric[~np.isfinite(numeric)] = np.nan
            return FeatureColumn(
                numeric, np.empty(n, dtype=object), np.zeros(n, dtype=bool), np.zeros(n, bool)
            )
        if kinds <= _NUMBER_OR_NULL:
            # Numbers with gaps: numpy turns None into NaN; when the NaNs are exactly the
            # Nones (JSON has no NaN) they are the null mask.
            numeric = np.array(values, dtype=np.float64).reshape(n)
            null = np.isnan(numeric)
            if int(null.sum()) == values.count(None):
                numeric[~np.isfinite(numeric)] = np.nan
                return FeatureColumn(numeric, np.empty(n, dtype=object), null, np.zeros(n, bool))
        obj = _objects(values)
        if kinds == {str}:
            return FeatureColumn(
                np.full(n, np.nan), obj, np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
            )
        types = np.fromiter(map(type, values), dtype=object, count=n)
        null = _of_type(types, type(None))
        absent = _of_type(types, _Absent)
        numeric = np.full(n, np.nan)
        if kinds & _NUMBER_TYPES:
            is_num = _of_type(types, float) | _of_type(types, int)
            numeric[is_num] = obj[is_num].astype(np.float64)
            numeric[~np.isfinite(numeric)] = np.nan
        text = np.empty(n, dtype=object)
        if str in kinds:
            is_str = _of_type(types, str)
            text[is_str] = obj[is_str]
        if bool in kinds:
            is_bool = _of_type(types, bool)
            text[is_bool] = _objects(["true" if v else "false" for v in obj[is_bool]])
    except OverflowError:  # an int beyond float64: the slow path raises the same error
        return FeatureColumn.from_values(values)
    return FeatureColumn(numeric=numeric, text=text, null=null, absent=absent)


def _of_type(types: np.ndarray, kind: type) -> np.ndarray:
    """Mask of the rows whose value's exact type (from an object array of types) is ``kind``."""
    scalar = np.empty((), dtype=object)
    scalar[()] = kind
    mask: np.ndarray = np.equal(types, scalar)
    return mask


def _columns(records: Sequence[Mapping[str, Any]]) -> dict[str, list[Any] | tuple[Any, ...]]:
    """Each key's values in record order (``_ABSENT`` where a record lacks the key).

    When every record has every key (the usual case) each key's values are gathered in C
    with ``map(itemgetter(key), ...)``; otherwise one list per key is gathered in Python.
    (Not ``zip(*rows)``: it holds an iterator per row at once, and on a retrain's 50 000 rows
    those set off a full collection of the heap under default GC thresholds.)
    """
    n = len(records)
    first = list(records[0]) if n else []
    if len(first) > 1 and sum(map(len, records)) == n * len(first):
        try:
            # Every record has all of the first record's keys and no more (the total count
            # says so), so these are all the keys, in first-seen order.
            return {k: list(map(itemgetter(k), records)) for k in first}
        except KeyError:
            pass
    names = dict.fromkeys(chain.from_iterable(records))
    return {k: _column(records, k) for k in names}


def _floats(values: list[Any]) -> np.ndarray:
    """``[_num(v) for v in values]`` as float64, vectorised when the types allow it."""
    kinds = set(map(type, values))
    if kinds <= _NUMBER_TYPES | {type(None)}:
        try:
            return np.array(values, dtype=np.float64).reshape(len(values))
        except OverflowError:
            pass
    return np.array([_num(v) for v in values], dtype=np.float64).reshape(len(values))


@dataclass(frozen=True)
class Batch:
    """A micro-batch of events for one model, as numpy columns.

    ``features`` and ``segments`` map names to columns; ``score`` / ``value`` are float64 (NaN
    where the event has none); ``predicted`` and ``label`` are object arrays (``None`` where
    absent) because class labels may be ints, strings or bools. ``timestamp`` is event time in
    epoch seconds. For a batch of predictions ``label`` is all ``None``; for a labeled batch
    (predictions joined with their labels) it is filled.
    """

    features: Mapping[str, FeatureColumn]
    segments: Mapping[str, np.ndarray]
    score: np.ndarray
    value: np.ndarray
    predicted: np.ndarray
    label: np.ndarray
    timestamp: np.ndarray
    model_version: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=object))

    @property
    def n(self) -> int:
        """Number of events in the batch."""
        return int(self.timestamp.shape[0])

    def __len__(self) -> int:
        return self.n

    @classmethod
    def from_records(cls, records: Sequence[Mapping[str, Any]]) -> Batch:
        """Build a batch from record dicts.

        A record has ``features`` (dict), and optionally ``segment`` (dict), ``prediction``
        (dict with ``score``/``label``/``value``), ``label``, ``timestamp`` (epoch seconds)
        and ``model_version``. Every feature name seen in any record gets a column.

        >>> b = Batch.from_records([{"features": {"x": 1.5, "plan": "pro"}},
        ...                         {"features": {"x": None}}])
        >>> b.n, b.features["x"].null.tolist(), b.features["plan"].absent.tolist()
        (2, [False, True], [False, True])
        """
        feats: list[Mapping[str, Any]] = [r.get("features") or {} for r in records]
        features = {k: _feature_column(v) for k, v in _columns(feats).items()}

        segs: list[Mapping[str, Any]] = [r.get("segment") or {} for r in records]
        segments = {k: _segment_column(v) for k, v in _columns(segs).items()}

        preds: list[Mapping[str, Any]] = [r.get("prediction") or {} for r in records]
        score = _floats([p.get("score") for p in preds])
        value = _floats([p.get("value") for p in preds])
        predicted = _objects([p.get("label") for p in preds])
        label = _objects([r.get("label") for r in records])
        timestamp = _floats([r.get("timestamp", 0.0) for r in records])
        model_version = _objects([r.get("model_version") for r in records])
        return cls(features, segments, score, value, predicted, label, timestamp, model_version)

    @classmethod
    def concat(cls, batches: Iterable[Batch]) -> Batch:
        """Concatenate batches (columns missing from a part are filled as absent/None)."""
        parts = [b for b in batches if b.n]
        if not parts:
            return cls.from_records([])
        names = list(dict.fromkeys(k for b in parts for k in b.features))
        seg_names = list(dict.fromkeys(k for b in parts for k in b.segments))

        def feat(b: Batch, k: str) -> FeatureColumn:
            c = b.features.get(k)
            if c is not None:
                return c
            return FeatureColumn(
                numeric=np.full(b.n, np.nan),
                text=np.full(b.n, None, dtype=object),
                null=np.zeros(b.n, dtype=bool),
                absent=np.ones(b.n, dtype=bool),
            )

        features = {}
        for k in names:
            cols = [feat(b, k) for b in parts]
            features[k] = FeatureColumn(
                numeric=np.concatenate([c.numeric for c in cols]),
                text=np.concatenate([c.text for c in cols]),
                null=np.concatenate([c.null for c in cols]),
                absent=np.concatenate([c.absent for c in cols]),
            )
        segments = {
            k: np.concatenate([b.segments.get(k, np.full(b.n, None, dtype=object)) for b in parts])
            for k in seg_names
        }
        return cls(
            features=features,
            segments=segments,
            score=np.concatenate([b.score for b in parts]),
            value=np.concatenate([b.value for b in parts]),
            predicted=np.concatenate([b.predicted for b in parts]),
            label=np.concatenate([b.label for b in parts]),
            timestamp=np.concatenate([b.timestamp for b in parts]),
            model_version=np.concatenate(
                [
                    b.model_version
                    if b.model_version.shape[0] == b.n
                    else np.full(b.n, None, dtype=object)
                    for b in parts
                ]
            ),
        )

    def select(self, mask: np.ndarray) -> Batch:
        """The rows where ``mask`` is true (used for slices)."""
        return Batch(
            features={
                k: FeatureColumn(c.numeric[mask], c.text[mask], c.null[mask], c.absent[mask])
                for k, c in self.features.items()
            },
            segments={k: v[mask] for k, v in self.segments.items()},
            score=self.score[mask],
            value=self.value[mask],
            predicted=self.predicted[mask],
            label=self.label[mask],
            timestamp=self.timestamp[mask],
            model_version=self.model_version[mask]
            if self.model_version.shape[0] == self.n
            else self.model_version,
        )


def _num(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return math.nan
    return float(v)


def _segment_column(values: Sequence[Any]) -> np.ndarray:
    """Segment values in the profile's key form (``True`` meets its baseline ``"true"``);
    missing and null are ``None``."""
    if set(map(type, values)) <= {str, type(None)}:
        return _objects(values)  # value_key(s) is s for an exact str
    return _objects([None if v is None or v is _ABSENT else value_key(v) for v in values])


def _objects(values: Sequence[Any]) -> np.ndarray:
    """A 1-d object array holding exactly these objects (``fromiter`` stores them as they are;
    a slice assignment would first look into each one, slowly for types and lists)."""
    return np.fromiter(values, dtype=object, count=len(values))
