"""Webhook receiver: one JSON POST per notification, with an ``Idempotency-Key`` header.

The body follows Alertmanager's webhook format where it can::

    {"version": "1", "receiver": "ml-team", "status": "firing" | "resolved",
     "idempotency_key": "...", "alerts": [{"status", "labels", "annotations", "startsAt",
     "endsAt", "generatorURL", "fingerprint"}, ...]}

``status`` is ``firing`` if any alert in the notification fires. The same key is sent on
every retry of one notification, so the other side can drop repeats.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .base import DEFAULT_TIMEOUT_S, Delivery, Receiver, default_idempotency_key, post_json

if TYPE_CHECKING:
    from ..alerts import Alert

__all__ = ["WEBHOOK_VERSION", "WebhookReceiver"]

WEBHOOK_VERSION = "1"


class WebhookReceiver(Receiver):
    """POSTs a JSON notification to ``url`` (extra ``headers`` optional)."""

    type = "webhook"

    def __init__(
        self,
        name: str,
        url: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        headers: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(name)
        self.url = url
        self.timeout_s = timeout_s
        self.headers = dict(headers or {})
        self.clock = clock

    def body(self, alerts: Sequence[Alert], key: str) -> dict[str, Any]:
        """The JSON body of one notification."""
        now = self.clock()
        items = []
        for a in alerts:
            item: dict[str, Any] = {"status": a.status, "fingerprint": a.fingerprint}
            item.update(a.to_alertmanager(now))
            if a.status == "firing":
                # For a webhook a firing alert has no end yet (Alertmanager's own convention).
                item["endsAt"] = None
            items.append(item)
        status = "firing" if any(a.status == "firing" for a in alerts) else "resolved"
        return {
            "version": WEBHOOK_VERSION,
            "receiver": self.name,
            "status": status,
            "idempotency_key": key,
            "alerts": items,
        }

    def send(self, alerts: Sequence[Alert], *, key: str | None = None) -> Delivery:
        """POST one notification carrying ``key`` in the body and the header."""
        if not alerts:
            return Delivery.success()
        key = key or default_idempotency_key(alerts)
        headers = {**self.headers, "Idempotency-Key": key}
        return post_json(
            self.url, self.body(alerts, key), headers=headers, timeout_s=self.timeout_s
        )
