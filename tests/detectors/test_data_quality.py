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
