"""Pure streaming detectors: data quality, drift, concept drift, slice performance."""

from .base import Detector, DetectorResult, StateVersionError, detector_class, register, registry
from .batch import Batch, FeatureColumn

__all__ = [
    "Batch",
    "Detector",
    "DetectorResult",
    "FeatureColumn",
    "StateVersionError",
    "detector_class",
    "register",
    "registry",
]
