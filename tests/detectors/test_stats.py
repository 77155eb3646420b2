"""Binned drift statistics agree with scipy on seeded data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps
from scipy.spatial.distance import jensenshannon

from driftwarden.detectors.stats import (
    bin_counts,
    categorical_keys,
    chi2_homogeneity,
    grid_cdf,
    is_numeric_like,
    js_distance,
    ks_from_grid,
    numeric_keys,
    object_keys,
    psi,
    quantile_edges,
    value_key,
    wasserstein_from_grid,
)


def _grid_counts(ref: np.ndarray, win: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    quantiles = np.quantile(ref, np.linspace(0, 1, 101))
    grid, cdf = grid_cdf(quantiles)
    return grid, cdf, bin_counts(win, grid)


def test_bins_are_right_closed() -> None:
    """A value equal to an edge falls into the bin that edge closes."""
    counts = bin_counts(np.array([-5.0, 0.0, 0.5, 1.0, 1.0, 7.0]), [0.0, 1.0])
    assert counts.tolist() == [2, 3, 1]


def test_quantile_edges_drop_ties() -> None:
    """Tied quantiles collapse into one edge so no bin is empty by construction."""
    values = np.r_[np.zeros(600), np.arange(1, 401, dtype=float)]
    edges = quantile_edges(values, 10)
    assert np.all(np.diff(edges) > 0)
    assert edges[0] == 0.0


@pytest.mark.parametrize("shift", [0.0, 0.05, 0.3])
def test_ks_matches_scipy(shift: float) -> None:
    """KS on the 101-point grid is within one grid step of scipy's exact two-sample KS."""
    rng = np.random.default_rng(11)
    ref, win = rng.normal(size=20_000), rng.normal(shift, 1.0, 5_000)
    _, cdf, counts = _grid_counts(ref, win)
    d, p = ks_from_grid(cdf, counts, n_ref=ref.size)
    exact = sps.ks_2samp(ref, win)
    assert abs(d - exact.statistic) <= 0.011
    # Same distribution of D (scipy's asymptotic mode) evaluated at our D.
    assert p == pytest.approx(sps.kstwo.sf(d, round(20_000 * 5_000 / 25_000)))
    assert (p < 0.01) == (exact.pvalue < 0.01)


def test_chi2_homogeneity_matches_contingency() -> None:
    """The 2 x k homogeneity test equals scipy.stats.chi2_contingency without correction."""
    rng = np.random.default_rng(2)
    ref = rng.multinomial(4000, [0.5, 0.3, 0.15, 0.05])
    win = rng.multinomial(900, [0.45, 0.33, 0.15, 0.07])
    stat, p, dof = chi2_homogeneity(ref / ref.sum(), win, n_ref=float(ref.sum()))
    exp = sps.chi2_contingency(np.vstack([ref, win]), correction=False)
    assert stat == pytest.approx(exp.statistic, rel=1e-9)
    assert p == pytest.approx(exp.pvalue, rel=1e-9)
    assert dof == exp.dof


def test_chi2_goodness_of_fit_matches_chisquare() -> None:
    """With an exact reference the test is scipy.stats.chisquare."""
    freqs = np.array([0.2, 0.3, 0.5])
    win = np.array([30, 25, 45])
    stat, p, _ = chi2_homogeneity(freqs, win, n_ref=None)
    exp = sps.chisquare(win, freqs * win.sum())
    assert (stat, p) == pytest.approx((exp.statistic, exp.pvalue))


def test_chi2_gof_window_mass_where_reference_has_none() -> None:
    """Mass in a bin the exact reference never saw rejects outright."""
    assert chi2_homogeneity(np.array([0.5, 0.5, 0.0]), np.array([5, 5, 1]), None)[1] == 0.0


def test_js_matches_scipy() -> None:
    """JS distance (base 2) equals scipy.spatial.distance.jensenshannon."""
    freqs = np.array([0.1, 0.2, 0.3, 0.4, 0.0])
    win = np.array([12, 30, 20, 30, 8])
    assert js_distance(freqs, win) == pytest.approx(
        jensenshannon(freqs, win / win.sum(), base=2), rel=1e-9
    )


def test_js_of_binned_normals_matches_scipy_on_same_bins() -> None:
    """JS on decile bins of seeded normals equals scipy on the same histograms."""
    rng = np.random.default_rng(4)
    ref, win = rng.normal(size=10_000), rng.normal(0.5, 1, 3_000)
    edges = quantile_edges(ref, 10)
    rf = bin_counts(ref, edges) / ref.size
    wc = bin_counts(win, edges)
    assert js_distance(rf, wc) == pytest.approx(jensenshannon(rf, wc / wc.sum(), base=2))


def test_psi_formula() -> None:
    """PSI is sum((q - p) ln(q / p)) over bins, zero for identical shares."""
    p = np.array([0.25, 0.25, 0.5])
    q = np.array([0.5, 0.25, 0.25])
    assert psi(p, q * 100) == pytest.approx(float(np.sum((q - p) * np.log(q / p))))
    assert psi(p, p * 1000) == pytest.approx(0.0)


@pytest.mark.parametrize(("shift", "scale"), [(0.0, 1.0), (0.25, 1.0), (1.0, 2.0)])
def test_wasserstein_matches_scipy(shift: float, scale: float) -> None:
    """Wasserstein-1 from grid counts is within a few percent of scipy's exact value."""
    rng = np.random.default_rng(9)
    ref, win = rng.normal(size=50_000), rng.normal(shift, scale, 20_000)
    grid, cdf, counts = _grid_counts(ref, win)
    low = float(np.sum(np.clip(grid[0] - win, 0, None)))
    high = float(np.sum(np.clip(win - grid[-1], 0, None)))
    ours = wasserstein_from_grid(grid, cdf, counts, low, high)
    exact = sps.wasserstein_distance(ref, win)
    assert ours == pytest.approx(exact, rel=0.06, abs=0.01)


def test_grid_cdf_with_ties() -> None:
    """Repeated quantiles map to the highest probability at that value."""
    grid, cdf = grid_cdf([0, 0, 0, 1, 2])
    assert grid.tolist() == [0, 1, 2]
    assert cdf.tolist() == [0.5, 0.75, 1.0]


def test_value_keys_are_repr_stable() -> None:
    """12 and 12.0 share a key; bools, floats and strings keep readable forms."""
    assert [value_key(v) for v in (12, 12.0, True, 12.5, "pro", -0.0)] == [
        "12",
        "12",
        "true",
        "12.5",
        "pro",
        "0",
    ]
    assert numeric_keys(np.array([12.0, 12.5, -1.0, 0.1])).tolist() == ["12", "12.5", "-1", "0.1"]
    assert object_keys(np.array([1, 1.0, True, "a", None], dtype=object)).tolist() == [
        "1",
        "1",
        "true",
        "a",
        None,
    ]


def _key_oracle(v: object, finite: bool) -> str | None:
    """What :func:`object_keys` gives for one value: :func:`value_key`, missing as ``None``."""
    if v is None:
        return None
    if isinstance(v, float) and (math.isnan(v) or (finite and math.isinf(v))):
        return None
    return value_key(v)


_MIXED = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**60), max_value=2**60),
    st.sampled_from([0, 1, 2**53, 10**16, -1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1.0, 2.0**53, 1e16, 0.5]),
    st.text(max_size=3),
    st.sampled_from(["1", "true", "nan"]),
)


@given(values=st.lists(_MIXED, max_size=40), finite=st.booleans())
@settings(max_examples=300, deadline=None)
def test_object_keys_equal_value_key_per_value(values: list[object], finite: bool) -> None:
    """Each value gets its own type's key, whatever equal-hashing value of another type
    (``True`` and ``1``, ``10**16`` and ``1e16``) came before it."""
    got = object_keys(values, finite=finite).tolist()
    assert got == [_key_oracle(v, finite) for v in values]


def test_categorical_keys_count_numbers_as_wrong_type() -> None:
    """Numbers in a categorical column are categories only if the reference's are numeric."""
    numeric = np.array([np.nan, 3.0, np.nan])
    text = np.array(["pro", None, None], dtype=object)
    keys, wrong = categorical_keys(numeric, text, numbers_are_categories=False)
    assert keys.tolist() == ["pro"] and wrong == 1
    keys, wrong = categorical_keys(numeric, text, numbers_are_categories=True)
    assert sorted(keys.tolist()) == ["3", "pro"] and wrong == 0


def test_numbers_are_categories_when_some_reference_category_is_a_number() -> None:
    """A code column with a string stand-in (1, 2, 3, "unknown") takes numbers; one whose
    categories are all words does not."""
    assert is_numeric_like(["1", "2", "3", "unknown"])
    assert is_numeric_like(["1.5", "2"])
    assert not is_numeric_like(["free", "pro"]) and not is_numeric_like([])


def test_sorted_bin_counts_equal_bin_counts() -> None:
    """Binning a sorted column by searching the edges gives exactly the per-value counts,
    ties on the edges included."""
    import numpy as np

    from driftwarden.detectors.stats import bin_counts, sorted_bin_counts

    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(size=5000), np.array([-1.0, 0.0, 0.0, 1.0, 2.5])])
    edges = np.array([-1.0, -0.5, 0.0, 0.0, 1.0, 2.5])
    assert np.array_equal(sorted_bin_counts(np.sort(x), edges), bin_counts(x, edges))
    assert np.array_equal(sorted_bin_counts(np.sort(x[:0]), edges), bin_counts(x[:0], edges))


@settings(max_examples=200, deadline=None)
@given(
    truth=st.lists(st.booleans(), min_size=2, max_size=200),
    seed=st.integers(0, 2**32 - 1),
    grid=st.sampled_from([0, 3, 10, 1000]),
)
def test_binary_roc_auc_equals_sklearn(truth: list[bool], seed: int, grid: int) -> None:
    """The rank-sum AUC is sklearn's roc_auc_score within 1e-12 (ties included: ``grid``
    rounds the scores onto few values); one class and non-finite scores are sklearn's own."""
    import warnings

    from sklearn import metrics as skm

    from driftwarden.detectors.stats import binary_roc_auc

    t = np.array(truth, dtype=bool)
    s = np.random.default_rng(seed).random(t.size)
    if grid:
        s = np.round(s * grid) / grid
    if 0 < t.sum() < t.size:
        assert binary_roc_auc(t, s) == pytest.approx(skm.roc_auc_score(t, s), rel=1e-12, abs=1e-15)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert np.isnan(binary_roc_auc(t, s))
    with pytest.raises(ValueError):
        binary_roc_auc(t, np.where(np.arange(t.size) == 0, np.nan, s))
