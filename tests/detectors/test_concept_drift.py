"""Tests for the concept_drift detector (river change detectors on the labeled error stream)."""

from __future__ import annotations

import doctest
import json

import jsonschema
import numpy as np
import pytest
from river import drift
from river.drift import binary

from driftwarden.detectors import concept_drift as module
from driftwarden.detectors.base import StateVersionError, registry
from driftwarden.detectors.batch import Batch
from driftwarden.detectors.concept_drift import ConceptDrift, batch_errors, label_keys
from driftwarden.detectors.profile import ReferenceProfile


def error_batch(wrong: np.ndarray) -> Batch:
    """A labeled classification batch whose prediction is wrong exactly where ``wrong``."""
    return Batch.from_records(
        [{"prediction": {"label": 1}, "label": 0 if w else 1} for w in np.asarray(wrong)]
    )


def step_stream(seed: int, before: float, after: float, at: int, n: int) -> np.ndarray:
    """Bernoulli errors with rate ``before`` up to index ``at`` and ``after`` from there."""
    rng = np.random.default_rng(seed)
    return np.r_[rng.random(at) < before, rng.random(n - at) < after]


def ramp_stream(seed: int) -> np.ndarray:
    """A gradual rise of the error rate 0.1 -> 0.6 over 3000 events (ADWIN fires repeatedly)."""
    rng = np.random.default_rng(seed)
    p = np.r_[np.full(3000, 0.1), np.linspace(0.1, 0.6, 3000), np.full(3000, 0.6)]
    return rng.random(p.size) < p


def river_indices(det, values: np.ndarray) -> list[int]:
    """Detection indices of a river detector fed ``values`` directly."""
    out = []
    for i, x in enumerate(np.asarray(values, dtype=np.float64).tolist()):
        det.update(x)
        if det.drift_detected:
            out.append(i)
    return out


def feed_in_chunks(det: ConceptDrift, wrong: np.ndarray, seed: int) -> None:
    """Feed ``wrong`` to ``det`` in seeded random micro-batch sizes."""
    rng = np.random.default_rng(seed)
    i = 0
    while i < wrong.size:
        k = int(rng.integers(1, 700))
        det.update(error_batch(wrong[i : i + k]))
        i += k


def indices(det: ConceptDrift) -> list[int]:
    """Stream indices of the reported changes in the current window."""
    return [c["index"] for c in det.result().evidence["changes"]]


def regression_profile(mae: float) -> ReferenceProfile:
    """A real ReferenceProfile for a regression model with overall MAE ``mae``."""
    return ReferenceProfile(
        model="price",
        model_version="1",
        n_rows=1000,
        created_at="2026-01-01T00:00:00Z",
        features={},
        task="regression",
        metrics={"overall": {"mae": mae, "rmse": mae * 1.3, "n": 1000}, "slices": {}},
    )


def test_registered_and_schema_accepts_unit_test_params():
    """The detector is registered under its kind and its own test kwargs satisfy its schema."""
    assert registry()["concept_drift"] is ConceptDrift
    params = ConceptDrift._unit_test_params()
    jsonschema.validate(params["kwargs"], ConceptDrift.params_schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"methd": "adwin"}, ConceptDrift.params_schema)


def test_docstring_examples_run():
    """The numpydoc examples (detection index included) are correct."""
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize(
    ("method", "river_cls"),
    [
        ("adwin", lambda: drift.ADWIN()),
        ("page_hinkley", lambda: drift.PageHinkley()),
        ("kswin", lambda: drift.KSWIN(seed=0)),
        ("ddm", lambda: binary.DDM()),
        ("hddm_a", lambda: binary.HDDMA()),
        ("hddm_w", lambda: binary.HDDMW()),
    ],
)
def test_same_detection_indices_as_river(method, river_cls):
    """With debounce 0 and both directions, every river detection is reported at its index."""
    # KSWIN runs a KS test per event (~3k events/s) and barely reacts to 0/1 input: it gets a
    # short stream with a large step.
    if method == "kswin":
        wrong = step_stream(3, 0.05, 0.8, 1000, 2000)
    else:
        wrong = ramp_stream(3)
    expected = river_indices(river_cls(), wrong)
    det = ConceptDrift("errors", method=method, debounce=0, direction="both")
    feed_in_chunks(det, wrong, seed=11)
    assert expected, "the ramp stream should make river fire at least once"
    assert indices(det) == expected[-20:]


def test_options_reach_river():
    """``options`` are passed to the river class (a smaller ADWIN delta fires later or never)."""
    wrong = step_stream(0, 0.1, 0.2, 5000, 20000)
    expected = river_indices(drift.ADWIN(delta=1e-6), wrong)
    det = ConceptDrift("errors", options={"delta": 1e-6}, debounce=0, direction="both")
    det.update(error_batch(wrong))
    assert indices(det) == expected


@pytest.mark.parametrize("seed", range(5))
def test_adwin_detects_error_rate_rise_after_5000(seed):
    """Error rate 0.1 -> 0.2 at index 5000 is detected, after the change, with sane evidence."""
    wrong = step_stream(seed, 0.1, 0.2, 5000, 20000)
    det = ConceptDrift("errors")
    feed_in_chunks(det, wrong, seed)
    r = det.result()
    assert r.triggered
    first = r.evidence["changes"][0]
    assert 5000 <= first["index"] < 7000
    assert first["direction"] == "increase"
    assert 0.07 < first["error_rate_before"] < 0.13
    assert first["error_rate_after"] > first["error_rate_before"] + 0.04
    assert r.evidence["top"][0]["index"] == first["index"]
    assert r.statistic == pytest.approx(first["error_rate_after"] - first["error_rate_before"])
    assert r.n == 20000
    assert r.evidence["window_error_rate"] == pytest.approx(wrong.mean())


@pytest.mark.parametrize("seed", range(3))
def test_no_detection_on_clean_stream(seed):
    """A stationary 20k stream with a 10 % error rate raises nothing."""
    rng = np.random.default_rng(100 + seed)
    det = ConceptDrift("errors")
    feed_in_chunks(det, rng.random(20000) < 0.1, seed)
    r = det.result()
    assert not r.triggered
    assert r.evidence["changes"] == [] and r.evidence["refires_ignored"] == 0


def test_debounce_ignores_refires_within_the_window():
    """River's repeated firing on one gradual change is reported once per debounce span."""
    wrong = ramp_stream(0)
    fired = river_indices(drift.ADWIN(), wrong)
    assert len(fired) >= 2 and fired[1] - fired[0] < 2000
    reported, last = [], None
    for i in fired:
        if last is None or i - last >= 2000:
            reported.append(i)
            last = i
    det = ConceptDrift("errors", debounce=2000)
    det.update(error_batch(wrong))
    r = det.result()
    assert indices(det) == reported
    assert r.evidence["refires_ignored"] == len(fired) - len(reported) > 0


def test_decrease_is_reported_but_does_not_trigger_by_default():
    """An error rate that falls is a change, but only ``direction='both'`` triggers on it."""
    wrong = step_stream(1, 0.3, 0.05, 4000, 8000)
    up = ConceptDrift("errors")
    both = ConceptDrift("errors", direction="both")
    up.update(error_batch(wrong))
    both.update(error_batch(wrong))
    changes = up.result().evidence["changes"]
    assert changes and all(c["direction"] == "decrease" for c in changes)
    assert not up.result().triggered
    assert both.result().triggered


def test_state_round_trip_gives_identical_later_results():
    """state_dict -> JSON -> load_state continues exactly like the original detector."""
    wrong = step_stream(2, 0.1, 0.25, 5000, 12000)
    a = ConceptDrift("errors", debounce=100)
    a.update(error_batch(wrong[:4800]))
    saved = json.loads(json.dumps(a.state_dict()))
    b = ConceptDrift("errors", debounce=100)
    b.load_state(saved)
    assert b.result() == a.result()
    for det in (a, b):
        det.update(error_batch(wrong[4800:9000]))
        det.reset()
        det.update(error_batch(wrong[9000:]))
    assert b.result().to_dict() == a.result().to_dict()
    assert b.state_dict() == a.state_dict()


def test_reset_keeps_the_river_state_and_clears_the_window():
    """A change straddling a window boundary is found at the same stream index."""
    wrong = step_stream(4, 0.1, 0.2, 5000, 15000)
    whole = ConceptDrift("errors")
    whole.update(error_batch(wrong))
    split = ConceptDrift("errors")
    split.update(error_batch(wrong[:5100]))
    split.reset()
    assert split.result().n == 0 and not split.result().triggered
    split.update(error_batch(wrong[5100:]))
    assert indices(split) == indices(whole) and indices(whole)
    assert split.result().n == 15000 - 5100
    assert split.result().evidence["events_seen"] == 15000


def test_unknown_state_version_and_method_are_refused():
    """A state of another version, or saved for another method, is refused."""
    det = ConceptDrift("errors")
    state = det.state_dict()
    with pytest.raises(StateVersionError, match="version"):
        ConceptDrift("errors").load_state({**state, "version": 99})
    with pytest.raises(ValueError, match="method"):
        ConceptDrift("errors", method="ddm").load_state(state)


def test_bad_configuration_is_refused():
    """Unknown methods, river options that do not fit, and 0/1 methods on regression fail."""
    with pytest.raises(ValueError, match="unknown method"):
        ConceptDrift("errors", method="fhddm")
    with pytest.raises(ValueError, match="options"):
        ConceptDrift("errors", options={"no_such_option": 1})
    with pytest.raises(ValueError, match="regression"):
        ConceptDrift("errors", regression_profile(2.0), method="ddm")


def test_regression_errors_are_scaled_by_reference_mae():
    """Regression errors are |value - label| / reference MAE, fed to river in that form."""
    rng = np.random.default_rng(5)
    y = rng.normal(100, 10, 6000)
    noise = np.r_[rng.normal(0, 2, 3000), rng.normal(0, 6, 3000)]
    batch = Batch.from_records(
        [
            {"prediction": {"value": float(p)}, "label": float(t)}
            for p, t in zip(y + noise, y, strict=True)
        ]
    )
    errs, task = batch_errors(batch, "regression", 2.0)
    assert task == "regression"
    np.testing.assert_allclose(errs, np.abs(noise) / 2.0)
    det = ConceptDrift("errors", regression_profile(2.0), method="page_hinkley", debounce=0)
    det.update(batch)
    expected = river_indices(drift.PageHinkley(), np.abs(noise) / 2.0)
    assert [c["index"] for c in det.result().evidence["changes"]] == expected
    assert det.result().triggered and det.result().evidence["error_scale"] == 2.0


def test_labels_compared_by_key_and_unlabeled_rows_skipped():
    """1 and 1.0 are the same class; rows without a label are not errors."""
    batch = Batch.from_records(
        [
            {"prediction": {"label": 1}, "label": 1.0},
            {"prediction": {"label": "a"}, "label": "b"},
            {"prediction": {"label": 0}},
            {"prediction": {"label": True}, "label": True},
        ]
    )
    errs, task = batch_errors(batch, None)
    assert task == "classification"
    assert errs.tolist() == [0.0, 1.0, 0.0]
    assert label_keys(np.array([2.0, None, "x"], dtype=object)).tolist() == ["2", None, "x"]
