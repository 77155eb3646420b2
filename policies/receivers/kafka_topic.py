"""Kafka receiver: each alert as one JSON record on a topic, keyed by fingerprint.

The producer is injected (the daemon passes its ``KafkaProducer``); only kafka-python's
``send(topic, key=, value=)`` returning a future with ``get(timeout=)``, and ``flush(timeout=)``
are used. Keys and values are sent as bytes, so the producer must have no serializers.
Keying by fingerprint keeps one alert's history in one partition, in order; on a compacted
topic the latest state of each alert wins.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .base import DEFAULT_TIMEOUT_S, Delivery, Receiver, default_idempotency_key

if TYPE_CHECKING:
    from ..alerts import Alert

__all__ = ["DEFAULT_ALERT_TOPIC", "KafkaTopicReceiver"]

DEFAULT_ALERT_TOPIC = "driftwarden.alerts"


class KafkaTopicReceiver(Receiver):
    """Publishes alerts to ``topic`` through ``producer``."""

    type = "kafka"

    def __init__(
        self,
        name: str,
        producer: Any,
        *,
        topic: str = DEFAULT_ALERT_TOPIC,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        super().__init__(name)
        self.producer = producer
        self.topic = topic
        self.timeout_s = timeout_s

    def send(self, alerts: Sequence[Alert], *, key: str | None = None) -> Delivery:
        """Publish every alert and wait for the broker's acknowledgement."""
        if not alerts:
            return Delivery.success()
        key = key or default_idempotency_key(alerts)
        try:
            futures = []
            for a in alerts:
                record = {**a.to_dict(), "receiver": self.name, "idempotency_key": key}
                value = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
                futures.append(
                    self.producer.send(self.topic, key=a.fingerprint.encode(), value=value)
                )
            self.producer.flush(timeout=self.timeout_s)
            for f in futures:
                if f is not None and hasattr(f, "get"):
                    f.get(timeout=self.timeout_s)
        except Exception as exc:  # kafka-python raises many types; classify by their flag
            # KafkaError subclasses say whether retrying can help (``retriable``); a timeout
            # or a broken connection can, a record too large for the broker cannot.
            retryable = bool(getattr(exc, "retriable", True))
            if type(exc).__name__ in ("KafkaTimeoutError", "NoBrokersAvailable"):
                retryable = True
            error = f"publishing to Kafka topic {self.topic!r} failed: {type(exc).__name__}: {exc}"
            return Delivery(ok=False, retryable=retryable, error=error)
        return Delivery.success()
