"""Where the daemon's outputs go: Kafka topics, or JSONL files for the embedded file source.

Outputs are the dead-letter records, window summaries, decisions, routes and alerts. Each is
published with a key and JSON bytes; ``flush()`` makes everything published so far durable
before a checkpoint is written (the checkpoint ordering: sinks, then state, then offsets).
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
from abc import ABC, abstractmethod
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson

__all__ = [
    "DLQ_VALUE_MAX_BYTES",
    "FileSink",
    "KafkaSink",
    "MemorySink",
    "Sink",
    "SinkError",
    "dead_letter",
]

#: The most of an event's bytes a dead-letter record carries (base64 makes them 4/3 as large):
#: Kafka's default record limit (producer and broker, 1 MiB) must hold the record, or the
#: producer refuses it and the event's dead letter is lost. Longer values are cut, marked
#: ``value_truncated``, with the whole value's size and SHA-256 (the whole value is still at
#: its source topic/partition/offset, within that topic's retention).
DLQ_VALUE_MAX_BYTES = 512 * 1024


class SinkError(RuntimeError):
    """The broker refused a record the daemon published: the checkpoint that flushes it fails,
    so no offset is committed past its input."""


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

        # The first send the broker refused since the last flush (set on the producer's IO
        # thread): kafka-python's flush() waits for sends to complete, not to succeed.
        self._refused: str | None = None

    def publish(
        self,
        topic: str,
        key: str | None,
        value: bytes,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        future = self._producer.send(
            topic, key=None if key is None else key.encode(), value=value, headers=headers or []
        )
        future.add_errback(self._on_refused, topic, len(value))

    def _on_refused(self, topic: str, size: int, exc: BaseException) -> None:
        if self._refused is None:
            self._refused = f"topic {topic!r}, a {size}-byte record: {type(exc).__name__}: {exc}"

    def flush(self) -> None:
        self._producer.flush()
        refused, self._refused = self._refused, None
        if refused is not None:
            raise SinkError(f"kafka refused an output record ({refused}); nothing is committed")

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
    kept = (
        value if value is None or len(value) <= DLQ_VALUE_MAX_BYTES else value[:DLQ_VALUE_MAX_BYTES]
    )
    value_doc = {
        "reason": reason,
        "error_class": error_class,
        "source": {"topic": topic, "partition": partition, "offset": offset},
        "timestamp_ms": timestamp_ms,
        "key_b64": None if key is None else base64.b64encode(key[:DLQ_VALUE_MAX_BYTES]).decode(),
        "value_b64": None if kept is None else base64.b64encode(kept).decode(),
        "value_bytes": 0 if value is None else len(value),
    }
    if kept is not value and value is not None:
        value_doc["value_truncated"] = True
        value_doc["value_sha256"] = hashlib.sha256(value).hexdigest()
    headers = [
        ("__connect.errors.topic", topic.encode()),
        ("__connect.errors.partition", str(partition).encode()),
        ("__connect.errors.offset", str(offset).encode()),
        ("__connect.errors.exception.class.name", error_class.encode()),
        ("__connect.errors.exception.message", reason.encode()[:1000]),
    ]
    return orjson.dumps(value_doc), headers
