"""A rebalance begun by a partition-count change completes even when ``poll()``'s timeout runs
out while JoinGroup/SyncGroup are in flight (kafka-python 3.0 lost it: see
``driftwarden.daemon.kafka_rejoin``). Against the real broker, through the daemon's Kafka source.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from driftwarden.daemon.kafka_rejoin import keep_pending_rejoins
from tests.daemon.kafka_sources import kafka_source


def test_a_consumer_without_kafka_python_3_coordinator_is_left_as_it_was() -> None:
    class Coordinator:
        def need_rejoin(self) -> bool:
            return False

    class Consumer:
        _coordinator = Coordinator()

    consumer = Consumer()
    assert keep_pending_rejoins(consumer) is False
    assert "need_rejoin" not in vars(consumer._coordinator)
    assert keep_pending_rejoins(object()) is False


@pytest.mark.kafka
@pytest.mark.parametrize("poll_timeout_s", [0.005, 0.05])
def test_a_rebalance_for_a_new_partition_completes_with_short_polls(
    kafka_bootstrap: str, kafka_topic_factory: Callable[..., str], poll_timeout_s: float
) -> None:
    from kafka.admin import KafkaAdminClient, NewPartitions

    topics = {"predictions": kafka_topic_factory(1), "labels": kafka_topic_factory(1)}
    events: list[tuple[str, list[int]]] = []

    def on_assign(parts: list[int]) -> dict[tuple[str, int], int]:
        events.append(("assigned", parts))
        return {}

    src = kafka_source(
        kafka_bootstrap,
        topics,
        on_assign=on_assign,
        on_revoke=lambda parts: events.append(("revoked", parts)),
        metadata_max_age_ms=500,
    )
    try:
        deadline = time.monotonic() + 60
        while events != [("assigned", [0])]:
            assert time.monotonic() < deadline, f"no first assignment: {events}"
            src.poll(100, 0.1)
        generation = src._consumer.group_metadata().generation_id
        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        try:
            admin.create_partitions({t: NewPartitions(total_count=2) for t in topics.values()})
        finally:
            admin.close()
        # Well past session.timeout.ms: a lost rebalance shows as no second assignment at all.
        deadline = time.monotonic() + 30
        while len(events) < 3:
            assert time.monotonic() < deadline, f"the rebalance was lost: {events}"
            src.poll(100, poll_timeout_s)
        assert events == [("assigned", [0]), ("revoked", [0]), ("assigned", [0, 1])]
        # One rebalance: the join that finished between polls was taken, not sent again.
        assert src._consumer.group_metadata().generation_id == generation + 1
    finally:
        src.close()
