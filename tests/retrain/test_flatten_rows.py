"""flatten_rows (the column-wise transpose) gives exactly the frame of the row-by-row original."""

from __future__ import annotations

import datetime as dt
import math
import random
from typing import Any

import pandas as pd
import pytest

from driftwarden.retrain.labeled_store import _flatten_rows_loop, flatten_rows

# The row-by-row original stays in the module (it handles colliding names); it is the oracle.
_original = _flatten_rows_loop


def _same(rows: list[dict[str, Any]]) -> pd.DataFrame:
    got, want = flatten_rows(rows), _original(rows)
    assert list(got.columns) == list(want.columns)
    assert list(got.dtypes) == list(want.dtypes)
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    # Same Python objects in object columns (True stays True, 1 stays 1, None stays None).
    for col in got.columns:
        if got[col].dtype == object:
            for a, b in zip(got[col].tolist(), want[col].tolist(), strict=True):
                assert type(a) is type(b) and (a == b or a is b or (a != a and b != b)), col
    return got


def _row(i: int, **kw: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "prediction_id": f"p{i}",
        "features": {"x": float(i), "plan": "pro", "n": i},
        "prediction": {"label": 1, "score": 0.5},
        "label": i % 2,
        "segment": {"tier": "a"},
        "timestamp": 1000.0 + i,
        "model_version": "3",
    }
    row.update(kw)
    return row


def test_uniform_rows() -> None:
    frame = _same([_row(i) for i in range(50)])
    assert frame["n"].dtype == "int64" and frame["x"].dtype == "float64"


def test_missing_keys_none_and_nan() -> None:
    rows = [_row(i) for i in range(10)]
    rows[2]["features"] = {"x": None, "plan": "pro"}  # n missing, x null
    rows[3]["features"] = None
    rows[4]["features"] = {"x": math.nan, "extra": 1}  # a key seen only here
    rows[5]["segment"] = {}
    rows[6]["prediction"] = None
    rows[7].pop("timestamp")
    rows[8]["label"] = None
    rows[9]["prediction"] = {"value": 3, "score": None}
    _same(rows)


def test_mixed_types_in_a_column() -> None:
    values: list[Any] = [1, 2.5, "three", True, None, 10**30, -0.0, math.inf, False, 7]
    rows = [_row(i) for i in range(len(values))]
    for row, v in zip(rows, values, strict=True):
        row["features"]["mixed"] = v
        row["segment"]["flag"] = v if not isinstance(v, float) else None
    rows[0]["label"] = "yes"  # string labels next to ints
    rows[1]["prediction"] = {"label": "no", "score": "0.3"}  # score coerced to a number
    _same(rows)


@pytest.mark.parametrize(
    "values",
    [
        [True, False, True],
        [1, 2, 3],
        [None, None, None],
        [dt.datetime(2026, 1, 1), dt.datetime(2026, 1, 2), None],
        ["2026-01-01", "2026-01-02", "x"],
        [10**20, 1, 2],
    ],
)
def test_single_kind_columns(values: list[Any]) -> None:
    rows = [_row(i) for i in range(len(values))]
    for row, v in zip(rows, values, strict=True):
        row["features"] = {"only": v}
    _same(rows)


def test_segments_clashing_with_features_and_meta() -> None:
    rows = [_row(i) for i in range(5)]
    for row in rows:
        row["segment"] = {"plan": "eu", "label": "l", "score": "s", "tier": "a"}
    frame = _same(rows)
    assert {"segment.plan", "segment.label", "segment.score", "tier", "plan"} <= set(frame)


def test_names_that_collide_fail_the_same_way() -> None:
    feature_like_meta = [_row(i) for i in range(3)]
    for row in feature_like_meta:
        row["features"]["score"] = 1.0
    twice = [_row(i) for i in range(3)]
    for row in twice:
        row["segment"] = {"x": 1, "segment.x": 2}  # "x" is a feature: both on segment.x
    for rows in (feature_like_meta, twice):
        with pytest.raises(ValueError) as new:
            flatten_rows(rows)
        with pytest.raises(ValueError) as old:
            _original(rows)
        assert str(new.value) == str(old.value)


def test_no_rows() -> None:
    assert list(flatten_rows([]).columns) == list(_original([]).columns)
    _same([])
    _same([{"prediction_id": "p", "features": {}, "segment": {}, "label": 1}])


def test_random_rows() -> None:
    rng = random.Random(7)
    pool: list[Any] = [None, 0, 1, -3, 2.5, math.nan, "a", "b", True, False]
    rows = []
    for i in range(300):
        feats = {k: rng.choice(pool) for k in ("f1", "f2", "f3", "plan") if rng.random() < 0.9}
        segs = {k: rng.choice(["x", "y", None, 1]) for k in ("s1", "f2") if rng.random() < 0.8}
        pred = {k: rng.choice(pool) for k in ("label", "score", "value") if rng.random() < 0.7}
        rows.append(
            {
                "prediction_id": f"p{i}",
                "features": feats,
                "segment": segs,
                "prediction": pred,
                "label": rng.choice([0, 1, None]),
                "timestamp": rng.choice([None, float(i)]),
            }
        )
    _same(rows)
    # Every row with every key: the itemgetter route.
    _same([{**r, "features": {"f1": 1.0, "f2": r["prediction_id"]}} for r in rows])
