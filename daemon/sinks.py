"""Where the daemon's outputs go: Kafka topics, or JSONL files for the embedded file source.

Outputs are the dead-letter records, window summaries, decisions, routes and alerts. Each is
published with a key and JSON bytes; ``flush()`` makes everything published so far durable
before a checkpoint is written (the checkpoint ordering: sinks, then state, then offsets).
"""

from __future__ import annotations

import base64
import os
import threading
from abc import ABC, abstractmethod
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson

__all__ = ["FileSink", "KafkaSink", "MemorySink", "Sink", "dead_letter"]


class Sink(ABC):
    """Publishes keyed JSON records to named topics."""

    @abstractmethod
    def publish(
        self,
        topic: str,
        key: str | None,
        value: bytes,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Queue one record for the topic."""

    @abstractmethod
    def flush(self) -> None:
        """Block until everything published so far is durable."""

    def close(self) -> None:
        """Flush and release resources."""
        self.flush()

    def send(self, topic: str, key: str | None = None, value: Any = None) -> None:
        """kafka-python-like ``send`` for receivers that publish dicts (e.g. alerts)."""
        data = (
            value if isinstance(value, bytes) else orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        )
        self.publish(topic, key if not isinstance(key, bytes) else key.decode(), data)


class KafkaSink(Sink):
    """A kafka-python producer (idempotent, ``acks=all``)."""

    def __init__(self, bootstrap_servers: str, client_id: str, security: dict[str, Any]) -> None:
        from kafka import KafkaProducer

        self._producer = KafkaProducer(
            bootstrap_servers=bootstrap_servers,
            client_id=f"{client_id}-producer",
            acks="all",
            linger_ms=5,
            retries=2147483647,
            # kafka-python backs reconnects off up to 30 s: after a few broker outages in a
            # row the producer would come back that long after the broker (stalling flushes,
            # so checkpoints and commits). 5 s at most.
            reconnect_backoff_max_ms=5000,
            **security,
        )

    def publish(
        self,
        topic: str,
        key: str | None,
        value: bytes,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        self._producer.send(
            topic, key=None if key is None else key.encode(), value=value, headers=headers or []
        )

    def flush(self) -> None:
        self._producer.flush()

    def close(self) -> None:
        self._producer.flush()
        self._producer.close()


class FileSink(Sink):
    """Appends each topic's records as JSON lines to ``<dir>/<topic>.jsonl`` (fsync on flush)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._files: dict[str, Any] = {}
        # The action thread publishes routes and alerts while the main loop publishes windows.
        self._lock = threading.Lock()

    def publish(
        self,
        topic: str,
        key: str | None,
        value: bytes,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        with self._lock:
            fh = self._files.get(topic)
            if fh is None:
                fh = self._files[topic] = open(self.directory / f"{topic}.jsonl", "ab")
            fh.write(value.rstrip(b"\n") + b"\n")

    def flush(self) -> None:
        with self._lock:
            for fh in self._files.values():
                fh.flush()
                os.fsync(fh.fileno())

    def close(self) -> None:
        self.flush()
        with self._lock:
            for fh in self._files.values():
                fh.close()
            self._files.clear()


class MemorySink(Sink):
    """Keeps records in memory (tests, replay)."""

    def __init__(self) -> None:
        self.records: dict[str, list[tuple[str | None, bytes, list[tuple[str, bytes]]]]] = (
            defaultdict(list)
        )
        self._lock = threading.Lock()

    def publish(
        self,
        topic: str,
        key: str | None,
        value: bytes,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        with self._lock:
            self.records[topic].append((key, value, list(headers or [])))

    def flush(self) -> None:
        return None

    def values(self, topic: str) -> list[Any]:
        """Decoded JSON values published to a topic."""
        return [orjson.loads(v) for _, v, _ in self.records.get(topic, [])]


def dead_letter(
    *,
    reason: str,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    timestamp_ms: int | None,
    error_class: str = "InvalidEvent",
) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The DLQ record (value, headers): original bytes in base64, the reason and the origin.

    Headers follow Kafka Connect's dead-letter convention so existing tooling reads them.
    """
    value_doc = {
        "reason": reason,
        "error_class": error_class,
        "source": {"topic": topic, "partition": partition, "offset": offset},
        "timestamp_ms": timestamp_ms,
        "key_b64": None if key is None else base64.b64encode(key).decode(),
        "value_b64": None if value is None else base64.b64encode(value).decode(),
        "value_bytes": 0 if value is None else len(value),
    }
    headers = [
        ("__connect.errors.topic", topic.encode()),
        ("__connect.errors.partition", str(partition).encode()),
        ("__connect.errors.offset", str(offset).encode()),
        ("__connect.errors.exception.class.name", error_class.encode()),
        ("__connect.errors.exception.message", reason.encode()[:1000]),
    ]
    return orjson.dumps(value_doc), headers
