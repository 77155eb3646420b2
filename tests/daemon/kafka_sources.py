"""A :class:`KafkaSource` for the tests that drive one directly, with the settings they share."""

from __future__ import annotations

import uuid
from typing import Any

from driftwarden.daemon.sources import KafkaSource


def kafka_source(bootstrap: str, topics: dict[str, str], **overrides: Any) -> KafkaSource:
    """A source on ``topics`` in a fresh group, reading from the start; nothing restored on
    assignment unless ``on_assign`` says otherwise. ``overrides`` replace any argument."""
    kwargs: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "group_id": f"source-test-{uuid.uuid4().hex[:8]}",
        "client_id": "source-test",
        "topics": topics,
        "security": {},
        "auto_offset_reset": "earliest",
        "session_timeout_ms": 10_000,
        "max_poll_interval_ms": 300_000,
        "max_partition_fetch_bytes": 1_048_576,
        "fetch_max_wait_ms": 100,
        "on_assign": lambda parts: {},  # the group's start is used
        "on_revoke": lambda parts: None,
        **overrides,
    }
    return KafkaSource(**kwargs)
