"""The start-up check of the Kafka topics, against the real broker.

Input topics must exist with equal partition counts (a model's labels are joined to its
predictions in the partition of the same number); missing output topics are created
(``routing`` compacted) or, with ``kafka.create_topics: false``, named in the error. The test
broker creates topics on first use; the check reads metadata without creating anything, as on
a cluster that does not.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from driftwarden.daemon.app import StartupError, build_daemon
from driftwarden.daemon.settings import load_settings
from driftwarden.daemon.topics import OUTPUT_ROLES, TopicError, check_topics

pytestmark = pytest.mark.kafka

POLICIES = Path(__file__).resolve().parents[2] / "config" / "embedded" / "policies"


@pytest.fixture
def admin(kafka_bootstrap: str) -> Iterator[object]:
    from kafka.admin import KafkaAdminClient

    client = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="topics-test")
    try:
        yield client
    finally:
        client.close()


def _absent(role: str) -> str:
    """A topic name nobody created (deleted by the test that makes it exist)."""
    return f"topics-test-{role}-{uuid.uuid4().hex[:12]}"


def test_a_missing_input_topic_is_named(
    kafka_bootstrap: str, kafka_topic_factory: Callable[..., str]
) -> None:
    missing = _absent("predictions")
    with pytest.raises(TopicError) as err:
        check_topics(kafka_bootstrap, {"predictions": missing, "labels": kafka_topic_factory(2)})
    assert f"input topic {missing!r} (kafka.topics.predictions) does not exist" in str(err.value)


def test_input_topics_with_different_partition_counts_are_refused(
    kafka_bootstrap: str, kafka_topic_factory: Callable[..., str]
) -> None:
    predictions, labels = kafka_topic_factory(2), kafka_topic_factory(3)
    with pytest.raises(TopicError) as err:
        check_topics(kafka_bootstrap, {"predictions": predictions, "labels": labels})
    message = str(err.value)
    assert f"{predictions!r} (2 partitions)" in message
    assert f"{labels!r} (3 partitions)" in message
    assert "same number of partitions" in message


def test_missing_output_topics_are_created_routing_compacted(
    kafka_bootstrap: str, kafka_topic_factory: Callable[..., str], admin: object
) -> None:
    from kafka.admin import ConfigResource, ConfigResourceType

    inputs = {"predictions": kafka_topic_factory(2), "labels": kafka_topic_factory(2)}
    outputs = {r: _absent(r) for r in OUTPUT_ROLES}
    try:
        counts = check_topics(kafka_bootstrap, {**inputs, **outputs})
        assert counts["predictions"] == counts["labels"] == 2
        assert set(outputs) <= set(counts)
        assert set(outputs.values()) <= set(admin.list_topics())  # type: ignore[attr-defined]
        described = admin.describe_configs(  # type: ignore[attr-defined]
            [
                ConfigResource(ConfigResourceType.TOPIC, outputs[r], {"cleanup.policy": None})
                for r in ("routing", "decisions")
            ],
            config_filter="all",
        )
        policy = {
            name: entries["cleanup.policy"]["value"] for name, entries in described["topic"].items()
        }
        assert policy == {outputs["routing"]: "compact", outputs["decisions"]: "delete"}
        # A second start finds them: nothing to create, the same answer.
        assert check_topics(kafka_bootstrap, {**inputs, **outputs}) == counts
    finally:
        admin.delete_topics(list(outputs.values()), raise_errors=False)  # type: ignore[attr-defined]


def test_without_create_topics_missing_outputs_are_a_start_up_error(
    kafka_bootstrap: str, kafka_topic_factory: Callable[..., str], admin: object
) -> None:
    inputs = {"predictions": kafka_topic_factory(1), "labels": kafka_topic_factory(1)}
    outputs = {r: _absent(r) for r in ("decisions", "alerts")}
    with pytest.raises(TopicError) as err:
        check_topics(kafka_bootstrap, {**inputs, **outputs}, create=False)
    message = str(err.value)
    assert all(f"{name!r} (kafka.topics.{role})" in message for role, name in outputs.items())
    assert "kafka.create_topics: true" in message
    assert not set(outputs.values()) & set(admin.list_topics())  # type: ignore[attr-defined]


def test_the_daemon_does_not_start_on_a_missing_input_topic(
    kafka_bootstrap: str, kafka_topic_factory: Callable[..., str], tmp_path: Path
) -> None:
    """``driftwarden run``'s wiring: the error names the topic before anything is consumed."""
    missing = _absent("labels")
    cfg = tmp_path / "driftwarden.yaml"
    cfg.write_text(
        f"kafka: {{bootstrap_servers: '{kafka_bootstrap}', create_topics: false, "
        f"topics: {{predictions: {kafka_topic_factory(1)}, labels: {missing}}}}}\n"
        f"policies: {POLICIES}\nstate: {{dir: {tmp_path / 'state'}}}\nhttp: {{enabled: false}}\n"
    )
    with pytest.raises(StartupError, match=f"input topic '{missing}' \\(kafka.topics.labels\\)"):
        build_daemon(load_settings(cfg, env={}))
