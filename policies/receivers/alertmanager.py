"""Alertmanager receiver: ``POST {url}/api/v2/alerts`` with a JSON array of alerts."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..alerts import FIRING_HOLD_S
from .base import DEFAULT_TIMEOUT_S, Delivery, Receiver, post_json

if TYPE_CHECKING:
    from ..alerts import Alert

__all__ = ["AlertmanagerReceiver"]


class AlertmanagerReceiver(Receiver):
    """Posts alerts to Alertmanager's v2 API.

    Alertmanager deduplicates by labels, so re-sending an active alert is safe and is how it
    stays active: each firing send carries ``endsAt = now + hold_s``. ``clock`` (epoch
    seconds) is injectable for tests.
    """

    type = "alertmanager"
    wants_resends = True

    def __init__(
        self,
        name: str,
        url: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        hold_s: float = FIRING_HOLD_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(name)
        self.url = url.rstrip("/")
        self.endpoint = f"{self.url}/api/v2/alerts"
        self.timeout_s = timeout_s
        self.hold_s = hold_s
        self.clock = clock

    def send(self, alerts: Sequence[Alert], *, key: str | None = None) -> Delivery:
        """POST the alerts; ``key`` is unused (Alertmanager deduplicates by labels)."""
        if not alerts:
            return Delivery.success()
        now = self.clock()
        body = [a.to_alertmanager(now, self.hold_s) for a in alerts]
        return post_json(self.endpoint, body, timeout_s=self.timeout_s)
