"""Batch.from_records: the vectorised column builder equals the one-value-at-a-time reference."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftwarden.detectors.batch import _ABSENT, Batch, FeatureColumn
from driftwarden.detectors.stats import value_key

SEEDED = settings(max_examples=300, deadline=None, derandomize=True, database=None)


def _num(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return math.nan
    return float(v)


def _objects(values: list[Any]) -> np.ndarray:
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr


def reference(records: Sequence[Mapping[str, Any]]) -> Batch:
    """The per-value construction the fast path replaced (kept here as the specification)."""
    n = len(records)
    feats = [r.get("features") or {} for r in records]
    names = dict.fromkeys(k for f in feats for k in f)
    features = {k: FeatureColumn.from_values([f.get(k, _ABSENT) for f in feats]) for k in names}
    segs = [r.get("segment") or {} for r in records]
    seg_names = dict.fromkeys(k for s in segs for k in s)
    segments = {
        k: np.array(
            [None if s.get(k) is None else value_key(s.get(k)) for s in segs], dtype=object
        ).reshape(n)
        for k in seg_names
    }
    preds = [r.get("prediction") or {} for r in records]
    return Batch(
        features,
        segments,
        np.array([_num(p.get("score")) for p in preds], dtype=np.float64).reshape(n),
        np.array([_num(p.get("value")) for p in preds], dtype=np.float64).reshape(n),
        _objects([p.get("label") for p in preds]),
        _objects([r.get("label") for r in records]),
        np.array([_num(r.get("timestamp", 0.0)) for r in records], dtype=np.float64).reshape(n),
        _objects([r.get("model_version") for r in records]),
    )


def same_objects(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal object arrays, element types included (``"1"`` is not ``1``, ``True`` not ``1``)."""
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and all(
            type(x) is type(y) and _same(x, y) for x, y in zip(a.tolist(), b.tolist(), strict=True)
        )
    )


def _same(x: Any, y: Any) -> bool:
    return bool(x == y) or (isinstance(x, float) and math.isnan(x) and math.isnan(y))


def assert_same(got: Batch, want: Batch) -> None:
    assert list(got.features) == list(want.features)
    for k, c in want.features.items():
        g = got.features[k]
        np.testing.assert_array_equal(g.numeric, c.numeric)
        assert g.numeric.dtype == np.float64
        assert same_objects(g.text, c.text), k
        np.testing.assert_array_equal(g.null, c.null)
        np.testing.assert_array_equal(g.absent, c.absent)
        assert g.null.dtype == bool and g.absent.dtype == bool
    assert list(got.segments) == list(want.segments)
    for k, v in want.segments.items():
        assert same_objects(got.segments[k], v), k
    for name in ("score", "value", "timestamp"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
        assert getattr(got, name).dtype == np.float64
    for name in ("predicted", "label", "model_version"):
        assert same_objects(getattr(got, name), getattr(want, name)), name


VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.text(max_size=3),
    st.booleans(),
    st.none(),
    st.sampled_from([np.float64(1.5), np.int64(3), np.bool_(True), np.nan]),
)
KEYS = st.sampled_from(["a", "b", "c", "d"])


@st.composite
def records(draw: st.DrawFn) -> list[dict[str, Any]]:
    uniform = draw(st.booleans())
    names = draw(st.lists(KEYS, min_size=0, max_size=4, unique=True))
    out = []
    for _ in range(draw(st.integers(0, 12))):
        keys = names if uniform else draw(st.lists(KEYS, max_size=4, unique=True))
        rec: dict[str, Any] = {"features": {k: draw(VALUES) for k in keys}}
        if draw(st.booleans()):
            rec["segment"] = {k: draw(VALUES) for k in keys[:2]}
        if draw(st.booleans()):
            rec["prediction"] = {"score": draw(VALUES), "label": draw(VALUES)}
        if draw(st.booleans()):
            rec["timestamp"] = draw(st.one_of(st.floats(0, 2e9), st.integers(0, 2**31)))
        if draw(st.booleans()):
            rec["label"] = draw(VALUES)
        out.append(rec)
    return out


@SEEDED
@given(records())
def test_from_records_equals_the_per_value_reference(recs: list[dict[str, Any]]) -> None:
    """Every mix of types, absent keys and non-finite numbers gives the reference's arrays."""
    try:
        want = reference(recs)
    except OverflowError:
        with pytest.raises(OverflowError):
            Batch.from_records(recs)
        return
    assert_same(Batch.from_records(recs), want)


@pytest.mark.parametrize(
    "values",
    [
        [1.5, 2.0, -3.25],
        [1, 2.5, 7],
        [1.0, None, 3.0],
        ["a", "b", "a"],
        ["a", None, "b"],
        [True, False, None, "x", 1.0, 2],
        [math.inf, -math.inf, math.nan, 1.0],
        [1.0, _ABSENT, "a", None],
    ],
)
def test_feature_columns_of_the_common_shapes(values: list[Any]) -> None:
    """Numeric, text, gappy and mixed columns match FeatureColumn.from_values exactly."""
    recs = [{"features": {} if v is _ABSENT else {"x": v}} for v in values]
    if all(v is _ABSENT for v in values):
        return
    assert_same(Batch.from_records(recs), reference(recs))


def test_uniform_records_keep_first_seen_key_order() -> None:
    """Columns come in the order the keys first appear, on the fast and the general path."""
    fast = Batch.from_records([{"features": {"b": 1, "a": 2}}, {"features": {"a": 3, "b": 4}}])
    assert list(fast.features) == ["b", "a"]
    np.testing.assert_array_equal(fast.features["a"].numeric, [2.0, 3.0])
    mixed = Batch.from_records([{"features": {"b": 1}}, {"features": {"a": 3, "b": 4}}])
    assert list(mixed.features) == ["b", "a"]
    assert mixed.features["a"].absent.tolist() == [True, False]
