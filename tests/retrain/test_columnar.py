"""The snapshot read column by column equals the dict route exactly, or declines.

Oracle: the dict route (rows parsed, filtered and ordered by ``_recent_rows``, then
``flatten_columns`` + ``frame_of_columns`` for the table and ``Batch.from_records`` for the
data gate). ``recent_columns`` must give the same table (names, order, dtypes, values) and the
same batch (every array, with the same Python types in object arrays), or ``None``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from driftwarden.detectors.batch import Batch
from driftwarden.retrain import columnar
from driftwarden.retrain.columnar import recent_columns
from driftwarden.retrain.labeled_store import (
    LabeledStore,
    flatten_columns,
    frame_of_columns,
    parse_lines,
)
from driftwarden.retrain.pipeline import RetrainRequest, _recent_rows, _recent_snapshot

_ABSENT = object()


def _request(recent: int | None = None, target: str = "y") -> RetrainRequest:
    return RetrainRequest(
        model="m",
        trigger={},
        action_key="k",
        trainer="t:f",
        gates={},
        target=target,
        features=["x"],
        data={} if recent is None else {"recent": recent},
    )


def _same_objects(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.dtype == want.dtype, what
    assert got.shape == want.shape, what
    if got.dtype == object:
        for i, (a, b) in enumerate(zip(got.tolist(), want.tolist(), strict=True)):
            assert type(a) is type(b), (what, i, a, b)
            assert a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b)), (
                what,
                i,
                a,
                b,
            )
    else:
        np.testing.assert_array_equal(got, want, err_msg=what)


def _same_batch(got: Batch, want: Batch) -> None:
    assert list(got.features) == list(want.features)
    for k, col in want.features.items():
        g = got.features[k]
        for view in ("numeric", "text", "null", "absent"):
            _same_objects(getattr(g, view), getattr(col, view), f"feature {k}.{view}")
    assert list(got.segments) == list(want.segments)
    for k, seg in want.segments.items():
        _same_objects(got.segments[k], seg, f"segment {k}")
    for name in ("score", "value", "predicted", "label", "timestamp", "model_version"):
        _same_objects(getattr(got, name), getattr(want, name), name)


def _check(data: bytes, recent: int | None) -> bool:
    """Compare the two routes on ``data``; True when the columnar route took it."""
    got = recent_columns(data, recent)
    rows = _recent_rows(_request(recent), parse_lines(data))
    if got is None:
        return False
    assert rows, "the columnar route built a snapshot of no rows"
    columns, batch = got
    want = flatten_columns(rows)
    assert want is not None, "names collide: the columnar route should have declined"
    assert list(columns) == list(want)
    frame, want_frame = pd.DataFrame(columns), frame_of_columns(want)
    assert list(frame.dtypes) == list(want_frame.dtypes)
    pd.testing.assert_frame_equal(frame, want_frame, check_exact=True)
    _same_batch(batch, Batch.from_records(rows))
    return True


def _store_bytes(tmp: Path, rows: list[dict[str, Any]]) -> bytes:
    store = LabeledStore(tmp)
    store.append("m", rows)
    return store.raw("m")


def _row(i: int, features: dict[str, Any], **over: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "prediction_id": f"p{i}",
        "features": features,
        "prediction": {"label": i % 2, "score": 0.25 + i % 3 / 10},
        "label": i % 2,
        "segment": {"tier": "a" if i % 3 else "b"},
        "timestamp": 1_000.0 + i,
        "model_version": "3",
    }
    row.update(over)
    return row


def test_usual_rows_take_the_columnar_route(tmp_path: Path) -> None:
    """Numbers, strings, bools, nulls, a missing key, unlabeled rows, rows out of time order,
    keys in another order: all read column by column, and equal to the dict route."""
    rows = []
    for i in range(400):
        feats: dict[str, Any] = {
            "x": float(i) / 7,
            "n": i,
            "plan": ["free", "pro"][i % 2],
            "flag": i % 5 == 0,
            "gap": None if i % 9 == 0 else 1.5,
        }
        if i % 13 == 0:
            del feats["plan"]  # missing, not null
        if i % 17 == 0:
            feats = dict(reversed(feats.items()))
        label = None if i % 10 == 3 else i % 2
        rows.append(_row(i, feats, label=label, timestamp=1_000.0 + (i * 37) % 400))
    data = _store_bytes(tmp_path, rows)
    for recent in (None, 50, 0):
        took = _check(data, recent)
        assert took == (recent != 0), recent


def test_declines_what_it_cannot_prove(tmp_path: Path) -> None:
    cases = {
        "number then string": [{"x": 1}, {"x": "a"}],
        "an object value": [{"x": {"a": 1}}, {"x": {"a": 2}}],
        "a list value": [{"x": [1]}, {"x": [2]}],
        "int beyond int64": [{"x": 2**63}, {"x": 1}],
    }
    for name, feats in cases.items():
        data = _store_bytes(
            tmp_path / name.replace(" ", "_"), [_row(i, f) for i, f in enumerate(feats)]
        )
        assert recent_columns(data, None) is None, name
    # a float label column that may have held ints (1 vs 1.0 would show in the batch)
    data = _store_bytes(
        tmp_path / "float_labels", [_row(0, {"x": 1}, label=1), _row(1, {"x": 2}, label=2.5)]
    )
    assert recent_columns(data, None) is None
    # a feature named like a meta column's segment: names collide
    data = _store_bytes(
        tmp_path / "collide", [_row(0, {"tier": 1}, segment={"tier": "a", "segment.tier": "b"})]
    )
    assert recent_columns(data, None) is None


def test_pipeline_snapshot_either_route_is_the_same(tmp_path: Path) -> None:
    rows = [_row(i, {"x": float(i), "plan": "pro" if i % 2 else None}) for i in range(60)]
    store = LabeledStore(tmp_path)
    store.append("m", rows)
    for target in ("y", "label", "x", "timestamp"):
        request = _request(target=target)
        frame, batch = _recent_snapshot(request, store)
        rows_in = _recent_rows(request, store.rows("m"))
        from driftwarden.retrain.pipeline import _recent_frame

        pd.testing.assert_frame_equal(frame, _recent_frame(request, rows_in), check_exact=True)
        _same_batch(batch, Batch.from_records(rows_in))


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.integers(min_value=-5, max_value=5),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, 1.0, -2.0, 2.0**53, 0.5]),
    st.text(max_size=3),
)


@st.composite
def _column_values(draw: st.DrawFn) -> Any:
    """A strategy for one key's values: mostly one kind (what real data holds), sometimes a mix."""
    kind = draw(st.sampled_from(["float", "int", "str", "bool", "mixed", "none", "ints_floats"]))
    base = {
        "float": st.floats(allow_nan=False, allow_infinity=False, width=32),
        "int": st.integers(min_value=-1000, max_value=1000),
        "str": st.sampled_from(["a", "b", "é", ""]),
        "bool": st.booleans(),
        "mixed": _scalars,
        "none": st.none(),
        "ints_floats": st.one_of(st.integers(-3, 3), st.sampled_from([0.5, 1.0, 2.0])),
    }[kind]
    return st.one_of(base, base, base, st.none(), st.just(_ABSENT))


def _maybe(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not _ABSENT}


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_columnar_equals_dict_route(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, data: Any
) -> None:
    # every row with a null is parsed on its own here (in use, past a quarter of the rows the
    # dict route is cheaper and taken)
    monkeypatch.setattr(columnar, "_MAX_NULL_ROW_SHARE", 1.0)
    n = data.draw(st.integers(1, 25), label="rows")
    feature_keys = data.draw(
        st.lists(st.sampled_from(["x", "plan", "n", "label", "tier", "é"]), max_size=4, unique=True)
    )
    segment_keys = data.draw(
        st.lists(st.sampled_from(["tier", "region", "x"]), max_size=2, unique=True)
    )
    strategies = {k: data.draw(_column_values()) for k in [*feature_keys, *segment_keys]}
    label_values = data.draw(
        st.one_of(
            st.sampled_from([st.integers(0, 2), st.sampled_from(["yes", "no"]), st.booleans()]),
            _column_values(),
        )
    )
    pred_values = data.draw(_column_values())
    score_values = data.draw(st.one_of(st.none(), st.floats(0, 1), st.integers(0, 1)))
    version_values = data.draw(
        st.sampled_from(
            [st.sampled_from([None, "1", "2"]), st.sampled_from([None, 3, 4]), st.just("1")]
        )
    )
    rows = []
    for i in range(n):
        feats = _maybe({k: data.draw(strategies[k]) for k in feature_keys})
        if data.draw(st.booleans()) and len(feats) > 1:
            feats = dict(reversed(feats.items()))
        segs = _maybe({k: data.draw(strategies[k]) for k in segment_keys})
        pred = _maybe({"label": data.draw(pred_values), "score": score_values})
        label = data.draw(label_values)
        ts = data.draw(st.one_of(st.none(), st.floats(0, 10), st.integers(0, 10)))
        version = data.draw(version_values)
        rows.append(
            {
                "prediction_id": f"p{i}",
                "features": feats,
                "prediction": pred,
                "label": None if label is _ABSENT else label,
                "segment": segs,
                "timestamp": ts,
                "model_version": version,
            }
        )
    tmp = tmp_path_factory.mktemp("columnar")
    raw = _store_bytes(tmp, rows)
    recent = data.draw(st.one_of(st.none(), st.integers(-1, n + 1)), label="recent")
    event(f"columnar route: {_check(raw, recent)}")
