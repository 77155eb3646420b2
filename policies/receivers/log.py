"""Log receiver: one structlog line per alert (for development and audit trails)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import structlog

from .base import Delivery, Receiver

if TYPE_CHECKING:
    from ..alerts import Alert

__all__ = ["LogReceiver"]

log = structlog.get_logger(__name__)


class LogReceiver(Receiver):
    """Logs each alert: firing ones at warning level, resolved ones at info level."""

    type = "log"

    def send(self, alerts: Sequence[Alert], *, key: str | None = None) -> Delivery:
        """Log the alerts; always succeeds."""
        for a in alerts:
            emit = log.warning if a.status == "firing" else log.info
            emit(
                "alert",
                receiver=self.name,
                status=a.status,
                fingerprint=a.fingerprint,
                labels=dict(a.labels),
                summary=a.annotations.get("summary", ""),
                description=a.annotations.get("description", ""),
                starts_at=a.starts_at,
                ends_at=a.ends_at,
                idempotency_key=key,
            )
        return Delivery.success()
