"""Multiple-testing correction agrees with scipy and behaves as a correction should."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from driftwarden.detectors.fdr import adjust, reject


@pytest.mark.parametrize("method", ["bh", "by"])
def test_matches_scipy_false_discovery_control(method: str) -> None:
    """BH and BY adjusted p-values equal scipy.stats.false_discovery_control."""
    rng = np.random.default_rng(0)
    p = np.r_[rng.random(40), rng.random(10) * 1e-3]
    np.testing.assert_allclose(adjust(p, method), sps.false_discovery_control(p, method=method))


def test_bonferroni_and_none() -> None:
    """Bonferroni multiplies by the number of tests (capped at 1); none changes nothing."""
    p = np.array([0.001, 0.02, 0.5])
    np.testing.assert_allclose(adjust(p, "bonferroni"), [0.003, 0.06, 1.0])
    np.testing.assert_allclose(adjust(p, "none"), p)


def test_reject_at_level() -> None:
    """reject() compares adjusted p-values with alpha."""
    p = [0.001, 0.008, 0.039, 0.041, 0.6]
    assert reject(p, 0.05, "bh").tolist() == [True, True, False, False, False]
    assert reject(p, 0.05, "none").tolist() == [True, True, True, True, False]


def test_empty_input() -> None:
    """No p-values, no rejections."""
    assert adjust([], "bh").size == 0
    assert reject([], 0.05).size == 0


def test_unknown_method_and_bad_values_are_refused() -> None:
    """Errors name the bad method and the bad p-values in one sentence."""
    with pytest.raises(ValueError, match="unknown multiple-testing method 'holm'"):
        adjust([0.1], "holm")
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        adjust([1.5])
    with pytest.raises(ValueError, match="alpha must lie in"):
        reject([0.1], 0.0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=60))
def test_adjusted_values_are_valid_and_monotone(p: list[float]) -> None:
    """Adjusted p-values are in [0, 1], never below the raw ones, and keep the raw order."""
    arr = np.asarray(p)
    for method in ("bh", "by", "bonferroni"):
        adj = adjust(arr, method)
        assert np.all((adj >= arr - 1e-12) & (adj <= 1.0))
        order = np.argsort(arr, kind="stable")
        assert np.all(np.diff(adj[order]) >= -1e-12)


def test_bh_controls_false_alarms_under_the_global_null() -> None:
    """With 50 true nulls, BH at 0.05 rejects anything in about 5 % of repetitions."""
    rng = np.random.default_rng(1)
    any_rejected = np.mean([reject(rng.random(50), 0.05, "bh").any() for _ in range(2000)])
    uncorrected = np.mean([reject(rng.random(50), 0.05, "none").any() for _ in range(2000)])
    assert any_rejected <= 0.065
    assert uncorrected > 0.9


def test_module_examples_run() -> None:
    """The module docstring's examples pass as doctests."""
    import doctest

    from driftwarden.detectors import fdr

    result = doctest.testmod(fdr)
    assert result.attempted > 0 and result.failed == 0
