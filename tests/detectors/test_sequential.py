"""Tests for the CUSUM detectors (cusum on a feature, error_cusum on the labeled errors)."""

from __future__ import annotations

import doctest
import json
import math
from fractions import Fraction

import jsonschema
import numpy as np
import pytest

from driftwarden.detectors import sequential as module
from driftwarden.detectors.base import StateVersionError
from driftwarden.detectors.batch import Batch, FeatureColumn
from driftwarden.detectors.profile import FeatureProfile, ReferenceProfile
from driftwarden.detectors.sequential import (
    DEFAULT_ARL0,
    DEFAULT_K,
    Cusum,
    ErrorCusum,
    bernoulli_theta,
    cusum_path,
    siegmund_arl0,
    threshold_for_arl0,
)


def naive_cusum(x, s0, k, h):
    """The textbook recursion, one event at a time (the reference for the vectorised one)."""
    alarms, s, top = [], s0, s0
    for i, v in enumerate(x):
        s = max(0 * s, s + v - k)
        top = max(top, s)
        if s > h:
            alarms.append(i)
            s = 0 * s
    return alarms, s, top


def feature_batch(x: np.ndarray) -> Batch:
    """A predictions batch with one numeric feature ``x``."""
    return Batch.from_records([{"features": {"x": float(v)}} for v in x])


def test_vectorised_path_equals_the_recursion():
    """cusum_path gives the recursion's alarms, final and largest statistic on random inputs."""
    rng = np.random.default_rng(0)
    for _ in range(100):
        x = rng.normal(rng.uniform(-0.5, 1.0), 1.0, int(rng.integers(1, 2000)))
        s0, k, h = rng.uniform(0, 5), rng.uniform(0, 1), rng.uniform(1, 20)
        alarms, s, top = cusum_path(x, s0, k, h)
        e_alarms, e_s, e_top = naive_cusum(x, s0, k, h)
        assert alarms == e_alarms
        assert s == pytest.approx(e_s, abs=1e-9) and top == pytest.approx(e_top, abs=1e-9)


def test_docstring_examples_run():
    """The numpydoc examples (alarm indices) are correct."""
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def test_schemas_accept_their_test_params():
    """Each class's schema accepts its own contract kwargs and refuses unknown keys."""
    for cls in (Cusum, ErrorCusum):
        jsonschema.validate(cls._unit_test_params()["kwargs"], cls.params_schema)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"feature": "x", "kk": 1}, cls.params_schema)


@pytest.mark.parametrize("seed", range(3))
def test_half_sigma_shift_detected_and_clean_stream_quiet(seed):
    """The default bank: a 0.5 sigma shift at 20000 is found after it; 20k clean samples are quiet."""
    rng = np.random.default_rng(seed)
    x = np.r_[rng.normal(0, 1, 20000), rng.normal(0.5, 1, 2000)]
    det = Cusum("x", feature="x", mean=0.0, std=1.0, direction="up")
    det.update(feature_batch(x[:20000]))
    assert not det.result().triggered
    det.reset()
    det.update(feature_batch(x[20000:]))
    r = det.result()
    assert r.triggered
    first = r.evidence["alarms"][0]["index"]
    assert 20000 <= first < 20600
    assert r.evidence["alarm_count"] >= len(r.evidence["alarms"])


def test_reference_comes_from_the_profile_and_bank_runs_every_k():
    """Mean/std are read from the feature profile; each k of a bank gets its own h."""
    prof = ReferenceProfile(
        model="m",
        model_version="1",
        n_rows=1000,
        created_at="",
        features={"x": FeatureProfile(type="numeric", n=1000, null_rate=0.0, mean=10.0, std=2.0)},
    )
    det = Cusum("x", prof, feature="x", k=[0.25, 1.0], h=[24.0, 5.0], direction="down")
    rng = np.random.default_rng(3)
    det.update(feature_batch(rng.normal(8.0, 2.0, 500)))  # a 1 sigma fall
    r = det.result()
    assert r.evidence["reference"] == {"mean": 10.0, "std": 2.0}
    assert {a["k"] for a in r.evidence["alarms"]} == {0.25, 1.0}
    assert all(a["direction"] == "down" for a in r.evidence["alarms"])
    with pytest.raises(ValueError, match="reference mean"):
        Cusum("y", prof, feature="y")
    with pytest.raises(ValueError, match="one value per k"):
        Cusum("x", prof, feature="x", k=[0.25, 0.5], h=[1.0, 2.0, 3.0])


def test_error_cusum_uses_baseline_error_rate():
    """error_cusum standardises 0/1 errors with p = 1 - accuracy from the profile."""
    prof = ReferenceProfile(
        model="m",
        model_version="1",
        n_rows=1000,
        created_at="",
        features={},
        task="classification",
        positive_label="1",
        metrics={"overall": {"accuracy": 0.9, "n": 1000}},
    )
    rng = np.random.default_rng(8)
    wrong = np.r_[rng.random(5000) < 0.1, rng.random(4000) < 0.2]
    det = ErrorCusum("errors", prof, k=0.25, h=24.0)
    det.update(
        Batch.from_records([{"prediction": {"label": 1}, "label": 0 if w else 1} for w in wrong])
    )
    r = det.result()
    assert r.evidence["reference"]["mean"] == pytest.approx(0.1)
    # Exact arithmetic: z is 3 for an error and -1/3 otherwise, so S hits h = 24 exactly at
    # times; a float recursion would decide those ties by rounding, the detector by "S > h".
    z = [Fraction(3) if w else Fraction(-1, 3) for w in wrong]
    expected = naive_cusum(z, Fraction(0), Fraction(1, 4), Fraction(24))[0]
    assert [a["index"] for a in r.evidence["alarms"]] == expected[:20]
    assert r.triggered and r.evidence["alarms"][0]["index"] >= 5000


def test_state_round_trip_reset_and_version():
    """JSON state continues identically; reset keeps S; unknown versions are refused."""
    rng = np.random.default_rng(5)
    x = np.r_[rng.normal(0, 1, 3000), rng.normal(0.7, 1, 3000)]
    a = Cusum("x", feature="x", mean=0.0, std=1.0)
    a.update(feature_batch(x[:3100]))
    b = Cusum("x", feature="x", mean=0.0, std=1.0)
    b.load_state(json.loads(json.dumps(a.state_dict())))
    for det in (a, b):
        det.reset()
        det.update(feature_batch(x[3100:]))
    assert a.result().to_dict() == b.result().to_dict()
    whole = Cusum("x", feature="x", mean=0.0, std=1.0)
    whole.update(feature_batch(x))
    later = [al for al in whole.result().evidence["alarms"] if al["index"] >= 3100]
    assert later and a.result().evidence["alarms"][: len(later)] == later
    with pytest.raises(StateVersionError):
        b.load_state({**a.state_dict(), "version": 7})
    with pytest.raises(ValueError, match="k/h"):
        Cusum("x", feature="x", mean=0.0, std=1.0, k=0.5).load_state(a.state_dict())


def column_batch(v: np.ndarray) -> Batch:
    """A predictions batch with the numeric feature ``x``, built column-wise (fast)."""
    col = FeatureColumn(
        numeric=v.astype(np.float64),
        text=np.full(v.size, None, dtype=object),
        null=np.zeros(v.size, dtype=bool),
        absent=np.zeros(v.size, dtype=bool),
    )
    nan = np.full(v.size, np.nan)
    none = np.full(v.size, None, dtype=object)
    return Batch({"x": col}, {}, nan, nan, none, none, np.zeros(v.size))


def test_default_bank_finds_a_quarter_sigma_shift_and_stays_quiet_in_control():
    """Default bank (both directions): 200 k N(0, 1) samples, no alarm; +0.25 sigma found in 1000."""
    rng = np.random.default_rng(11)
    x = np.r_[rng.normal(0, 1, 200_000), rng.normal(0.25, 1, 3000)]
    det = Cusum("x", feature="x", mean=0.0, std=1.0)
    assert det.ks == list(DEFAULT_K)
    alarms: list[int] = []
    for start in range(0, x.size, 500):
        det.update(column_batch(x[start : start + 500]))
        alarms.extend(a["index"] for a in det.result().evidence["alarms"])
        det.reset()
    assert alarms and 200_000 <= alarms[0] < 201_000


def test_default_h_follows_from_arl0_by_siegmund():
    """Each CUSUM of the bank gets ARL0 = arl0 x (k values x directions); theta is 2k if normal."""
    det = Cusum("x", feature="x", mean=0.0, std=1.0)
    for k, h in zip(det.ks, det.hs, strict=True):
        assert siegmund_arl0(k, h, 2 * k) == pytest.approx(DEFAULT_ARL0 * 6, rel=1e-3)
    up = Cusum("x", feature="x", mean=0.0, std=1.0, direction="up", arl0=1e4)
    assert up.hs == [round(threshold_for_arl0(k, 3e4, 2 * k), 3) for k in up.ks]
    assert all(a < b for a, b in zip(up.hs, det.hs, strict=True))
    with pytest.raises(ValueError, match="arl0"):
        Cusum("x", feature="x", mean=0.0, std=1.0, k=[0.0, 0.5])


def test_bernoulli_theta_solves_the_moment_equation():
    """E[exp(theta (z - k))] = 1 for the two-point standardised 0/1 error."""
    for p in (0.01, 0.1, 0.4):
        std = (p * (1 - p)) ** 0.5
        for k in DEFAULT_K:
            t = bernoulli_theta(k, p, std)
            m = p * np.exp(t * ((1 - p) / std - k)) + (1 - p) * np.exp(t * (-p / std - k))
            assert t > 0 and m == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("kind", ["normal", "bernoulli"])
def test_measured_false_alarm_rate_matches_arl0(kind):
    """With arl0 = 20 000, 4 M in-control samples give about 200 alarms (all CUSUMs counted)."""
    rng = np.random.default_rng(21)
    n, arl0 = 4_000_000, 20_000.0
    if kind == "normal":
        det: Cusum | ErrorCusum = Cusum("x", feature="x", mean=0.0, std=1.0, arl0=arl0)
        z = rng.normal(0.0, 1.0, n)
    else:
        det = ErrorCusum("e", mean=0.1, std=0.3, arl0=arl0)
        z = ((rng.random(n) < 0.1) - 0.1).astype(np.float64) / 0.3
    alarms = 0
    for sign in det._signs:
        for k, h in zip(det.ks, det.hs, strict=True):
            s = 0.0
            for start in range(0, n, 10_000):  # short pieces: each alarm restarts a cumsum
                found, s, _ = cusum_path(sign * z[start : start + 10_000], s, k, h)
                alarms += len(found)
    # The union bound makes arl0 a floor of the run length: at most ~n / arl0 alarms.
    assert 0.5 * n / arl0 < alarms < 1.3 * n / arl0


def test_values_near_the_float_limit_keep_the_statistics_finite():
    """Two valid numbers near the float limit overflowed the cumulative sums: S became NaN for
    good (blind to a later shift) and the checkpoint (orjson writes NaN as null) did not load.
    Capped steps keep S finite, and the later shift still alarms."""
    import orjson

    big = 1.7976931348623157e308
    det = Cusum("c", feature="x", mean=0.0, std=1.0, k=0.5, h=8.0, direction="both")
    det.update(feature_batch(np.array([big, big, -big, -big])))
    assert all(math.isfinite(v) for row in det.result().evidence["statistic_now"] for v in row)
    json.dumps(det.state_dict(), allow_nan=False)
    restored = Cusum("c", feature="x", mean=0.0, std=1.0, k=0.5, h=8.0, direction="both")
    restored.load_state(orjson.loads(orjson.dumps(det.state_dict())))
    restored.reset()
    restored.update(feature_batch(np.full(100, -5.0)))
    assert any(a["direction"] == "down" for a in restored.result().evidence["alarms"])


def test_capped_steps_give_the_recursion_s_alarms():
    """Steps far beyond h + k (capped inside cusum_path) alarm and reset exactly as the
    uncapped recursion does."""
    rng = np.random.default_rng(5)
    for _ in range(50):
        x = rng.normal(0.0, 1.0, 500)
        x[rng.random(500) < 0.02] = rng.choice([-1e12, 1e12])
        s0, k, h = rng.uniform(0, 5), rng.uniform(0, 1), rng.uniform(1, 20)
        alarms, s, _ = cusum_path(x, s0, k, h)
        e_alarms, e_s, _ = naive_cusum(x, s0, k, h)
        assert alarms == e_alarms and s == pytest.approx(e_s, abs=1e-9)
