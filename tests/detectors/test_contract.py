"""One contract suite over every registered detector (river's ``check_estimator`` style).

Each detector class provides ``_unit_test_params()``: a dict (or a list of dicts) with
``kwargs`` (its keyword parameters), ``profile`` (a reference profile or ``None``) and
``batch`` (a callable ``seed -> Batch`` giving seeded micro-batches). The suite then checks the
things every detector promises: JSON-ready versioned state whose round-trip gives identical
later results, ``reset``, refusal of unknown state versions and kinds, a read-only
``result()``, a useful ``repr``, a strict parameter schema and a runnable docstring example.
"""

from __future__ import annotations

import doctest
import json
from collections.abc import Callable, Mapping
from typing import Any

import jsonschema
import pytest

from driftwarden.detectors.base import Detector, DetectorResult, StateVersionError, registry

KINDS = sorted(registry())


def _cases(cls: type[Detector]) -> list[Mapping[str, Any]]:
    params = getattr(cls, "_unit_test_params", None)
    if params is None:
        pytest.fail(f"detector class {cls.__name__} defines no _unit_test_params() classmethod.")
    got = params()
    cases = [got] if isinstance(got, Mapping) else list(got)
    for c in cases:
        missing = {"kwargs", "profile", "batch"} - set(c)
        assert not missing, f"{cls.__name__}._unit_test_params() lacks {sorted(missing)}"
    return cases


def _make(cls: type[Detector], case: Mapping[str, Any]) -> Detector:
    return cls("contract", case["profile"], **case["kwargs"])


def _feed(det: Detector, batch: Callable[[int], Any], seeds: range) -> None:
    for s in seeds:
        det.update(batch(s))


def _json(x: Any) -> Any:
    return json.loads(json.dumps(x, allow_nan=False))


def test_registry_holds_the_built_in_detectors() -> None:
    """The five built-in detector types are registered."""
    assert {
        "data_quality",
        "feature_drift",
        "prediction_drift",
        "concept_drift",
        "slice_performance",
    } <= set(KINDS)


@pytest.mark.parametrize("kind", KINDS)
def test_class_attributes_and_schema(kind: str) -> None:
    """kind, stream and a strict JSON-Schema params_schema that accepts the test kwargs."""
    cls = registry()[kind]
    assert cls.kind == kind
    assert cls.stream in ("predictions", "labeled")
    schema = cls.params_schema
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema.get("type") == "object" and schema.get("additionalProperties") is False
    for case in _cases(cls):
        jsonschema.validate(_json(case["kwargs"]), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"surely_not_a_parameter": 1}, schema)


@pytest.mark.parametrize("kind", KINDS)
def test_state_round_trip_gives_identical_later_results(kind: str) -> None:
    """Restore a JSON state into a fresh detector: both then produce identical results."""
    cls = registry()[kind]
    for case in _cases(cls):
        a = _make(cls, case)
        _feed(a, case["batch"], range(0, 3))
        state = a.state_dict()
        assert state["kind"] == kind and isinstance(state["version"], int)
        b = _make(cls, case)
        b.load_state(_json(state))
        assert _json(b.state_dict()) == _json(state)
        for s in range(3, 6):
            a.update(case["batch"](s))
            b.update(case["batch"](s))
            assert a.result().to_dict() == b.result().to_dict()
        a.reset()
        b.reset()
        a.update(case["batch"](6))
        b.update(case["batch"](6))
        assert a.result().to_dict() == b.result().to_dict()


@pytest.mark.parametrize("kind", KINDS)
def test_result_is_read_only_and_json_ready(kind: str) -> None:
    """result() does not change state; results and state serialise to strict JSON."""
    cls = registry()[kind]
    for case in _cases(cls):
        det = _make(cls, case)
        _feed(det, case["batch"], range(0, 4))
        before = _json(det.state_dict())
        r = det.result()
        assert isinstance(r, DetectorResult)
        assert r.kind == kind and r.name == "contract"
        assert isinstance(r.triggered, bool)
        assert "top" in r.evidence
        assert _json(det.state_dict()) == before
        assert DetectorResult.from_dict(_json(r.to_dict())) == DetectorResult.from_dict(r.to_dict())


@pytest.mark.parametrize("kind", KINDS)
def test_reset_starts_an_empty_window(kind: str) -> None:
    """After reset() the window is empty: nothing counted, nothing triggered."""
    cls = registry()[kind]
    for case in _cases(cls):
        det = _make(cls, case)
        _feed(det, case["batch"], range(0, 4))
        det.reset()
        r = det.result()
        assert r.n == 0 and not r.triggered


@pytest.mark.parametrize("kind", KINDS)
def test_empty_batch_changes_nothing(kind: str) -> None:
    """An empty micro-batch is accepted and leaves the state as it was."""
    cls = registry()[kind]
    for case in _cases(cls):
        det = _make(cls, case)
        det.update(case["batch"](0))
        before = _json(det.state_dict())
        det.update(case["batch"](0).select(case["batch"](0).timestamp < -1e300))
        assert _json(det.state_dict()) == before


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_version_and_other_kind_are_refused(kind: str) -> None:
    """A state of an unknown version or another detector type is refused with a sentence."""
    cls = registry()[kind]
    case = _cases(cls)[0]
    det = _make(cls, case)
    state = det.state_dict()
    with pytest.raises(StateVersionError, match=r"cannot read state version 999"):
        det.load_state({**state, "version": 999})
    with pytest.raises(StateVersionError, match="saved state is of type 'nope'"):
        det.load_state({**state, "kind": "nope"})


@pytest.mark.parametrize("kind", KINDS)
def test_repr_names_class_and_detector(kind: str) -> None:
    """repr shows the class and the detector's policy name."""
    cls = registry()[kind]
    text = repr(_make(cls, _cases(cls)[0]))
    assert text.startswith(cls.__name__ + "(") and "'contract'" in text


@pytest.mark.parametrize("kind", KINDS)
def test_docstring_example_runs(kind: str) -> None:
    """The class docstring carries a seeded example, and it passes as a doctest."""
    cls = registry()[kind]
    tests = [
        t
        for t in doctest.DocTestFinder().find(cls, cls.__name__)
        if t.name == cls.__name__ and t.examples
    ]
    assert tests, f"{cls.__name__} has no runnable example in its docstring"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for t in tests:
        runner.run(t)
    assert runner.failures == 0, f"{cls.__name__}'s docstring example fails"
