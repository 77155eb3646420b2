"""Feature drift: FDR keeps clean windows quiet, real shifts are found, state is mergeable."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from driftwarden.detectors.batch import Batch, FeatureColumn
from driftwarden.detectors.feature_drift import FeatureDrift, columns_batch
from driftwarden.detectors.profile import FeatureProfile, ReferenceProfile, build_profile
from driftwarden.detectors.stats import bin_counts, grid_cdf, psi, wasserstein_from_grid

N_FEATURES = 50


@pytest.fixture(scope="module")
def clean_profile() -> ReferenceProfile:
    """50 independent numeric features, 5000 reference rows."""
    rng = np.random.default_rng(100)
    ref = pd.DataFrame({f"f{i}": rng.normal(size=5000) for i in range(N_FEATURES)})
    return build_profile(ref, "wide", created_at="-")


def _clean_window(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {f"f{i}": rng.normal(size=n) for i in range(N_FEATURES)}


def test_fdr_keeps_clean_windows_within_budget(clean_profile: ReferenceProfile) -> None:
    """50 clean features x 200 windows of 1000 rows: the verdict fires in about 5 % or fewer.

    psi/js/wasserstein flag only what the chi-square test (BH) also rejects, so chi2 bounds
    them; ks is the other test family; js is the default method.
    """
    rng = np.random.default_rng(200)
    methods = ["chi2", "ks", "js"]
    dets = {m: FeatureDrift("drift", clean_profile, method=m) for m in methods}
    fired = dict.fromkeys(methods, 0)
    for _ in range(200):
        batch = columns_batch(_clean_window(rng, 1000))
        for m, det in dets.items():
            det.reset()
            det.update(batch)
            fired[m] += det.result().triggered
    print(f"FDR-controlled verdicts on 200 clean windows: {fired}")
    assert all(f / 200 <= 0.075 for f in fired.values()), fired


def test_fixed_psi_rule_fires_far_more_on_small_windows(clean_profile: ReferenceProfile) -> None:
    """A fixed 'any PSI > 0.1' rule on 200-row windows fires on most clean windows; ours doesn't."""
    rng = np.random.default_rng(201)
    det = FeatureDrift("drift", clean_profile, method="psi", threshold=0.1)
    rule_fired = ours_fired = 0
    per_feature = []
    for _ in range(200):
        win = _clean_window(rng, 200)
        psis = [
            psi(
                np.asarray(clean_profile.features[k].bin_freqs),
                bin_counts(v, clean_profile.features[k].bin_edges),
            )
            for k, v in win.items()
        ]
        per_feature.append(np.mean(np.asarray(psis) > 0.1))
        rule_fired += max(psis) > 0.1
        det.reset()
        det.update(columns_batch(win))
        ours_fired += det.result().triggered
    print(
        f"200-row clean windows: fixed PSI>0.1 fired in {rule_fired}/200 windows "
        f"({np.mean(per_feature):.0%} of single features); FDR-controlled psi in {ours_fired}/200"
    )
    # Measured here with decile bins: ~3 % of single clean features exceed PSI 0.1 at 200 rows,
    # so over 50 features the fixed rule fires on most windows.
    assert rule_fired >= 100
    assert ours_fired <= 15
    assert rule_fired >= 5 * max(ours_fired, 1)


@pytest.fixture(scope="module")
def big_profile() -> ReferenceProfile:
    """One feature, 100 000 reference rows."""
    rng = np.random.default_rng(300)
    return build_profile(pd.DataFrame({"x": rng.normal(size=100_000)}), "big", created_at="-")


@pytest.mark.parametrize("method", ["ks", "chi2", "js", "wasserstein"])
def test_quarter_sigma_shift_on_100k_rows_is_caught(
    big_profile: ReferenceProfile, method: str
) -> None:
    """A 0.25 sigma mean shift on 100k rows is flagged by the tests and the JS / Wasserstein cuts."""
    rng = np.random.default_rng(301)
    det = FeatureDrift("drift", big_profile, method=method)
    det.update(columns_batch({"x": rng.normal(0.25, 1.0, 100_000)}))
    r = det.result()
    assert r.triggered
    assert r.evidence["top"][0]["feature"] == "x"


def test_fixed_psi_misses_the_quarter_sigma_shift(big_profile: ReferenceProfile) -> None:
    """The same shift has PSI of about 0.06: a fixed PSI > 0.1 rule misses it (honest contrast)."""
    rng = np.random.default_rng(301)
    det = FeatureDrift("drift", big_profile, method="psi", threshold=0.1)
    det.update(columns_batch({"x": rng.normal(0.25, 1.0, 100_000)}))
    r = det.result()
    assert r.statistic is not None and 0.04 < r.statistic < 0.1
    assert not r.triggered


def test_negligible_shift_on_big_window_is_not_flagged(big_profile: ReferenceProfile) -> None:
    """0.03 sigma on 100k rows is significant but its JS effect is below the threshold."""
    rng = np.random.default_rng(302)
    det = FeatureDrift("drift", big_profile, method="js")
    det.update(columns_batch({"x": rng.normal(0.03, 1.0, 100_000)}))
    r = det.result()
    assert not r.triggered and r.p_value is not None and r.p_value < 0.05


def test_categorical_mix_change_and_evidence_order() -> None:
    """A category mix change is flagged and the evidence lists flagged features by effect."""
    rng = np.random.default_rng(400)
    n = 20_000
    ref = pd.DataFrame(
        {
            "plan": rng.choice(["free", "pro", "team"], n, p=[0.6, 0.3, 0.1]),
            "a": rng.normal(size=n),
            "b": rng.normal(size=n),
        }
    )
    prof = build_profile(ref, "m", created_at="-")
    det = FeatureDrift("drift", prof, method="chi2")
    det.update(
        columns_batch(
            {
                "plan": rng.choice(["free", "pro", "team", "new"], 5000, p=[0.4, 0.3, 0.2, 0.1]),
                "a": rng.normal(1.0, 1.0, 5000),
                "b": rng.normal(size=5000),
            }
        )
    )
    r = det.result()
    top = r.evidence["top"]
    assert [t["feature"] for t in top] == sorted(
        ["plan", "a"], key=lambda f: -next(t["statistic"] for t in top if t["feature"] == f)
    )
    assert all(t["p_adjusted"] <= 0.05 for t in top)
    assert r.evidence["n_flagged"] == 2


def test_micro_batches_merge_and_state_round_trips(clean_profile: ReferenceProfile) -> None:
    """Counts from many micro-batches (through a JSON checkpoint) equal one batch's."""
    rng = np.random.default_rng(500)
    win = _clean_window(rng, 3000)
    win["f3"] = win["f3"] + 0.5
    whole = FeatureDrift("drift", clean_profile, method="wasserstein")
    whole.update(columns_batch(win))
    det = FeatureDrift("drift", clean_profile, method="wasserstein")
    for i in range(0, 3000, 500):
        det.update(columns_batch({k: v[i : i + 500] for k, v in win.items()}))
        if i == 1000:
            restored = FeatureDrift("drift", clean_profile, method="wasserstein")
            restored.load_state(json.loads(json.dumps(det.state_dict())))
            det = restored
    a, b = det.result(), whole.result()
    assert a.triggered and [t["feature"] for t in a.evidence["top"]] == ["f3"]
    assert a.statistic == pytest.approx(b.statistic, rel=1e-9)
    assert a.p_value == pytest.approx(b.p_value, rel=1e-9)


def test_nulls_and_wrong_types_are_left_to_data_quality(clean_profile: ReferenceProfile) -> None:
    """Null and text values are not counted; features with too few values are skipped."""
    rng = np.random.default_rng(600)
    win = _clean_window(rng, 1000)
    win["f0"] = np.full(1000, np.nan)
    det = FeatureDrift("drift", clean_profile, features=["f0", "f1"])
    det.update(columns_batch(win))
    r = det.result()
    assert r.evidence["skipped"] == ["f0"] and r.evidence["tested"] == 1


def test_parameters_are_validated(clean_profile: ReferenceProfile) -> None:
    """Bad methods, unknown parameters, unknown features and a missing profile are refused."""
    with pytest.raises(ValueError, match="feature_drift detector 'd': method"):
        FeatureDrift("d", clean_profile, method="kl")
    with pytest.raises(ValueError, match="names feature\\(s\\) zzz"):
        FeatureDrift("d", clean_profile, features=["zzz"])
    with pytest.raises(ValueError, match="needs a reference profile"):
        FeatureDrift("d", None)
    schema = FeatureDrift.params_schema
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) >= {"method", "threshold", "features", "fdr", "alpha"}


def _direct_numeric_counts(fp: FeatureProfile, x: np.ndarray) -> dict[str, object]:
    """Unsorted, per-value binning of a numeric feature: the reference for the fast path."""
    grid, _ = grid_cdf(fp.quantiles)
    v = x[~np.isnan(x)]
    return {
        "n": v.size,
        "coarse": bin_counts(v, fp.bin_edges),
        "fine": bin_counts(v, grid),
        "low": float(np.sum(np.clip(grid[0] - v, 0.0, None))),
        "high": float(np.sum(np.clip(v - grid[-1], 0.0, None))),
    }


def test_numeric_counts_equal_per_value_binning() -> None:
    """Sorted-column binning (NaN dropped, tails outside the grid) equals per-value binning."""
    rng = np.random.default_rng(900)
    prof = build_profile(pd.DataFrame({"x": rng.normal(size=4000)}), "m", created_at="-")
    x = np.r_[rng.normal(0.3, 1.5, 3000), [np.nan] * 50, [-9.0, 9.0, np.inf, -np.inf]]
    x = x[rng.permutation(x.size)]
    det = FeatureDrift("drift", prof, method="wasserstein")
    for part in np.array_split(x, 7):
        det.update(columns_batch({"x": part}))
    got = det.state_dict()["state"]["features"]["x"]
    want = _direct_numeric_counts(prof.features["x"], x)
    assert got["n"] == want["n"]
    assert got["coarse"] == list(want["coarse"]) and got["fine"] == list(want["fine"])
    # Infinite tails (never from events: the decoder refuses inf) are capped at the largest
    # float, so the state stays JSON for the checkpoint.
    assert want["low"] == want["high"] == np.inf
    assert got["low"] == got["high"] == np.finfo(np.float64).max

    finite = x[np.isfinite(x)]
    det.reset()
    det.update(columns_batch({"x": finite}))
    got = det.state_dict()["state"]["features"]["x"]
    want = _direct_numeric_counts(prof.features["x"], finite)
    assert got["low"] == pytest.approx(want["low"], rel=1e-12)
    assert got["high"] == pytest.approx(want["high"], rel=1e-12)


def test_ks_and_chi2_p_values_match_scipy_on_the_same_counts() -> None:
    """End to end, the detector's p-values are scipy's on the binned window (to 1e-12)."""
    rng = np.random.default_rng(901)
    n_ref, n = 20_000, 5_000
    ref = pd.DataFrame(
        {
            "x": rng.normal(size=n_ref),
            "plan": rng.choice(["free", "pro", "team"], n_ref, p=[0.6, 0.3, 0.1]),
        }
    )
    prof = build_profile(ref, "m", created_at="-")
    x = rng.normal(0.1, 1.0, n)
    plan = rng.choice(np.array(["free", "pro", "team", "new", None], dtype=object), n)
    batch = columns_batch({"x": x, "plan": plan})
    fp_x, fp_plan = prof.features["x"], prof.features["plan"]

    det = FeatureDrift("drift", prof, method="ks", fdr="none", threshold=0.999)
    det.update(batch)
    p_of = {t["feature"]: t["p_value"] for t in det.result().evidence["top"]}
    grid, cdf = grid_cdf(fp_x.quantiles, fp_x.quantile_cdf)
    d = np.max(np.abs(np.cumsum(bin_counts(x, grid))[:-1] / n - cdf))
    en = round(n * fp_x.n / (n + fp_x.n))
    assert p_of["x"] == pytest.approx(sps.kstwo.sf(d, en), rel=1e-12, abs=1e-300)

    names = ["free", "pro", "team"]
    window = [int(np.sum(plan == c)) for c in names] + [int(np.sum(plan == "new"))]
    reference = [fp_plan.categories[c] * fp_plan.n for c in names] + [0.0]
    table = np.array([reference, window], dtype=np.float64)
    table = table[:, table.sum(axis=0) > 0]
    stat, p_scipy, _, _ = sps.chi2_contingency(table, correction=False)
    assert p_of["plan"] == pytest.approx(p_scipy, rel=1e-9, abs=1e-300)
    assert det.state_dict()["state"]["features"]["plan"]["n"] == int(np.sum(plan != None))  # noqa: E711


def test_categorical_counts_skip_nulls_and_pool_unknown_categories() -> None:
    """Text nulls (None and NaN) are skipped, unseen categories pool into "other", and
    numbers count as categories when the reference categories are numeric-like."""
    ref = pd.DataFrame(
        {"plan": ["a", "b", "c", "a"] * 100, "level": np.array(["1", "2", "3", "2"] * 100)}
    )
    prof = build_profile(ref, "m", created_at="-")
    level = FeatureColumn(
        numeric=np.array([np.nan, 1.0, 2.0, 7.5, np.nan, np.nan, 3.0]),
        text=np.array(["3", None, None, None, "x", None, None], dtype=object),
        null=np.array([False, False, False, False, False, True, False]),
        absent=np.zeros(7, dtype=bool),
    )
    batch = columns_batch({"plan": np.array(["a", None, "z", np.nan, "b", "y", "a"], dtype=object)})
    batch.features["level"] = level
    det = FeatureDrift("drift", prof, method="chi2", min_samples=1)
    det.update(batch)
    state = det.state_dict()["state"]["features"]
    order = [c for c in prof.features["plan"].categories if c != "__other__"]
    want = {"a": 2, "b": 1, "c": 0}
    assert state["plan"] == {"n": 5, "coarse": [want[c] for c in order] + [2]}
    order = [c for c in prof.features["level"].categories if c != "__other__"]
    want = {"1": 1, "2": 1, "3": 2}
    assert state["level"] == {"n": 6, "coarse": [want[c] for c in order] + [2]}


def test_values_near_the_float_limit_keep_the_state_json(clean_profile: ReferenceProfile) -> None:
    """Valid values near the float limit overflow the wasserstein tail sums: capped, the state
    round-trips through the checkpoint encoding (orjson writes inf as null) and drift shows."""
    import orjson

    rng = np.random.default_rng(501)
    win = _clean_window(rng, 2000)
    win["f5"] = np.where(rng.random(2000) < 0.5, 1.7976931348623157e308, -1.7976931348623157e308)
    det = FeatureDrift("drift", clean_profile, method="wasserstein")
    det.update(columns_batch(win))
    state = orjson.loads(orjson.dumps(det.state_dict(), option=orjson.OPT_SERIALIZE_NUMPY))
    again = FeatureDrift("drift", clean_profile, method="wasserstein")
    again.load_state(state)
    result = again.result()
    assert result.triggered and result.evidence["top"][0]["feature"] == "f5"


def test_ks_on_a_discrete_feature_reads_the_exact_reference_cdf() -> None:
    """A 0/1 feature with 30.95 % zeros: the quantile grid alone puts the reference CDF at 0
    at 30 %, an error a large window of the same distribution finds "significant". The profile
    stores the exact CDF at the grid points, and KS reads it."""
    ref = np.r_[np.zeros(61_900), np.ones(138_100)]
    prof = build_profile(pd.DataFrame({"flag": ref}), "m", created_at="-")
    fp = prof.features["flag"]
    assert sorted(set(fp.quantiles)) == [0.0, 1.0]
    assert fp.quantile_cdf[0] == pytest.approx(0.3095) and fp.quantile_cdf[-1] == 1.0
    det = FeatureDrift("drift", prof, method="ks")
    det.update(columns_batch({"flag": np.r_[np.zeros(61_900), np.ones(138_100)]}))
    r = det.result()
    assert r.statistic == pytest.approx(0.0, abs=1e-12) and r.p_value == 1.0
    assert not r.triggered


def test_profiles_without_the_exact_cdf_still_use_the_quantile_grid() -> None:
    """A profile written before quantile_cdf was stored loads and is read off the grid's
    probabilities, as before."""
    rng = np.random.default_rng(902)
    prof = build_profile(pd.DataFrame({"x": rng.normal(size=3000).round(1)}), "m", created_at="-")
    old = prof.to_dict()
    del old["features"]["x"]["quantile_cdf"]
    legacy = ReferenceProfile.from_dict(old)
    assert legacy.features["x"].quantile_cdf == []
    x = rng.normal(0.2, 1.0, 2000).round(1)
    det = FeatureDrift("drift", legacy, method="ks", fdr="none", threshold=0.999)
    det.update(columns_batch({"x": x}))
    grid, cdf = grid_cdf(legacy.features["x"].quantiles)
    d = np.max(np.abs(np.cumsum(bin_counts(x, grid))[:-1] / x.size - cdf))
    assert det.result().statistic == pytest.approx(d, rel=1e-12)
    bad = prof.to_dict()
    bad["features"]["x"]["quantile_cdf"] = [0.5]
    with pytest.raises(ValueError, match="1 quantile_cdf values for 101 quantiles"):
        ReferenceProfile.from_dict(bad)


def test_mixed_number_and_string_categories_count_numbers_as_categories() -> None:
    """A code column with a string stand-in (1, 2, 3, "unknown"): events sent with the same
    types are counted in full, and a window equal to the reference does not drift."""
    rng = np.random.default_rng(903)
    vals = [int(v) if v != "unknown" else v for v in rng.choice([1, 2, 3, "unknown"], 3000)]
    prof = build_profile(pd.DataFrame({"zip": pd.Series(vals, dtype=object)}), "m", created_at="-")
    det = FeatureDrift("drift", prof, method="psi")
    det.update(Batch.from_records([{"features": {"zip": v}} for v in vals[:1000]]))
    assert det.state_dict()["state"]["features"]["zip"]["n"] == 1000
    assert not det.result().triggered


def test_wasserstein_statistic_stays_finite_near_the_float_limit(
    clean_profile: ReferenceProfile,
) -> None:
    """Values near the float limit on both sides of the reference: the statistic is capped at
    the largest float (as the tail sums are), so the result stays JSON."""
    det = FeatureDrift("drift", clean_profile, method="wasserstein", min_samples=1)
    det.update(Batch.from_records([{"features": {"f0": v}} for v in (1e308, -1e308)]))
    r = det.result()
    assert r.statistic is not None and np.isfinite(r.statistic)
    json.dumps(r.to_dict(), allow_nan=False)
    big = float(np.finfo(np.float64).max)
    assert (
        wasserstein_from_grid(
            np.array([0.0, 1.0]), np.array([0.5, 1.0]), np.array([1, 0, 1]), big, big
        )
        == big
    )
