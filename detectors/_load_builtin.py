"""Importing this module registers every built-in detector (imports only, for side effects)."""

from . import (  # noqa: F401
    concept_drift,
    data_quality,
    feature_drift,
    prediction_drift,
    sequential,
    slice_performance,
)
