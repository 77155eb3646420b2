"""Data quality against the reference: the seed's incidents are caught, clean data is not."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pytest

from driftwarden.detectors.batch import Batch
from driftwarden.detectors.data_quality import DataQuality
from driftwarden.detectors.profile import ReferenceProfile, build_profile

N_REF = 20_000


def _days(rng: np.random.Generator, n: int) -> np.ndarray:
    """days_since_last_login: median about 12, about 1 % exact zeros."""
    days = np.round(rng.exponential(16.0, n)) + 1
    days[rng.random(n) < 0.01] = 0
    return days


def _frame(rng: np.random.Generator, n: int) -> pd.DataFrame:
    days = _days(rng, n)
    days[rng.random(n) < 0.01] = np.nan
    return pd.DataFrame(
        {
            "days_since_last_login": days,
            "user_age": rng.integers(18, 81, n).astype(float),
            "monthly_spend": rng.gamma(2.0, 30.0, n),
            "plan": rng.choice(["free", "pro", "team"], n, p=[0.6, 0.3, 0.1]),
        }
    )


@pytest.fixture(scope="module")
def profile() -> ReferenceProfile:
    """The churn model's reference, from a seeded clean table."""
    return build_profile(_frame(np.random.default_rng(0), N_REF), "churn", created_at="-")


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    rows = df.astype(object).where(df.notna(), None).to_dict("records")
    return [{"features": r} for r in rows]


def _window(seed: int, n: int = 1000) -> pd.DataFrame:
    return _frame(np.random.default_rng(seed), n)


def _run(profile: ReferenceProfile, df: pd.DataFrame, **kw: Any) -> Any:
    det = DataQuality("quality", profile, **kw)
    det.update(Batch.from_records(_records(df)))
    return det.result()


def _checks(result: Any) -> set[tuple[str, str]]:
    return {(p["feature"], p["check"]) for p in result.evidence["problems"]}


def test_clean_windows_do_not_trigger(profile: ReferenceProfile) -> None:
    """Twenty clean windows of 1000 events raise nothing."""
    fired = [_run(profile, _window(seed)).triggered for seed in range(1, 21)]
    assert not any(fired)


def test_fill_nulls_with_zero_is_a_value_spike(profile: ReferenceProfile) -> None:
    """Incident (a): 38 % of days_since_last_login were null and got filled with 0."""
    df = _window(101)
    rng = np.random.default_rng(7)
    fresh = _days(rng, len(df))
    fresh[rng.random(len(df)) < 0.38] = 0.0  # the nulls, after the broken fill
    df["days_since_last_login"] = fresh
    r = _run(profile, df)
    assert r.triggered
    spike = [p for p in r.evidence["problems"] if p["check"] == "value_spike"]
    assert [(p["feature"], p["value"]) for p in spike] == [("days_since_last_login", "0")]
    assert spike[0]["observed"] > 0.35
    assert spike[0]["expected"] == pytest.approx(
        profile.features["days_since_last_login"].value_shares["0"], abs=1e-6
    )
    assert spike[0]["expected"] < 0.02
    # Nothing else in that window is broken.
    assert {f for f, _ in _checks(r)} == {"days_since_last_login"}


def test_user_age_all_zero_is_caught(profile: ReferenceProfile) -> None:
    """Incident (b): user_age is 0 for every request — constant, spike and out of range."""
    df = _window(102)
    df["user_age"] = 0.0
    r = _run(profile, df)
    assert r.triggered
    checks = {c for f, c in _checks(r) if f == "user_age"}
    assert {"constant", "value_spike", "out_of_range"} <= checks
    assert {f for f, _ in _checks(r)} == {"user_age"}


def test_null_rate_increase(profile: ReferenceProfile) -> None:
    """A null rate of 15 % against 1 % is flagged with both rates."""
    df = _window(103)
    df.loc[df.sample(frac=0.15, random_state=1).index, "monthly_spend"] = np.nan
    r = _run(profile, df)
    p = [p for p in r.evidence["problems"] if p["check"] == "null_rate"]
    assert [x["feature"] for x in p] == ["monthly_spend"]
    assert p[0]["observed"] == pytest.approx(0.15, abs=0.01)


def test_tiny_window_does_not_page(profile: ReferenceProfile) -> None:
    """Three nulls in 60 events (5 %) are not significant evidence of a rise above 6 %."""
    df = _window(104, 60)
    df["monthly_spend"] = df["monthly_spend"].astype(float)
    df.loc[df.index[:3], "monthly_spend"] = np.nan
    assert not _run(profile, df).triggered


def test_window_below_min_samples_never_triggers(profile: ReferenceProfile) -> None:
    """Fewer events than min_samples: no verdict, and the evidence says why."""
    df = _window(105, 20)
    df["user_age"] = 0.0
    r = _run(profile, df)
    assert not r.triggered and "min_samples" in r.evidence["note"]


def test_out_of_range_new_category_absent_and_type(profile: ReferenceProfile) -> None:
    """Out-of-range numbers, unseen categories, a missing feature and wrong types are named."""
    df = _window(106)
    df.loc[df.index[:100], "monthly_spend"] = 1e6
    df.loc[df.index[:80], "plan"] = "enterprise"
    recs = _records(df)
    for r in recs[:200]:
        r["features"]["user_age"] = "forty"
    for r in recs:
        del r["features"]["days_since_last_login"]
    det = DataQuality("quality", profile)
    det.update(Batch.from_records(recs))
    checks = _checks(det.result())
    assert {
        ("monthly_spend", "out_of_range"),
        ("plan", "new_category"),
        ("days_since_last_login", "absent"),
        ("user_age", "type"),
    } <= checks


def test_ordinary_mix_shift_is_not_a_spike(profile: ReferenceProfile) -> None:
    """free going 60 % → 72 % is a mix shift for drift detection, not broken input."""
    df = _window(107)
    df["plan"] = np.random.default_rng(3).choice(
        ["free", "pro", "team"], len(df), p=[0.72, 0.2, 0.08]
    )
    assert not _run(profile, df).triggered


def test_micro_batches_add_up_and_state_round_trips(profile: ReferenceProfile) -> None:
    """Ten micro-batches, with a JSON state round-trip in between, equal one big batch."""
    df = _window(108)
    df.loc[df.index[:400], "days_since_last_login"] = 0.0
    recs = _records(df)
    whole = DataQuality("quality", profile)
    whole.update(Batch.from_records(recs))
    det = DataQuality("quality", profile)
    for i in range(0, len(recs), 100):
        det.update(Batch.from_records(recs[i : i + 100]))
        if i == 500:
            restored = DataQuality("quality", profile)
            restored.load_state(json.loads(json.dumps(det.state_dict())))
            det = restored
    assert det.result() == whole.result()
    assert det.result().triggered


def test_features_subset_and_bad_params(profile: ReferenceProfile) -> None:
    """Only the listed features are checked; unknown features and params are refused."""
    df = _window(109)
    df["user_age"] = 0.0
    assert not _run(profile, df, features=["plan"]).triggered
    with pytest.raises(ValueError, match="names feature\\(s\\) nope"):
        DataQuality("q", profile, features=["nope"])
    with pytest.raises(ValueError, match="data_quality detector 'q'"):
        DataQuality("q", profile, max_null_rate_increase=2.0)
    with pytest.raises(ValueError, match="needs a reference profile"):
        DataQuality("q", None)


def _reference_update_feature(chk: Any, acc: dict[str, Any], col: Any) -> None:
    """The accumulators' definition: ``DataQuality._update_feature`` as it was written with
    pandas (value_counts, get_indexer, isin), kept here to check the faster one against."""
    from driftwarden.detectors.data_quality import _SKETCH, _merge_sketch
    from driftwarden.detectors.stats import categorical_keys, numeric_keys

    acc["absent"] += int(col.absent.sum())
    acc["null"] += int(col.null.sum())
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
        counts[pos[hit]] = 0
        top = np.argsort(-counts, kind="stable")[: _SKETCH + 1]
        top = top[counts[top] > 0]
        _merge_sketch(acc["sketch"], list(numeric_keys(uniq[top])), counts[top].tolist())
    else:
        keys_arr, wrong = categorical_keys(col.numeric, col.text, chk.numbers_are_categories)
        acc["wrong_type"] += wrong
        if keys_arr.size == 0:
            return
        acc["values"] += int(keys_arr.size)
        categories = pd.Index(sorted(chk.category_set), dtype=object)
        acc["new_category"] += int(np.sum(categories.get_indexer(keys_arr) < 0))
        vc = pd.Series(keys_arr, dtype=object).value_counts()
        for key in chk.known:
            acc["known"][key] += int(vc.get(key, 0))
        rest = vc[~vc.index.isin(chk.known)]
        head = rest.iloc[: _SKETCH + 1]
        _merge_sketch(acc["sketch"], [str(k) for k in head.index], head.tolist())
        lo_key, hi_key = str(min(vc.index)), str(max(vc.index))
    acc["lo"] = lo_key if acc["lo"] is None else min(acc["lo"], lo_key)
    acc["hi"] = hi_key if acc["hi"] is None else max(acc["hi"], hi_key)


def test_accumulators_equal_the_pandas_definition_batch_by_batch() -> None:
    """Every counter, the exact counts of known values, the heavy-hitter sketch and the
    smallest/largest key come out as the pandas definition gives them, over batches with
    nulls, absent values, wrong types, unseen categories, numeric-like categories, many
    distinct values with tied counts (past the sketch's 33), integral and continuous
    numbers, and a constant feature."""
    import copy

    rng = np.random.default_rng(11)
    n_ref = 4000
    ref = pd.DataFrame(
        {
            "cont": rng.normal(size=n_ref),
            "ints": rng.integers(0, 6, n_ref).astype(float),
            "const": np.zeros(n_ref),
            "plan": rng.choice(["free", "pro", "team", "enterprise"], n_ref),
            "code": rng.choice(["10", "20", "30"], n_ref),  # numeric-like categories
            "ids": [f"id{i % 400}" for i in range(n_ref)],
        }
    )
    prof = build_profile(ref, "m")
    fast = DataQuality("dq", prof)
    slow = DataQuality("dq", prof)
    slow_accs = copy.deepcopy(slow._accs)

    def value(kind: str, i: int) -> Any:
        r = rng.random()
        if r < 0.04:
            return None
        if r < 0.06:
            return "oops" if kind in ("cont", "ints", "const") else 7.5
        if kind == "cont":
            return float(rng.normal()) if rng.random() < 0.7 else float(rng.integers(-3, 3))
        if kind == "ints":
            return float(rng.integers(0, 9))
        if kind == "const":
            return 0.0
        if kind == "plan":
            return str(rng.choice(["free", "pro", "team", "enterprise", "trial", "gold"]))
        if kind == "code":
            return str(rng.choice(["10", "20", "30", "40"])) if rng.random() < 0.8 else 20
        return f"id{int(rng.integers(0, 60)) + (i % 3) * 1000}"  # > 33 distinct, ties

    kinds = ["cont", "ints", "const", "plan", "code", "ids"]
    for size in (1, 7, 200, 1024, 3000, 64):
        rows = []
        for i in range(size):
            feats = {k: value(k, i) for k in kinds if rng.random() > 0.02}  # some absent
            rows.append({"features": feats})
        batch = Batch.from_records(rows)
        fast.update(batch)
        for f in slow.features:
            acc = slow_accs[f]
            acc["rows"] += batch.n
            col = batch.features.get(f)
            if col is None:
                acc["absent"] += batch.n
                continue
            _reference_update_feature(slow._checks[f], acc, col)
        for f in kinds:
            assert fast._accs[f] == slow_accs[f], (size, f)
            assert list(fast._accs[f]["sketch"]) == list(slow_accs[f]["sketch"]), (size, f)


def test_range_margin_is_a_share_of_the_reference_width() -> None:
    """The reference range is widened by range_margin times its width, as documented — not
    times the values' size, which for values far from 0 (kelvins) switched the check off."""
    rng = np.random.default_rng(7)
    prof = build_profile(
        pd.DataFrame({"temp_k": rng.uniform(280.0, 310.0, 5000)}), "m", created_at="-"
    )
    fp = prof.features["temp_k"]
    assert fp.min is not None and fp.max is not None
    det = DataQuality("quality", prof)
    pad = 0.05 * (fp.max - fp.min)
    assert det._checks["temp_k"].low == pytest.approx(fp.min - pad)
    assert det._checks["temp_k"].high == pytest.approx(fp.max + pad)
    window = rng.uniform(280.0, 310.0, 1000)
    window[:300] = rng.uniform(318.0, 325.0, 300)
    det.update(Batch.from_records([{"features": {"temp_k": float(v)}} for v in window]))
    assert ("temp_k", "out_of_range") in _checks(det.result())
    # A constant reference has no width: its value's size sets the margin.
    const = build_profile(pd.DataFrame({"k": np.full(100, 40.0)}), "m", created_at="-")
    chk = DataQuality("quality", const)._checks["k"]
    assert (chk.low, chk.high) == pytest.approx((38.0, 42.0))


def test_mixed_number_and_string_categories_accept_numbers() -> None:
    """A code column whose reference mixes numbers and a string stand-in (1, 2, 3, "unknown"):
    numbers are its categories, not type errors, and a window equal to the reference passes."""
    rng = np.random.default_rng(8)
    vals = [int(v) if v != "unknown" else v for v in rng.choice([1, 2, 3, "unknown"], 3000)]
    prof = build_profile(pd.DataFrame({"zip": pd.Series(vals, dtype=object)}), "m", created_at="-")
    det = DataQuality("quality", prof)
    det.update(Batch.from_records([{"features": {"zip": v}} for v in vals[:1000]]))
    r = det.result()
    assert not r.triggered and r.evidence["problems"] == []
    det.reset()
    det.update(Batch.from_records([{"features": {"zip": v}} for v in [7] * 100]))
    assert _checks(det.result()) >= {("zip", "new_category")}
