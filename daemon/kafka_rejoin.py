"""A fix for kafka-python 3.0's consumer group, which can lose a rebalance it began.

kafka-python 3.0 runs JoinGroup and SyncGroup as a task on its IO thread and waits for that
task only as long as the ``poll()`` that started it has left. When the wait runs out the task
goes on and the next ``poll()`` is meant to pick up its result. But ``poll()`` first asks
``need_rejoin()``, and when the rebalance began because the partition count changed (the
input topics gained a partition, or a broker restart briefly dropped them from the metadata),
the task itself, as group leader, records the metadata it assigned from; from then on
``need_rejoin()`` says no. The result is never picked up: ``on_partitions_revoked`` has run,
``on_partitions_assigned`` never does, heartbeats stay off, the broker drops the member after
``session.timeout.ms`` and the consumer sits with no partitions until it is restarted.
Measured on the real broker (kafka-python 3.0.12, Kafka 4.1): a consumer polling with a 5 ms
timeout lost the rebalance after ``create_partitions`` 4 times out of 4; the daemon's 0.5 s
poll lost it in 2 of 3 runs of ``test_input_topics_gain_a_partition_while_the_daemon_runs``
and in 2 of 9 runs of the broker-restart fault test.

:func:`keep_pending_rejoins` patches one consumer's coordinator the way the Java client
behaves (``rejoinNeededOrPending``): a join task still pending counts as a rejoin needed, and
a join task that finished while nobody waited is completed as the library completes one it
waited for, rather than thrown away for another JoinGroup.
"""

from __future__ import annotations

from typing import Any

import structlog

log = structlog.get_logger(__name__)

#: The coordinator attributes the patch relies on (kafka-python 3.0.x).
_NEEDS = (
    "need_rejoin",
    "join_group_async",
    "_join_task",
    "_lock",
    "_generation",
    "_enable_heartbeat",
    "_on_join_complete_async",
    "rejoining",
    "rejoin_needed",
    "state",
)


def keep_pending_rejoins(consumer: Any) -> bool:
    """Patch ``consumer``'s group coordinator; returns False (and logs why) when this
    kafka-python has no such coordinator to patch, which leaves the consumer as it was."""
    coordinator: Any = getattr(consumer, "_coordinator", None)
    missing = [a for a in _NEEDS if coordinator is None or not hasattr(coordinator, a)]
    if missing:
        log.warning(
            "kafka-python's coordinator differs from 3.0: the pending-rejoin fix is not applied",
            missing=missing,
        )
        return False
    from kafka.structs import MemberState

    need_rejoin = coordinator.need_rejoin
    join_group_async = coordinator.join_group_async

    def need_rejoin_or_pending() -> bool:
        return bool(need_rejoin()) or coordinator._join_task is not None

    async def join_group_finishing_pending(timeout_ms: Any = None) -> bool:
        task = coordinator._join_task
        if task is not None and task.is_done and task.succeeded():
            # Finished while no poll() waited: complete it as join_group_async does.
            log.info("completing a group rebalance that finished between polls")
            coordinator._join_task = None
            with coordinator._lock:
                coordinator.rejoining = False
                coordinator.rejoin_needed = False
                coordinator.state = MemberState.STABLE
                coordinator._enable_heartbeat()
            generation = coordinator._generation
            await coordinator._on_join_complete_async(
                generation.generation_id, generation.member_id, generation.protocol, task.value
            )
            return True
        return bool(await join_group_async(timeout_ms))

    coordinator.need_rejoin = need_rejoin_or_pending
    coordinator.join_group_async = join_group_finishing_pending
    return True
