"""Labeled examples move with their partition (``state.backend: kafka``): a replica that takes a
partition over holds the examples the old owner joined before it processes a record, and a
replica getting a partition back reads only what it lacks (see ``daemon/labeled_share.py``)."""

from __future__ import annotations

import dataclasses
import gzip
import json
import random
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from driftwarden.daemon.app import build_daemon, labeled_store
from driftwarden.daemon.labeled_share import MAX_MARKS, LabeledShare, _store_record
from driftwarden.daemon.settings import Settings, load_settings
from tests.daemon.embedded import EVENTS
from tests.daemon.test_labeled_gating import _policies


def _events(n: int) -> list[tuple[str, str, bytes]]:
    """The first ``n`` example events as (role, key, value)."""
    out = []
    with gzip.open(EVENTS, "rb") as fh:
        for line in fh:
            ev = json.loads(line)
            role = "labels" if ev["schema"].startswith("driftwarden.label") else "predictions"
            out.append((role, ev["model"], line.rstrip(b"\n")))
            if len(out) == n:
                break
    return out


def _produce(bootstrap: str, topics: dict[str, str], rows: list[tuple[str, str, bytes]]) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, acks="all")
    try:
        for role, key, value in rows:
            producer.send(topics[role], key=key.encode(), value=value)
        producer.flush(timeout=60)
    finally:
        producer.close()


def _close(daemon: Any) -> None:
    daemon.sink.close()
    daemon.source.close()
    daemon.store.close()
    daemon.labeled_share.close()


def _ids(settings: Settings) -> list[str]:
    store = labeled_store(settings, read_only=True)
    return [r["prediction_id"] for r in store.rows("churn")]


def kafka_topics(kafka_topic_factory: Callable[..., str], partitions: int) -> dict[str, str]:
    """Input topics of the test's own, and names no topic has yet for the daemon's others."""
    tag = uuid.uuid4().hex[:8]
    return {
        "predictions": kafka_topic_factory(partitions),
        "labels": kafka_topic_factory(partitions),
        **{k: f"{k}-{tag}" for k in ("dlq", "decisions", "windows", "alerts", "routing")},
        **{k: f"{k}-{tag}" for k in ("state", "silences", "labeled")},
    }


def replica_settings(
    tmp_path: Path,
    name: str,
    bootstrap: str,
    topics: dict[str, str],
    policies: Path,
    group: str,
    *,
    every_events: int = 3000,
    extra: dict[str, Any] | None = None,
    **kafka: Any,
) -> Settings:
    """A replica's settings (``state.backend: kafka``, its own state directory: another
    machine), written to ``tmp_path/<name>.yaml``; ``kafka`` adds kafka keys, ``extra``
    top-level sections."""
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "source": "kafka",
                "kafka": {
                    "bootstrap_servers": bootstrap,
                    "group_id": group,
                    "topics": topics,
                    "max_poll_records": 1000,
                    "poll_timeout_ms": 200,
                    "session_timeout_ms": 10_000,
                    **kafka,
                },
                "policies": str(policies),
                "state": {"backend": "kafka", "dir": str(tmp_path / f"state-{name}")},
                "checkpoint": {"every_events": every_events, "every": "1h"},
                "http": {"enabled": False},
                "log": {"level": "warning"},
                **(extra or {}),
            }
        )
    )
    return load_settings(cfg, env={})


def provisioned_topics(
    kafka_topic_factory: Callable[..., str], partitions: int, **labeled_configs: str
) -> dict[str, str]:
    """Every topic the daemon uses, made beforehand (as an operator with
    ``kafka.create_topics: false`` would); the labeled one with 1 partition."""
    return {
        "predictions": kafka_topic_factory(partitions),
        "labels": kafka_topic_factory(partitions),
        **{k: kafka_topic_factory(1) for k in ("dlq", "decisions", "windows", "alerts")},
        **{k: kafka_topic_factory(1, compact=True) for k in ("routing", "state", "silences")},
        "labeled": kafka_topic_factory(1, configs=labeled_configs),
    }


@pytest.fixture
def replicas(
    tmp_path: Path, kafka_bootstrap: str, kafka_topic_factory: Callable[..., str]
) -> Callable[[str], Settings]:
    """Settings of a replica by name (its own state directory: another machine), all in one
    consumer group on one 1-partition stream of the example events, policy retraining."""
    tag = uuid.uuid4().hex[:8]
    topics = kafka_topics(kafka_topic_factory, 1)
    _produce(kafka_bootstrap, topics, _events(16_000))
    policies = _policies(tmp_path, "pol", retrain=True)

    def settings(name: str) -> Settings:
        return replica_settings(
            tmp_path, name, kafka_bootstrap, topics, policies, f"labeled-share-{tag}"
        )

    return settings


def _run(settings: Settings, records: int) -> int:
    """Run a replica for ``records`` records and close it; the rows it read from the topic."""
    daemon = build_daemon(settings)
    try:
        assert daemon.run(max_events=records, timeout_s=120).records == records
        shared = daemon.metrics.labeled_shared
        read = shared.labels("read")._value.get()
        assert read == daemon.labeled_share.rows_read  # what /metrics says
        assert shared.labels("failed")._value.get() == 0
        return int(daemon.labeled_share.rows_read)
    finally:
        _close(daemon)


@pytest.mark.kafka
def test_labeled_examples_move_with_their_partition(replicas: Callable[[str], Settings]) -> None:
    sa, sb = replicas("a"), replicas("b")
    # A joins the first part of the stream and stops (its last checkpoint publishes the rest).
    assert _run(sa, 7000) == 0  # a fresh partition: nothing to read
    a_ids = _ids(sa)
    assert len(a_ids) > 1000

    # B, on another machine, takes the partition over: A's examples are in its store before
    # its first record, in the order A joined them, each once.
    assert _run(sb, 5000) == len(a_ids)
    b_ids = _ids(sb)
    assert b_ids[: len(a_ids)] == a_ids
    assert len(b_ids) > len(a_ids) and len(set(b_ids)) == len(b_ids)

    # A gets it back: it reads only the examples B added, after its own.
    assert _run(sa, 1000) == len(b_ids) - len(a_ids)
    a2_ids = _ids(sa)
    assert a2_ids[: len(b_ids)] == b_ids
    assert len(set(a2_ids)) == len(a2_ids)

    # A restarted with its own checkpoint reads nothing.
    assert _run(sa, 1000) == 0


class _Crash(Exception):
    pass


@pytest.mark.kafka
def test_rows_stored_before_a_crash_are_handed_over_after_the_replay(
    replicas: Callable[[str], Settings],
) -> None:
    """A stores rows, then dies before the checkpoint that would publish them. Restarted, it
    replays their input: the rows are in its store already, and are published all the same,
    so B, taking over later, holds every one."""
    sa, sb = replicas("a"), replicas("b")
    assert _run(sa, 7000) == 0
    before = len(_ids(sa))
    assert before > 1000

    crashing = build_daemon(sa)

    def crash(*_: object, **__: object) -> None:
        raise _Crash

    crashing.checkpoint = crash  # type: ignore[method-assign]
    # No checkpoint falls due on the way: it dies at the end, with 5000 records' rows stored.
    crashing.opts = dataclasses.replace(crashing.opts, checkpoint_every_events=10**9)
    with pytest.raises(_Crash):
        crashing.run(max_events=5000, timeout_s=120)
    crashing._closed = True  # killed: closing the consumer saves nothing
    _close(crashing)
    stored = _ids(sa)
    assert len(stored) > before  # joined and stored, never published

    assert _run(sa, 6000) == 0  # the replay (its own checkpoint: nothing to read)
    a_ids = _ids(sa)
    assert a_ids[: len(stored)] == stored and len(set(a_ids)) == len(a_ids)
    assert _run(sb, 1000) == len(a_ids)
    assert _ids(sb)[: len(a_ids)] == a_ids


class _Meta:
    def __init__(self, offset: int) -> None:
        self.offset = offset


def test_marks_always_cover_the_newest_rows_of_every_model() -> None:
    """Whatever the publishes' sizes, the first mark of a model has at least ``max_rows`` of its
    rows after it (or all of them), and the marks stay bounded (pure logic, no broker)."""
    share = LabeledShare.__new__(LabeledShare)
    share.max_rows = 1000
    rng = random.Random(3)
    for sizes in ([1] * 5000, [rng.randint(1, 400) for _ in range(2000)], [5000, 1, 1, 2000]):
        marks: list[list[int]] = []
        total = 0
        for offset, n in enumerate(sizes):
            marks.append([offset, total])
            total += n
            share._prune(marks, total)
            assert total - marks[0][1] >= min(share.max_rows, total)
            assert len(marks) <= MAX_MARKS + 1
            assert marks == sorted(marks)


@pytest.mark.kafka
def test_the_labeled_topic_needs_the_input_partition_count_and_may_be_left_out(
    tmp_path: Path, kafka_bootstrap: str, kafka_topic_factory: Callable[..., str]
) -> None:
    """A labeled topic with fewer partitions than the input topics gets more (topic creation on)
    or is a start-up error naming it; a missing one with topic creation off is a warning:
    examples then stay per replica."""
    from driftwarden.daemon.app import StartupError

    topics = provisioned_topics(kafka_topic_factory, 2)
    policies = _policies(tmp_path, "pol", retrain=True)

    def settings(**kafka: Any) -> Settings:
        return replica_settings(tmp_path, "a", kafka_bootstrap, topics, policies, "g", **kafka)

    with pytest.raises(StartupError, match=r"has 1 partitions .* fewer than the input topics' 2"):
        build_daemon(settings(create_topics=False))
    daemon = build_daemon(settings())  # input topics scaled out: the labeled topic follows
    try:
        assert daemon.labeled_share is not None
    finally:
        for part in (daemon.sink, daemon.source, daemon.store, daemon.labeled_share):
            part.close()
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap)
    try:
        assert consumer.partitions_for_topic(topics["labeled"]) == {0, 1}
    finally:
        consumer.close()
    topics["labeled"] = f"labeled-missing-{uuid.uuid4().hex[:8]}"
    daemon = build_daemon(settings(create_topics=False))
    try:
        assert daemon.labeled_share is None
    finally:
        daemon.sink.close()
        daemon.source.close()
        daemon.store.close()


@pytest.mark.kafka
def test_the_labeled_topic_follows_a_changed_retention_setting(
    tmp_path: Path, kafka_bootstrap: str, kafka_topic_factory: Callable[..., str]
) -> None:
    """``retrain.labeled_retention`` changed after the topic was created: the daemon sets the
    topic's ``retention.ms`` again at start-up, or with topic creation off says they differ
    and leaves it."""
    from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient
    from structlog.testing import capture_logs

    topics = provisioned_topics(kafka_topic_factory, 1, **{"retention.ms": str(3_600_000)})
    policies = _policies(tmp_path, "pol", retrain=True)

    def retention() -> int:
        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        try:
            res = ConfigResource(
                ConfigResourceType.TOPIC, topics["labeled"], {"retention.ms": None}
            )
            got = admin.describe_configs([res], config_filter="all")
            return int(got["topic"][topics["labeled"]]["retention.ms"]["value"])
        finally:
            admin.close()

    def start(create: bool) -> list[dict[str, Any]]:
        settings = replica_settings(
            tmp_path,
            "a",
            kafka_bootstrap,
            topics,
            policies,
            "g",
            extra={"retrain": {"labeled_retention": "2h"}},
            create_topics=create,
        )
        with capture_logs() as logs:
            daemon = build_daemon(settings)
        for part in (daemon.sink, daemon.source, daemon.store, daemon.labeled_share):
            part.close()
        return [e for e in logs if "retention" in e["event"]]

    logs = start(create=False)
    assert retention() == 3_600_000
    assert [(e["log_level"], e["retention_ms"], e["labeled_retention_ms"]) for e in logs] == [
        ("warning", "3600000", 7_200_000)
    ]
    logs = start(create=True)
    assert retention() == 7_200_000
    assert [(e["log_level"], e["was"]) for e in logs] == [("info", "3600000")]
    assert start(create=True) == []  # in line now: nothing to say


@pytest.mark.kafka
def test_a_partition_the_labeled_topic_lacks_is_logged_once_and_never_stops_a_checkpoint(
    tmp_path: Path, kafka_bootstrap: str, kafka_topic_factory: Callable[..., str]
) -> None:
    """The input topics gained a partition while the daemon runs and topic creation is off:
    the partition's examples are counted as failed and logged once; the checkpoint goes on."""
    from structlog.testing import capture_logs

    from driftwarden.daemon.metrics import Metrics
    from driftwarden.retrain.labeled_store import LabeledStore

    share = LabeledShare(
        kafka_bootstrap,
        kafka_topic_factory(1),
        store=LabeledStore(tmp_path / "store"),
        keeps=lambda m: True,
        max_rows=1000,
        marks_path=tmp_path / "marks.json",
        partitions=1,
        create_topic=False,
    )
    share.metrics = Metrics()
    try:
        line = b'{"prediction_id": "x1", "features": {}, "label": 1, "timestamp": 1.0}\n'
        with capture_logs() as logs:
            for _ in range(2):
                share.add(1, "churn", [line, line])
                share.add(0, "churn", [line])
                share.checkpoint([0, 1])
        errors = [e for e in logs if e["log_level"] == "error"]
        assert [e["partition"] for e in errors] == [1]
        counted = share.metrics.labeled_shared
        assert counted.labels("failed")._value.get() == 4
        assert counted.labels("published")._value.get() == 2  # partition 0's go on
    finally:
        share.close()


def test_a_record_not_in_the_stored_form_is_normalised_on_the_way_in(tmp_path: Path) -> None:
    """Lines another store wrote go in as they are; rows of another form (an ISO timestamp, a
    missing key) are parsed and normalised instead; rows without an id are refused."""
    from driftwarden.retrain.labeled_store import LabeledStore

    store = LabeledStore(tmp_path / "store")
    other = b'{"prediction_id": "x1", "features": {"a": 1}, "label": 1, "timestamp": "2026-11-27T10:00:00Z"}\n'
    assert _store_record(store, "churn", other) == 1
    row = store.rows("churn")[0]
    assert row["timestamp"] == 1_795_773_600.0 and row["segment"] == {}
    with pytest.raises(ValueError, match="no prediction_id"):
        _store_record(store, "churn", b'{"features": {}}\n')


def _retrain_on(
    tmp_path: Path, replica: str, tracking_uri: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int, dict[str, Any]]:
    """``driftwarden retrain churn`` with a replica's config: (exit code, printed JSON)."""
    from driftwarden.daemon.cli import main

    # The policy's trainer module, where the policy folder's parent is searched.
    examples = tmp_path / "examples"
    if not examples.exists():
        shutil.copytree(EVENTS.parent, examples, ignore=shutil.ignore_patterns("*.gz"))
    capsys.readouterr()
    config = str(tmp_path / f"{replica}.yaml")
    code = main(
        ["retrain", "churn", "--reason", "test", "--config", config, "--tracking-uri", tracking_uri]
    )
    return code, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.kafka
def test_the_retrain_command_draws_on_the_published_examples_on_any_replica(
    tmp_path: Path,
    replicas: Callable[[str], Settings],
    mlflow_tracking_uri: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``driftwarden retrain`` with ``state.backend: kafka`` run where the model is not owned
    (another replica, an operator's machine: an empty state.dir) retrains on the examples its
    owner published, not on the local store."""
    sa = replicas("a")
    assert _run(sa, 7000) == 0
    a_ids = _ids(sa)
    replicas("b")  # writes b.yaml: another machine, nothing in its state.dir
    code, doc = _retrain_on(tmp_path, "b", mlflow_tracking_uri, capsys)
    assert doc["examples"]["from"] == "kafka.topics.labeled"
    assert doc["examples"]["rows"] == len(a_ids)
    outcome = doc["outcome"]
    assert outcome["status"] in ("registered", "gates_failed", "blocked_by_data_gate")
    assert outcome["report"]["rows"]["recent"] == len(a_ids)
    assert code == (0 if outcome["status"] == "registered" else 1)
    assert not (tmp_path / "state-b" / "labeled" / "churn").exists()  # nothing stored locally


@pytest.mark.kafka
def test_the_retrain_command_takes_no_stale_rows_for_a_model_with_none_published(
    tmp_path: Path,
    kafka_bootstrap: str,
    kafka_topic_factory: Callable[..., str],
    mlflow_tracking_uri: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The model's checkpoint exists but its owner has published no rows yet (its stream has
    held no label so far): the command uses none, not the rows an earlier ownership left in
    this machine's state.dir."""
    # Predictions only: whatever a fetch brings together, no label is joined.
    topics = kafka_topics(kafka_topic_factory, 1)
    _produce(kafka_bootstrap, topics, [e for e in _events(16_000) if e[0] == "predictions"][:4000])
    policies = _policies(tmp_path, "pol", retrain=True)
    group = f"labeled-share-{uuid.uuid4().hex[:8]}"
    sa, sb = (replica_settings(tmp_path, n, kafka_bootstrap, topics, policies, group) for n in "ab")
    assert _run(sa, 4000) == 0
    assert _ids(sa) == []
    stale = labeled_store(sb)
    stale.append(
        "churn", [{"prediction_id": f"old-{i}", "features": {}, "label": 1} for i in range(50)]
    )
    _, doc = _retrain_on(tmp_path, "b", mlflow_tracking_uri, capsys)
    assert doc["examples"]["from"] == "kafka.topics.labeled"
    assert doc["examples"]["rows"] == 0
