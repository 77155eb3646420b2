"""A small producer helper for services that publish prediction and label events.

>>> from driftwarden.daemon.client import prediction_event
>>> raw = prediction_event("churn", "7", {"plan": "pro"}, {"label": 1, "score": 0.8},
...                        prediction_id="p-1", timestamp="2026-11-26T10:15:00Z")
>>> raw[:45]
b'{"schema":"driftwarden.prediction/v1","predic'

Events are validated with the daemon's own decoder before they are sent, so a service learns
about a contract violation at the call site instead of in the dead-letter topic. Both topics are
keyed by model name (the daemon keeps a model's state on one partition).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from .events import LABEL_SCHEMA, PREDICTION_SCHEMA, InvalidEvent, decode, format_time

__all__ = ["DriftwardenClient", "label_event", "prediction_event"]


def _now() -> str:
    return format_time(datetime.now(tz=UTC).timestamp())


def prediction_event(
    model: str,
    model_version: str,
    features: Mapping[str, Any],
    prediction: Mapping[str, Any],
    *,
    segment: Mapping[str, Any] | None = None,
    prediction_id: str | None = None,
    timestamp: str | None = None,
) -> bytes:
    """Encode and validate one prediction event (raises ``InvalidEvent`` if it breaks the contract)."""
    doc = {
        "schema": PREDICTION_SCHEMA,
        "prediction_id": prediction_id or str(uuid.uuid4()),
        "model": model,
        "model_version": str(model_version),
        "timestamp": timestamp or _now(),
        "features": dict(features),
        "prediction": dict(prediction),
        "segment": dict(segment or {}),
    }
    for part in ("features", "prediction", "segment"):
        for name, v in doc[part].items():  # type: ignore[attr-defined]
            if isinstance(v, float) and not math.isfinite(v):
                # JSON has no NaN: it would be published as null and read as a missing value.
                raise InvalidEvent(f"{part}.{name} must be a finite number, got {v!r}")
    raw = _encode(doc)
    decode(raw, expect=PREDICTION_SCHEMA)
    return raw


def label_event(
    model: str, prediction_id: str, label: Any, *, timestamp: str | None = None
) -> bytes:
    """Encode and validate one label event."""
    if isinstance(label, float) and not math.isfinite(label):
        raise InvalidEvent(f"label must be a finite number, got {label!r}")
    raw = _encode(
        {
            "schema": LABEL_SCHEMA,
            "prediction_id": prediction_id,
            "model": model,
            "timestamp": timestamp or _now(),
            "label": label,
        }
    )
    decode(raw, expect=LABEL_SCHEMA)
    return raw


def _encode(doc: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(doc)
    except (TypeError, orjson.JSONEncodeError) as exc:  # lone surrogates, ints over 64 bits, ...
        raise InvalidEvent(f"event cannot be encoded as JSON: {exc}") from None


class DriftwardenClient:
    """Publishes events to Kafka with a kafka-python producer (idempotent, ``acks=all``)."""

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        predictions_topic: str = "predictions",
        labels_topic: str = "labels",
        **producer_config: Any,
    ) -> None:
        from kafka import KafkaProducer

        self.predictions_topic = predictions_topic
        self.labels_topic = labels_topic
        self._producer = KafkaProducer(
            bootstrap_servers=bootstrap_servers, acks="all", linger_ms=5, **producer_config
        )

    def predict(
        self,
        model: str,
        model_version: str,
        features: Mapping[str, Any],
        prediction: Mapping[str, Any],
        *,
        segment: Mapping[str, Any] | None = None,
        prediction_id: str | None = None,
        timestamp: str | None = None,
    ) -> str:
        """Publish a prediction; returns its ``prediction_id`` (to attach the label later)."""
        pid = prediction_id or str(uuid.uuid4())
        raw = prediction_event(
            model,
            model_version,
            features,
            prediction,
            segment=segment,
            prediction_id=pid,
            timestamp=timestamp,
        )
        self._producer.send(self.predictions_topic, key=model.encode(), value=raw)
        return pid

    def label(
        self, model: str, prediction_id: str, label: Any, *, timestamp: str | None = None
    ) -> None:
        """Publish the true label of an earlier prediction."""
        raw = label_event(model, prediction_id, label, timestamp=timestamp)
        self._producer.send(self.labels_topic, key=model.encode(), value=raw)

    def flush(self) -> None:
        """Wait until every event sent so far is acknowledged."""
        self._producer.flush()

    def close(self) -> None:
        """Flush and close the producer."""
        self._producer.flush()
        self._producer.close()
