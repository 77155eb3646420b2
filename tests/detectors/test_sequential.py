"""Tests for the CUSUM detectors (cusum on a feature, error_cusum on the labeled errors)."""

from __future__ import annotations

import doctest
import json
from fractions import Fraction

import jsonschema
import numpy as np
import pytest

from driftwarden.detectors import sequential as module
from driftwarden.detectors.base import StateVersionError
from driftwarden.detectors.batch import Batch
from driftwarden.detectors.profile import FeatureProfile, ReferenceProfile
from driftwarden.detectors.sequential import Cusum, ErrorCusum, cusum_path


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
    """k=0.25, h=24: a 0.5 sigma shift at 20000 is found after it; 20k clean samples are quiet."""
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
    det = ErrorCusum("errors", prof)
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
