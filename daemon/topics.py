"""Start-up check of the daemon's Kafka topics (``kafka.topics``).

A daemon pointed at the wrong topics must say so before it consumes anything, not idle or
join nothing:

- the input topics (``predictions``, ``labels``) must exist and have the same number of
  partitions: a model's labels are joined to its predictions within the partition of the same
  number (both are keyed by model name), so unequal counts put most labels where their
  predictions are not;
- the output topics (``dlq``, ``decisions``, ``windows``, ``alerts``, ``routing``) are created
  when missing (``kafka.create_topics``, default on: the partition count and replication the
  broker gives a topic by default; ``routing`` compacted, it holds the latest route per model),
  else named in the error. Without this a cluster that does not create topics on first use
  (``auto.create.topics.enable=false``) made the first publish wait a minute for metadata
  and then fail without naming the topic.

The state topic is prepared by :class:`~driftwarden.daemon.checkpoint_kafka.KafkaCheckpointStore`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog

__all__ = ["INPUT_ROLES", "OUTPUT_ROLES", "TopicError", "check_topics"]

log = structlog.get_logger(__name__)

INPUT_ROLES = ("predictions", "labels")
OUTPUT_ROLES = ("dlq", "decisions", "windows", "alerts", "routing")
_COMPACTED = frozenset({"routing"})


class TopicError(RuntimeError):
    """The topics are not as the daemon needs them; ``str()`` names each problem, one per line."""


def check_topics(
    bootstrap_servers: str,
    topics: Mapping[str, str],
    *,
    security: Mapping[str, Any] | None = None,
    client_id: str = "driftwarden",
    create: bool = True,
    timeout_s: float = 30.0,
) -> dict[str, int]:
    """Check the input topics and create missing output topics; their partition counts by role.

    Raises :class:`TopicError` naming every problem found (all of them at once), and
    kafka-python's ``KafkaError`` when the cluster cannot be reached.
    """
    from kafka.admin import KafkaAdminClient
    from kafka.errors import KafkaError

    where = f"on {bootstrap_servers}"
    # Not reaching the cluster (or a refused login) raises kafka-python's own error, which
    # `driftwarden run` explains as it explains the consumer's.
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap_servers,
        client_id=f"{client_id}-topics-admin",
        request_timeout_ms=int(timeout_s * 1000),
        **dict(security or {}),
    )
    try:
        described, refused = _partition_counts(admin, topics)
        problems = _problems(topics, described, refused, where)
        missing = [
            r
            for r in OUTPUT_ROLES
            if r in topics and topics[r] not in described and topics[r] not in refused
        ]
        if missing and not create:
            names = ", ".join(f"{topics[r]!r} (kafka.topics.{r})" for r in missing)
            problems.append(
                f"output topics {names} do not exist {where}; create them, or set "
                "kafka.create_topics: true to let the daemon create them."
            )
        if problems:
            raise TopicError("\n".join(problems))
        if missing:
            _create(
                admin,
                [topics[r] for r in missing],
                {topics[r] for r in missing if r in _COMPACTED},
                where,
                timeout_s,
            )
            described, _ = _partition_counts(admin, topics)
            log.info("kafka topics created", topics=[topics[r] for r in missing])
    except KafkaError as exc:
        raise TopicError(f"checking the Kafka topics {where} failed: {exc}.") from None
    finally:
        admin.close()
    return {r: described[t] for r, t in topics.items() if t in described}


def _create(
    admin: Any, names: list[str], compacted: set[str], where: str, timeout_s: float
) -> None:
    """Create ``names`` (the broker's default partitions and replication), then wait until
    each has a leader for every partition; :class:`TopicError` naming what the broker refused."""
    import kafka.errors as errors

    result = admin.create_topics(
        {n: {"configs": {"cleanup.policy": "compact"}} if n in compacted else {} for n in names},
        timeout_ms=int(timeout_s * 1000),
        raise_errors=False,
    )
    refused = [
        f"{t['name']!r}: {errors.for_code(t['error_code']).__name__}"
        + (f" ({t['error_message']})" if t.get("error_message") else "")
        for t in result.get("topics", [])
        # another replica creating the same topic at the same time is fine
        if t.get("error_code") not in (0, errors.TopicAlreadyExistsError.errno)
    ]
    if refused:
        raise TopicError(
            f"output topics could not be created {where}: {'; '.join(refused)}. Create them "
            "(the daemon only publishes to them), or give its principal Create on the cluster."
        )
    admin.wait_for_topics(names, timeout_ms=int(timeout_s * 1000))


def _partition_counts(
    admin: Any, topics: Mapping[str, str]
) -> tuple[dict[str, int], dict[str, str]]:
    """Partition count of each of ``topics`` that exists (metadata, no auto-creation), and the
    error of each the broker would not describe for another reason than not existing (an
    authorization failure, say: "does not exist" would send the operator the wrong way)."""
    import kafka.errors as errors

    names = sorted(set(topics.values()))
    counts: dict[str, int] = {}
    refused: dict[str, str] = {}
    for t in admin.describe_topics(names):
        name = str(t.get("name") or t.get("topic"))
        code = t.get("error_code", 0)
        partitions = t.get("partitions") or []
        if code == 0 and partitions:
            counts[name] = len(partitions)
        elif code not in (0, errors.UnknownTopicOrPartitionError.errno):
            refused[name] = errors.for_code(code).__name__
    return counts, refused


def _problems(
    topics: Mapping[str, str], counts: Mapping[str, int], refused: Mapping[str, str], where: str
) -> list[str]:
    """What stops the daemon: input topics missing, unequal or not describable; output topics
    the broker would not describe (missing outputs are created, or named by the caller)."""
    problems = []
    for r in INPUT_ROLES:
        name = topics[r]
        if name in refused:
            problems.append(
                f"input topic {name!r} (kafka.topics.{r}) cannot be described {where}: "
                f"{refused[name]} (the daemon's principal needs Describe and Read on it)."
            )
        elif name not in counts:
            problems.append(
                f"input topic {name!r} (kafka.topics.{r}) does not exist {where}; create it "
                "(keyed by model name, as many partitions as the other input topic) or point "
                f"kafka.topics.{r} at the topic your services publish to."
            )
    pred, lab = (counts.get(topics[r]) for r in INPUT_ROLES)
    if pred is not None and lab is not None and pred != lab:
        problems.append(
            f"input topics {topics['predictions']!r} ({pred} partitions) and "
            f"{topics['labels']!r} ({lab} partitions) must have the same number of partitions "
            f"{where}: a model's labels are joined to its predictions in the partition of the "
            "same number (both keyed by model name), so labels would miss their predictions."
        )
    problems += [
        f"output topic {topics[r]!r} (kafka.topics.{r}) cannot be described {where}: "
        f"{refused[topics[r]]} (the daemon's principal needs Describe and Write on it)."
        for r in OUTPUT_ROLES
        if r in topics and topics[r] in refused
    ]
    return problems
