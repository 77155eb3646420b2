"""Reference profiles: building, contents, metrics and the JSON round-trip."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from driftwarden.detectors.profile import (
    OTHER,
    PROFILE_FORMAT,
    ReferenceProfile,
    build_profile,
    read_table,
)


def _table(n: int = 4000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    days = rng.exponential(12, n).round() + 1
    days[rng.random(n) < 0.01] = 0
    days[rng.random(n) < 0.01] = np.nan
    score = rng.random(n)
    y = (rng.random(n) < score).astype(int)
    return pd.DataFrame(
        {
            "days_since_last_login": days,
            "user_age": rng.integers(18, 80, n),
            "plan": rng.choice(["free", "pro", "team"], n, p=[0.6, 0.3, 0.1]),
            "is_mobile": rng.random(n) < 0.4,
            "tier": rng.choice(["enterprise", "smb"], n),
            "score": score,
            "pred": (score >= 0.5).astype(int),
            "churned": y,
        }
    )


def test_feature_types_and_columns() -> None:
    """Features exclude target/prediction/score/segments; dtypes decide numeric vs categorical."""
    p = build_profile(
        _table(), "churn", target="churned", prediction="pred", score="score", segments=["tier"]
    )
    assert sorted(p.features) == ["days_since_last_login", "is_mobile", "plan", "user_age"]
    assert p.features["user_age"].type == "numeric"
    assert p.features["plan"].type == "categorical"
    assert set(p.features["is_mobile"].categories) == {"true", "false"}
    assert p.task == "classification" and p.positive_label == "1"
    assert p.prediction is not None and p.prediction.type == "numeric"


def test_numeric_profile_contents() -> None:
    """Null rate, range, deciles, shares per bin and the 101-point grid describe the column."""
    df = _table()
    fp = build_profile(df, "churn", feature_columns=["days_since_last_login"]).features[
        "days_since_last_login"
    ]
    col = df["days_since_last_login"]
    assert fp.null_rate == pytest.approx(col.isna().mean())
    assert fp.n == int(col.notna().sum())
    assert (fp.min, fp.max) == (col.min(), col.max())
    assert len(fp.bin_freqs) == len(fp.bin_edges) + 1
    assert sum(fp.bin_freqs) == pytest.approx(1.0)
    assert len(fp.quantiles) == 101 and fp.quantiles[50] == pytest.approx(col.median())
    # The rare 0 (a typical stand-in for "missing") is kept with its true share.
    assert fp.value_shares["0"] == pytest.approx((col == 0).sum() / col.notna().sum())


def test_bin_shares_use_right_closed_bins() -> None:
    """Reference shares per bin are what searchsorted(edges, x, 'left') counts."""
    df = _table()
    fp = build_profile(df, "m", feature_columns=["user_age"]).features["user_age"]
    x = df["user_age"].to_numpy(float)
    idx = np.searchsorted(fp.bin_edges, x, side="left")
    np.testing.assert_allclose(
        fp.bin_freqs, np.bincount(idx, minlength=len(fp.bin_edges) + 1) / x.size
    )


def test_metrics_match_sklearn_overall_and_per_slice() -> None:
    """Baseline metrics are sklearn's on the given table, overall and per segment value."""
    df = _table()
    p = build_profile(
        df, "churn", target="churned", prediction="pred", score="score", segments=["tier"]
    )
    o = p.metrics["overall"]
    assert o["n"] == len(df)
    assert o["accuracy"] == pytest.approx(skm.accuracy_score(df.churned, df.pred))
    assert o["recall"] == pytest.approx(skm.recall_score(df.churned, df.pred))
    assert o["precision"] == pytest.approx(skm.precision_score(df.churned, df.pred))
    assert o["f1"] == pytest.approx(skm.f1_score(df.churned, df.pred))
    assert o["roc_auc"] == pytest.approx(skm.roc_auc_score(df.churned, df.score))
    ent = df[df.tier == "enterprise"]
    s = p.metrics["slices"]["tier"]["enterprise"]
    assert s["n"] == len(ent)
    assert s["recall"] == pytest.approx(skm.recall_score(ent.churned, ent.pred))


@pytest.mark.parametrize("labels", ["ints", "strings", "three"])
def test_slice_metrics_equal_metrics_of_each_slice_table(labels: str) -> None:
    """Per slice, the metrics are exactly those of the slice's own sub-table (the table is
    keyed once and sliced by position): with unlabeled rows, a shuffled non-range index,
    null segment values, a slice without positives and, for ``three``, a multiclass target."""
    from driftwarden.detectors.profile import _classification_metrics

    df = _table(3000, seed=5)
    rng = np.random.default_rng(6)
    if labels == "strings":
        df["churned"] = np.where(df.churned == 1, "yes", "no").astype(object)
        df["pred"] = np.where(df.pred == 1, "yes", "no").astype(object)
    elif labels == "three":
        df["churned"] = rng.integers(0, 3, len(df))
        df["pred"] = rng.integers(0, 3, len(df))
    df["churned"] = df["churned"].astype(object)
    df.loc[rng.random(len(df)) < 0.05, "churned"] = None
    df.loc[rng.random(len(df)) < 0.05, "tier"] = None
    df.loc[df.plan == "team", "churned"] = df.loc[df.plan == "team", "churned"].where(
        df.loc[df.plan == "team", "churned"].isna(), df.churned.dropna().iloc[0]
    )
    df.index = rng.permutation(len(df)) * 3 + 7
    p = build_profile(
        df,
        "churn",
        target="churned",
        prediction="pred",
        score=None if labels == "three" else "score",
        segments=["tier", "plan"],
    )

    def expected(part: pd.DataFrame) -> dict:
        part = part[part["churned"].notna()]
        return _classification_metrics(
            part["churned"],
            part["pred"],
            None if labels == "three" else part["score"],
            p.positive_label,
        )

    assert p.metrics["overall"] == expected(df)
    for seg in ("tier", "plan"):
        want = {str(k): expected(g) for k, g in df.groupby(seg, dropna=True)}
        assert p.metrics["slices"][seg] == want
        assert list(p.metrics["slices"][seg]) == sorted(want)


def test_regression_profile() -> None:
    """A continuous target makes a regression profile with MAE and RMSE."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=500)
    y = 2 * x + rng.normal(size=500)
    df = pd.DataFrame({"x": x, "y": y, "yhat": 2 * x})
    p = build_profile(df, "price", target="y", prediction="yhat")
    assert p.task == "regression" and p.positive_label is None
    assert p.prediction is not None and p.prediction.type == "numeric"
    assert p.metrics["overall"]["mae"] == pytest.approx(skm.mean_absolute_error(y, 2 * x))
    assert p.metrics["overall"]["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(y, 2 * x)))


def test_json_round_trip_and_files(tmp_path: Path) -> None:
    """to_json/from_json and save/load give back an equal profile; the JSON is strict."""
    p = build_profile(
        _table(),
        "churn",
        target="churned",
        prediction="pred",
        score="score",
        segments=["tier"],
        model_version="7",
    )
    d = json.loads(p.to_json())
    assert d["format"] == PROFILE_FORMAT and d["model_version"] == "7"
    assert ReferenceProfile.from_json(p.to_json()) == p
    path = tmp_path / "profile.json"
    p.save(path)
    assert ReferenceProfile.load(path) == p


def test_unknown_format_is_refused() -> None:
    """A profile of another format is refused with a sentence naming that format."""
    d = build_profile(_table(200), "m").to_dict()
    d["format"] = "driftwarden.profile/v9"
    with pytest.raises(ValueError, match="'driftwarden.profile/v9' is not supported"):
        ReferenceProfile.from_dict(d)


def test_no_raw_rows_and_categories_are_capped() -> None:
    """A high-cardinality column is pooled after 1000 categories, so size does not grow with n."""
    rng = np.random.default_rng(5)
    ids = np.array([f"u{i}" for i in rng.permutation(20_000)], dtype=object)
    p = build_profile(pd.DataFrame({"user_id": ids, "x": rng.normal(size=20_000)}), "m")
    cats = p.features["user_id"].categories
    assert len(cats) == 1001 and cats[OTHER] == pytest.approx(19_000 / 20_000)
    assert len(p.features["x"].quantiles) == 101
    assert len(p.to_json()) < 200_000


def test_missing_column_is_named() -> None:
    """Asking for a column the table lacks names it."""
    with pytest.raises(ValueError, match="no column\\(s\\) label"):
        build_profile(_table(100), "churn", target="label")


def test_read_table_csv_and_parquet(tmp_path: Path) -> None:
    """read_table picks the reader by suffix and refuses other suffixes."""
    df = _table(50)
    df.to_csv(tmp_path / "t.csv", index=False)
    df.to_parquet(tmp_path / "t.parquet")
    assert read_table(tmp_path / "t.csv").shape == df.shape
    pd.testing.assert_frame_equal(read_table(tmp_path / "t.parquet"), df)
    with pytest.raises(ValueError, match="use a .csv or .parquet file"):
        read_table(tmp_path / "t.xlsx")


def test_module_examples_run() -> None:
    """The module docstring's example passes as a doctest."""
    import doctest

    from driftwarden.detectors import profile

    assert doctest.testmod(profile).failed == 0


@settings(max_examples=100, deadline=None)
@given(
    floats=st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=40),
    ints=st.lists(st.integers(-(2**63), 2**63 - 1), max_size=40),
    bools=st.lists(st.booleans(), max_size=40),
    objects=st.lists(st.one_of(st.none(), st.integers(-3, 3), st.text(max_size=2)), max_size=40),
)
def test_str_keys_equal_value_key_map(
    floats: list[float], ints: list[int], bools: list[bool], objects: list[Any]
) -> None:
    """The vectorised keys of a target/prediction column are ``map(value_key)``'s exactly."""
    from driftwarden.detectors.profile import _str_keys
    from driftwarden.detectors.stats import value_key

    for values, dtype in ((floats, "float64"), (ints, "int64"), (bools, "bool"), (objects, object)):
        series = pd.Series(values, dtype=dtype)
        got = _str_keys(series)
        want = series.map(value_key).astype(str).to_numpy()
        assert got.dtype == object and want.dtype == object
        assert got.tolist() == want.tolist(), dtype


def test_slices_of_a_mixed_type_segment_follow_value_key() -> None:
    """A segment column holding bools, ints, floats, numeric strings and nulls is sliced by
    each value's key (``1``, ``1.0`` and ``"1"`` one slice; ``True`` its own, ``"true"``;
    nulls in none), as ``map(value_key)`` defines it."""
    from driftwarden.detectors.profile import _classification_metrics
    from driftwarden.detectors.stats import value_key

    df = _table(1200, seed=8)
    rng = np.random.default_rng(9)
    pool = [True, False, 1, 1.0, "1", 2.5, np.int64(3), 3.0, None, np.nan, "x", "true", 10**17]
    seg = np.empty(len(df), dtype=object)
    seg[:] = [pool[i] for i in rng.integers(0, len(pool), len(df))]
    df["mixed"] = seg
    p = build_profile(df, "churn", target="churned", prediction="pred", segments=["mixed"])
    keys = df["mixed"].map(value_key, na_action="ignore")
    want = {
        str(k): _classification_metrics(g["churned"], g["pred"], None, p.positive_label)
        for k, g in df.groupby(keys, dropna=True)
    }
    assert set(want) == {"true", "false", "1", "2.5", "3", "x", "100000000000000000"}
    assert p.metrics["slices"]["mixed"] == want
    assert list(p.metrics["slices"]["mixed"]) == sorted(want)


def test_rows_without_a_score_or_prediction_are_left_out_of_the_metrics() -> None:
    """A NaN score or regression prediction aborted the profile (sklearn's "Input contains
    NaN"); such rows are left out of the metrics that need them, as rows without a target are,
    and a slice without a usable row has no baseline for them."""
    rng = np.random.default_rng(31)
    n = 2000
    df = pd.DataFrame({"y": rng.integers(0, 2, n), "score": rng.random(n)})
    df["pred"] = (df.score > 0.5).astype(int)
    df["tier"] = np.where(np.arange(n) < 10, "tiny", "big")
    df.loc[5, "score"] = np.nan
    df.loc[:9, "pred"] = None  # the whole "tiny" slice lacks a predicted label
    p = build_profile(
        df,
        "churn",
        target="y",
        prediction="pred",
        score="score",
        segments=["tier"],
        created_at="-",
    )
    ok = df.score.notna()
    assert p.metrics["overall"]["roc_auc"] == pytest.approx(
        skm.roc_auc_score(df.y[ok], df.score[ok]), rel=1e-12
    )
    has = df.pred.notna()
    assert p.metrics["overall"]["accuracy"] == pytest.approx(
        skm.accuracy_score(df.y[has], df.pred[has].astype(int)), rel=1e-12
    )
    assert "accuracy" not in p.metrics["slices"]["tier"]["tiny"]

    reg = pd.DataFrame({"y": rng.normal(size=n)})
    reg["yhat"] = reg.y + rng.normal(size=n) * 0.1
    reg.loc[3, "yhat"] = np.nan
    p = build_profile(reg, "price", target="y", prediction="yhat", created_at="-")
    keep = reg.yhat.notna()
    assert p.metrics["overall"]["n"] == n - 1
    assert p.metrics["overall"]["mae"] == pytest.approx(
        skm.mean_absolute_error(reg.y[keep], reg.yhat[keep]), rel=1e-12
    )
