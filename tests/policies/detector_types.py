"""Detector types for policy tests: the real registry, plus stand-ins for types not written yet.

The stand-ins carry the parameter schema the design's example policy uses (DESIGN §4), so the
loader's strict parameter checks run against something real either way. Once every built-in
detector is registered, no stand-in is used.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from driftwarden.detectors.base import Detector, DetectorResult, registry

_NUMBER_0_1 = {"type": "number", "minimum": 0, "maximum": 1}

STAND_IN_SCHEMAS: dict[str, dict[str, Any]] = {
    "data_quality": {
        "type": "object",
        "properties": {
            "max_null_rate_increase": _NUMBER_0_1,
            "max_out_of_range_rate": _NUMBER_0_1,
        },
    },
    "feature_drift": {
        "type": "object",
        "properties": {
            "method": {"enum": ["psi", "js", "ks"]},
            "threshold": {"type": "number", "exclusiveMinimum": 0},
            "features": {},
        },
    },
    "prediction_drift": {
        "type": "object",
        "properties": {"method": {"enum": ["psi", "js", "ks"]}, "threshold": _NUMBER_0_1},
    },
    "slice_performance": {
        "type": "object",
        "properties": {
            "metric": {"type": "string"},
            "slice": {"type": "object"},
            "max_drop": _NUMBER_0_1,
            "min_samples": {"type": "integer", "minimum": 1},
        },
    },
    "concept_drift": {"type": "object", "properties": {"method": {"enum": ["adwin", "ddm"]}}},
}


def stand_in(kind: str) -> type[Detector]:
    """A do-nothing detector class of type ``kind`` with the stand-in schema."""

    class StandIn(Detector):
        params_schema = STAND_IN_SCHEMAS[kind]

        def __init__(self, name: str, profile: Any = None, **params: Any) -> None:
            super().__init__(name, profile)
            self.params = params

        def update(self, batch: Any) -> None:
            pass

        def result(self) -> DetectorResult:
            return DetectorResult(self.name, self.kind, False)

        def reset(self) -> None:
            pass

        def _state(self) -> dict[str, Any]:
            return {}

        def _load(self, state: Mapping[str, Any]) -> None:
            pass

    StandIn.kind = kind
    StandIn.__name__ = f"StandIn_{kind}"
    return StandIn


def detector_types() -> dict[str, type[Detector]]:
    """Every detector type a policy may use: real where registered, stand-in otherwise."""
    types: dict[str, type[Detector]] = {k: stand_in(k) for k in STAND_IN_SCHEMAS}
    types.update(registry())
    return types
