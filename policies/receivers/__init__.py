"""Alert receivers behind one interface, and the glue to the daemon's outbox.

>>> r = build_receiver("debug", {"type": "log"})
>>> r.type, r.name
('log', 'debug')

``build_receiver`` validates a spec and builds the receiver; ``build_receivers`` does a whole
``receivers:`` block. The outbox executes alert actions through :func:`alert_handler`: a job's
payload is made by :func:`alert_job_payload` and carries the receiver's name, the alerts and
the job's idempotency key.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..alerts import Alert
from .alertmanager import AlertmanagerReceiver
from .base import (
    DEFAULT_TIMEOUT_S,
    RECEIVER_KEYS,
    Delivery,
    Receiver,
    default_idempotency_key,
    validate_receiver_spec,
)
from .kafka_topic import DEFAULT_ALERT_TOPIC, KafkaTopicReceiver
from .log import LogReceiver
from .webhook import WebhookReceiver

__all__ = [
    "DEFAULT_ALERT_TOPIC",
    "RECEIVER_KEYS",
    "AlertmanagerReceiver",
    "Delivery",
    "KafkaTopicReceiver",
    "LogReceiver",
    "Receiver",
    "WebhookReceiver",
    "alert_handler",
    "alert_job_payload",
    "build_receiver",
    "build_receivers",
    "default_idempotency_key",
    "validate_receiver_spec",
]


def build_receiver(name: str, spec: Any, *, kafka_producer: Any = None) -> Receiver:
    """Validate ``spec`` and build the receiver; ``ValueError`` lists every problem.

    ``spec`` is a mapping with ``type`` (``{type: webhook, url: ...}``) or a
    ``policies.model.ReceiverSpec`` (its ``type`` and ``params``), with environment variables
    already expanded. A ``kafka`` receiver needs ``kafka_producer`` (the daemon's producer,
    without serializers).
    """
    spec = _as_mapping(spec)
    errors = validate_receiver_spec(name, spec)
    if errors:
        raise ValueError(" ".join(errors))
    kind = spec["type"]
    timeout_s = float(spec.get("timeout_s", DEFAULT_TIMEOUT_S))
    if kind == "alertmanager":
        return AlertmanagerReceiver(name, spec["url"], timeout_s=timeout_s)
    if kind == "webhook":
        return WebhookReceiver(
            name, spec["url"], timeout_s=timeout_s, headers=spec.get("headers") or None
        )
    if kind == "kafka":
        if kafka_producer is None:
            raise ValueError(f"receiver {name!r} is of type kafka but no Kafka producer was given.")
        return KafkaTopicReceiver(
            name, kafka_producer, topic=spec.get("topic", DEFAULT_ALERT_TOPIC), timeout_s=timeout_s
        )
    return LogReceiver(name)


def _as_mapping(spec: Any) -> Any:
    """A ``ReceiverSpec``-like object (``type`` + ``params``) as one flat mapping."""
    if not isinstance(spec, Mapping) and hasattr(spec, "type") and hasattr(spec, "params"):
        return {"type": spec.type, **dict(spec.params)}
    return spec


def build_receivers(specs: Mapping[str, Any], *, kafka_producer: Any = None) -> dict[str, Receiver]:
    """Build every receiver of a ``receivers:`` block; ``ValueError`` lists every problem."""
    errors = [
        e for name, spec in specs.items() for e in validate_receiver_spec(name, _as_mapping(spec))
    ]
    if errors:
        raise ValueError(" ".join(errors))
    return {
        name: build_receiver(name, spec, kafka_producer=kafka_producer)
        for name, spec in specs.items()
    }


def alert_job_payload(receiver: str, alerts: Sequence[Alert], key: str) -> dict[str, Any]:
    """The outbox payload of an alert notification (``kind="alert"``)."""
    return {
        "receiver": receiver,
        "alerts": [a.to_dict() for a in alerts],
        "idempotency_key": key,
    }


def alert_handler(
    receivers: Mapping[str, Receiver] | Callable[[], Mapping[str, Receiver]],
) -> Callable[[Mapping[str, Any]], Delivery]:
    """An outbox handler delivering :func:`alert_job_payload` payloads.

    ``receivers`` may be a callable returning the current receivers, so a policy reload that
    changes them is picked up by jobs still waiting in the outbox. A job naming a receiver
    that no longer exists fails for good (retrying cannot bring it back).
    """

    def handle(payload: Mapping[str, Any]) -> Delivery:
        current = receivers() if callable(receivers) else receivers
        name = str(payload.get("receiver"))
        receiver = current.get(name)
        if receiver is None:
            return Delivery.dead(f"no receiver named {name!r} is configured.")
        try:
            alerts = [Alert.from_dict(a) for a in payload.get("alerts") or []]
        except (KeyError, TypeError, ValueError) as exc:
            return Delivery.dead(f"the alert job for receiver {name!r} is malformed: {exc}")
        return receiver.send(alerts, key=payload.get("idempotency_key"))

    return handle
