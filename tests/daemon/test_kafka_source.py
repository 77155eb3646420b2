"""The Kafka source against the real broker: it reads ahead of the daemon (so the next fetch is
in flight while the daemon works) without losing, repeating or reordering a record, drops what
it read ahead for a partition that is sought elsewhere, and reports the partitions' ends for the
consumer-lag gauge from the fetches it already made.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from driftwarden.daemon.sources import KafkaSource, RawRecord
from tests.daemon.kafka_sources import kafka_source

pytestmark = pytest.mark.kafka

PER_PARTITION = 1500
PARTITIONS = 2


@pytest.fixture
def topics(kafka_bootstrap: str, kafka_topic_factory: Callable[..., str]) -> dict[str, str]:
    """Fresh predictions/labels topics with PER_PARTITION records in each partition."""
    from kafka import KafkaProducer

    names = {
        "predictions": kafka_topic_factory(PARTITIONS),
        "labels": kafka_topic_factory(PARTITIONS),
    }
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5)
    try:
        for role, topic in names.items():
            for p in range(PARTITIONS):
                for i in range(PER_PARTITION):
                    producer.send(topic, value=f"{role}-{p}-{i}".encode(), partition=p)
        producer.flush(60)
    finally:
        producer.close()
    return names


@pytest.fixture
def source(kafka_bootstrap: str, topics: dict[str, str]) -> Iterator[KafkaSource]:
    src = kafka_source(kafka_bootstrap, topics)
    try:
        yield src
    finally:
        src.close()


def _poll_until(src: KafkaSource, n: int, chunk: int, deadline_s: float = 60.0) -> list[RawRecord]:
    out: list[RawRecord] = []
    deadline = time.monotonic() + deadline_s
    while len(out) < n:
        assert time.monotonic() < deadline, f"read {len(out)} of {n} records"
        got = src.poll(chunk, 0.5)
        assert len(got) <= chunk
        out += got
    return out


def _by_partition(records: list[RawRecord]) -> dict[tuple[str, int], list[int]]:
    out: dict[tuple[str, int], list[int]] = defaultdict(list)
    for r in records:
        out[(r.topic, r.partition)].append(r.offset)
    return out


def test_records_read_ahead_are_handed_out_once_in_order(
    source: KafkaSource, topics: dict[str, str]
) -> None:
    first = _poll_until(source, 1, 100)
    consumer: Any = source._consumer
    # The consumer has been asked for more than the daemon has been given: read ahead.
    fetched = sum(consumer.position(tp) for tp in consumer.assignment())
    assert fetched > len(first)

    records = first + _poll_until(source, 2 * PARTITIONS * PER_PARTITION - len(first), 100)
    assert len(records) == 2 * PARTITIONS * PER_PARTITION
    offsets = _by_partition(records)
    assert set(offsets) == {(t, p) for t in topics.values() for p in range(PARTITIONS)}
    for seen in offsets.values():
        assert seen == list(range(PER_PARTITION))  # none lost, none twice, in order
    role = {v: k for k, v in topics.items()}
    for r in records:
        assert r.value == f"{role[r.topic]}-{r.partition}-{r.offset}".encode()
    assert source.poll(100, 0.2) == []


def test_a_seek_drops_what_was_read_ahead_for_that_partition(
    source: KafkaSource, topics: dict[str, str]
) -> None:
    first = _poll_until(source, 1, 50)
    tp = (first[-1].topic, first[-1].partition)
    handed_out = _by_partition(first)[tp]
    # The daemon goes back to offset 7 of that partition (what a restored checkpoint does).
    source.seek({tp: 7})
    expected = 2 * PARTITIONS * PER_PARTITION - len(first) + len(handed_out) - 7
    rest = _poll_until(source, expected, 50)
    offsets = _by_partition(rest)
    # That partition resumes at 7, and nothing read ahead before the seek comes out after it.
    assert handed_out[-1] > 7
    assert offsets[tp] == list(range(7, PER_PARTITION))
    for other, seen in offsets.items():
        if other != tp:
            done = _by_partition(first).get(other, [])
            assert done + seen == list(range(PER_PARTITION))
    assert source.poll(50, 0.2) == []


def test_end_offsets_come_from_the_fetches(source: KafkaSource, topics: dict[str, str]) -> None:
    assert source.end_offsets() == {}  # nothing fetched yet: unknown, not zero
    _poll_until(source, 2 * PARTITIONS * PER_PARTITION, 500)
    ends = source.end_offsets()
    assert ends == {(t, p): PER_PARTITION for t in topics.values() for p in range(PARTITIONS)}


def test_an_error_in_the_assignment_callback_is_raised_as_itself(
    kafka_bootstrap: str, topics: dict[str, str]
) -> None:
    """kafka-python wraps it into a bare 'User rebalance callback throws an error' (the CLI
    then printed a traceback for a checkpoint this build cannot read); the poll that ran the
    callback raises the error itself, and hands out no record of the assignment."""

    def unreadable(parts: list[int]) -> dict[tuple[str, int], int]:
        raise ValueError("checkpoint p0 has version 9; this driftwarden reads version 1.")

    src = kafka_source(kafka_bootstrap, topics, on_assign=unreadable)
    try:
        deadline = time.monotonic() + 60
        with pytest.raises(ValueError, match="version 9"):
            while time.monotonic() < deadline:
                assert src.poll(100, 0.5) == []
    finally:
        src.close()
