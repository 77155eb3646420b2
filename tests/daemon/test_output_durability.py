"""Outputs the broker refuses, dead letters too large for a Kafka record, and a crash in the
middle of a batch: none of them may end with offsets committed past input whose outputs or
state were never written."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from driftwarden.daemon.sinks import DLQ_VALUE_MAX_BYTES, KafkaSink, SinkError, dead_letter
from driftwarden.daemon.sources import RawRecord
from tests.daemon.embedded import embedded_daemon


def test_a_dead_letter_always_fits_a_default_kafka_record() -> None:
    """An invalid event of up to ~1 MiB (accepted by the broker) made a dead letter of 4/3 its
    size: the producer refused it, and the daemon stopped. Its bytes are cut, marked, with
    the whole value's size and hash."""
    big = b"{" + b"x" * 900_000
    value, _ = dead_letter(
        reason="invalid JSON",
        topic="t",
        partition=0,
        offset=7,
        key=b"churn",
        value=big,
        timestamp_ms=None,
    )
    assert len(value) < 1_000_000
    doc = orjson.loads(value)
    assert doc["value_truncated"] is True and doc["value_bytes"] == len(big)
    assert base64.b64decode(doc["value_b64"]) == big[:DLQ_VALUE_MAX_BYTES]
    assert doc["value_sha256"] == hashlib.sha256(big).hexdigest()
    small, _ = dead_letter(
        reason="r", topic="t", partition=0, offset=8, key=None, value=b"{}", timestamp_ms=None
    )
    assert "value_truncated" not in orjson.loads(small)
    assert base64.b64decode(orjson.loads(small)["value_b64"]) == b"{}"


def test_a_crash_mid_batch_leaves_the_last_checkpoint_as_it_was(tmp_path: Path) -> None:
    """Closing the Kafka source revokes its partitions; a checkpoint then, after an error
    ended the loop in the middle of a batch, committed records whose events the state never
    took (and dead letters never sent). Only a loop that ended cleanly checkpoints on close."""
    extra = "checkpoint: {every_events: 1000}\n"
    assert embedded_daemon(tmp_path, extra=extra).run(max_events=3000).records == 3000
    daemon = embedded_daemon(tmp_path, extra=extra)  # restarted: reads on from the checkpoint
    saved = daemon.store.load("p0")
    assert saved is not None
    process = daemon.process

    def fails_midway(records: list[RawRecord]) -> None:
        process(records[: len(records) // 2])
        raise RuntimeError("the broker is gone")

    daemon.process = fails_midway  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="broker is gone"):
        daemon.run(max_events=3000)
    daemon.revoke(sorted(daemon.units))  # what closing a Kafka source does
    assert daemon.store.load("p0") == saved


@pytest.mark.kafka
def test_an_output_record_the_broker_refuses_fails_the_flush(
    kafka_bootstrap: str, kafka_topic_factory: Callable[..., str]
) -> None:
    """kafka-python's flush() waits for sends to complete, not to succeed: a record the broker
    refused (here over the topic's max.message.bytes) was dropped and the checkpoint went on
    to commit. The flush now fails, naming the topic."""
    small = kafka_topic_factory(1, configs={"max.message.bytes": "2000"})
    sink = KafkaSink(kafka_bootstrap, "test-sink", {})
    try:
        sink.publish(small, "k", b"x" * 100)
        sink.flush()  # fits
        sink.publish(small, "k", b"x" * 10_000)
        with pytest.raises(SinkError, match=small):
            sink.flush()
    finally:
        sink.close()
