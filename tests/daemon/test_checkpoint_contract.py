"""One contract suite over every checkpoint backend (local directory, compacted Kafka topic).

Each backend is wrapped in a small harness that can open another store instance on the same
storage (another "replica") and write raw bytes behind the store's back (corruption, a foreign
version). The Kafka backend runs on the session's real broker and is marked ``kafka``; tests
after the suite cover what only the Kafka topic has (tombstones, size limit, topic checks,
calls from a rebalance callback).
"""

from __future__ import annotations

import threading
import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from driftwarden.daemon.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    CheckpointStore,
    LocalCheckpointStore,
)

MiB = 1024 * 1024


class Harness:
    """A backend under test: open stores on one shared storage, write raw values into it."""

    name = "?"

    def __init__(self) -> None:
        self.stores: list[CheckpointStore] = []

    def open(self) -> CheckpointStore:
        """A new store instance on the same storage (a second call is another replica)."""
        store = self._open()
        self.stores.append(store)
        return store

    def _open(self) -> CheckpointStore:
        raise NotImplementedError

    def write_raw(self, unit: str, value: bytes) -> None:
        """Put ``value`` where the unit's checkpoint lives, bypassing the store."""
        raise NotImplementedError

    def close(self) -> None:
        """Close every store opened by the test."""
        for store in self.stores:
            store.close()


class LocalHarness(Harness):
    """The local directory backend (the embedded default)."""

    name = "local"

    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.directory = directory

    def _open(self) -> CheckpointStore:
        return LocalCheckpointStore(self.directory)

    def write_raw(self, unit: str, value: bytes) -> None:
        # The file name the store uses for a unit (units here are plain [A-Za-z0-9]).
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / f"checkpoint-{unit}.json").write_bytes(value)


class KafkaHarness(Harness):
    """The compacted-topic backend on the session's real broker."""

    name = "kafka"

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__()
        self.bootstrap = bootstrap
        self.topic = topic
        self._producer: Any = None

    def _open(self) -> CheckpointStore:
        from driftwarden.daemon.checkpoint_kafka import KafkaCheckpointStore

        return KafkaCheckpointStore(
            self.bootstrap, self.topic, client_id=f"contract-{len(self.stores)}", timeout_s=60
        )

    def write_raw(
        self, unit: str, value: bytes | None, headers: list[tuple[str, bytes]] | None = None
    ) -> None:
        from kafka import KafkaProducer

        if self._producer is None:
            self._producer = KafkaProducer(
                bootstrap_servers=self.bootstrap, acks="all", max_request_size=2 * MiB
            )
        self._producer.send(self.topic, key=unit.encode(), value=value, headers=headers or []).get(
            timeout=60
        )

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self._producer is not None:
                self._producer.close()


@pytest.fixture(params=["local", pytest.param("kafka", marks=pytest.mark.kafka)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    """Each checkpoint backend in turn (Kafka: a fresh compacted topic on the real broker)."""
    harness: Harness
    if request.param == "local":
        harness = LocalHarness(tmp_path / "state")
    else:
        make_topic = request.getfixturevalue("kafka_topic_factory")
        topic = make_topic(1, compact=True, configs={"max.message.bytes": str(16 * MiB)})
        harness = KafkaHarness(request.getfixturevalue("kafka_bootstrap"), topic)
    try:
        yield harness
    finally:
        harness.close()


def _payload(partition: int, offset: int) -> dict[str, Any]:
    return {
        "partition": partition,
        "offsets": [["predictions", partition, offset], ["labels", partition, offset // 2]],
        "invalid": 3,
        "unmonitored": {"ghost-model": 2},
        "models": {"churn": {"window": {"n": offset, "mean": 0.25, "hist": [1, 2, 3]}}},
    }


def _one_sentence(message: str) -> None:
    assert "\n" not in message and message.endswith("."), message


# --- the contract ----------------------------------------------------------------------------


def test_round_trip(backend: Harness) -> None:
    """A saved checkpoint loads back with the payload intact plus format and version."""
    store = backend.open()
    payload = _payload(0, 10)
    store.save("p0", payload)
    doc = store.load("p0")
    assert doc is not None
    assert doc["format"] == CHECKPOINT_FORMAT and doc["version"] == 1
    assert {k: v for k, v in doc.items() if k not in ("format", "version")} == payload


def test_latest_save_wins(backend: Harness) -> None:
    """After several saves of interleaved units, each unit loads its own last save."""
    store = backend.open()
    for offset in (5, 17, 42):
        store.save("p0", _payload(0, offset))
        store.save("p1", _payload(1, offset + 1000))
    assert store.load("p0") == {"format": CHECKPOINT_FORMAT, "version": 1, **_payload(0, 42)}
    p1 = store.load("p1")
    assert p1 is not None and p1["offsets"][0] == ["predictions", 1, 1042]
    store.save("p0", _payload(0, 43))
    p0 = store.load("p0")
    assert p0 is not None and p0["offsets"][0] == ["predictions", 0, 43]


def test_save_all_saves_every_unit_as_it_is_built(backend: Harness) -> None:
    """``save_all`` takes the units from a generator (the daemon builds each partition's state
    only when the store takes it) and every unit loads back, also from another replica."""
    store = backend.open()
    built: list[str] = []

    def units() -> Iterator[tuple[str, dict[str, Any]]]:
        for p in range(4):
            built.append(f"p{p}")
            yield f"p{p}", _payload(p, 100 + p)
        built.append("actions")
        yield "actions", {"executor": {"done": ["k1"]}}

    store.save_all(units())
    assert built == ["p0", "p1", "p2", "p3", "actions"]
    other = backend.open()
    for p in range(4):
        doc = other.load(f"p{p}")
        assert doc is not None and doc["offsets"][0] == ["predictions", p, 100 + p]
    actions = other.load("actions")
    assert actions is not None and actions["executor"] == {"done": ["k1"]}


def test_units_lists_every_saved_unit(backend: Harness) -> None:
    """``units`` lists the units that have a checkpoint, sorted, also from another replica."""
    store = backend.open()
    assert store.units() == []
    store.save_all([("p1", _payload(1, 1)), ("actions", {"executor": {}}), ("p0", _payload(0, 1))])
    store.save("p1", _payload(1, 2))
    assert store.units() == ["actions", "p0", "p1"]
    assert backend.open().units() == ["actions", "p0", "p1"]


def test_missing_unit_is_none(backend: Harness) -> None:
    """A unit that was never saved has no checkpoint, also when other units have one."""
    store = backend.open()
    assert store.load("p0") is None
    store.save("p1", _payload(1, 1))
    assert store.load("p0") is None and store.load("actions") is None
    assert store.load("p1") is not None


def test_unknown_version_is_refused(backend: Harness) -> None:
    """A checkpoint of another format version is refused with a plain sentence."""
    backend.write_raw("p3", orjson.dumps({"format": CHECKPOINT_FORMAT, "version": 99}))
    with pytest.raises(
        CheckpointError, match="checkpoint version 99; this driftwarden reads version 1"
    ) as err:
        backend.open().load("p3")
    _one_sentence(str(err.value))
    assert "p3" in str(err.value)


def test_foreign_document_is_refused(backend: Harness) -> None:
    """Valid JSON that is not a driftwarden checkpoint is refused, naming the unit."""
    backend.write_raw("p4", b'{"offsets": []}')
    with pytest.raises(CheckpointError, match="is not a driftwarden checkpoint") as err:
        backend.open().load("p4")
    assert "p4" in str(err.value)


def test_second_replica_sees_latest_save(backend: Harness) -> None:
    """Another store instance reads the first one's newest save, also after caching an older one."""
    first, second = backend.open(), backend.open()
    first.save("p2", _payload(2, 100))
    seen = second.load("p2")
    assert seen is not None and seen["offsets"][0][2] == 100
    first.save("p2", _payload(2, 250))
    first.save("p5", _payload(5, 7))
    seen = second.load("p2")
    assert seen is not None and seen["offsets"][0][2] == 250
    assert second.load("p5") is not None
    # And the other way round: the taking-over replica writes, the old one reads it.
    second.save("p2", _payload(2, 300))
    back = first.load("p2")
    assert back is not None and back["offsets"][0][2] == 300


def test_versions_change_with_each_save_seen_by_another_replica(backend: Harness) -> None:
    """``versions()`` lists every unit with a token another replica sees change when a unit is
    saved again, and only then (a reader keeps what it learned of a checkpoint until then)."""
    first, second = backend.open(), backend.open()
    first.save("p1", _payload(1, 10))
    first.save("p2", _payload(2, 10))
    before = second.versions()
    assert sorted(before) == ["p1", "p2"] and None not in before.values()
    assert second.versions() == before
    first.save("p2", _payload(2, 20))
    after = second.versions()
    assert after["p1"] == before["p1"] and after["p2"] != before["p2"]


def test_large_payload_round_trips(backend: Harness) -> None:
    """A state of several MB (seeded random floats, barely compressible) round-trips exactly."""
    rng = np.random.default_rng(20261126)
    payload = _payload(0, 1)
    payload["models"]["churn"]["reservoir"] = rng.normal(size=300_000).tolist()
    payload["models"]["churn"]["ids"] = [f"id-{i:08d}" for i in range(50_000)]
    assert len(orjson.dumps(payload)) > 5 * MiB
    backend.open().save("p0", payload)
    doc = backend.open().load("p0")
    assert doc is not None
    assert doc["models"]["churn"]["reservoir"] == payload["models"]["churn"]["reservoir"]
    assert doc["models"]["churn"]["ids"] == payload["models"]["churn"]["ids"]


def test_numpy_values_are_saved(backend: Harness) -> None:
    """numpy arrays in a detector state are stored as lists (like the local store does)."""
    store = backend.open()
    store.save("p0", {"models": {"m": {"hist": np.arange(4, dtype=np.int64)}}})
    doc = store.load("p0")
    assert doc is not None and doc["models"]["m"]["hist"] == [0, 1, 2, 3]


@pytest.mark.parametrize("garbage", [b"{not json", b"\x00\xff\xfe", b'{"format": "driftwarden'])
def test_corrupted_value_is_refused(backend: Harness, garbage: bytes) -> None:
    """A value that is not JSON is refused with one plain sentence naming the unit."""
    backend.write_raw("p7", garbage)
    with pytest.raises(CheckpointError) as err:
        backend.open().load("p7")
    _one_sentence(str(err.value))
    assert "p7" in str(err.value)


# --- Kafka only --------------------------------------------------------------------------------


@pytest.fixture
def fresh_topic(kafka_bootstrap: str) -> Iterator[str]:
    """A topic name nobody created yet (the store creates it); deleted after the test."""
    from kafka.admin import KafkaAdminClient

    name = f"dw-state-test-{uuid.uuid4().hex[:12]}"
    yield name
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="dw-state-cleanup")
    try:
        admin.delete_topics([name], timeout_ms=30_000, raise_errors=False)
    finally:
        admin.close()


def _topic_configs(bootstrap: str, topic: str) -> dict[str, str]:
    from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="dw-state-describe")
    try:
        described = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic)], config_filter="all"
        )
        parts = admin.describe_topics([topic])[0]["partitions"]
    finally:
        admin.close()
    configs = {k: str(v["value"]) for k, v in described["topic"][topic].items()}
    configs["partitions"] = str(len(parts))
    return configs


@pytest.mark.kafka
def test_kafka_store_creates_compacted_topic(kafka_bootstrap: str, fresh_topic: str) -> None:
    """A missing state topic is created with one partition, compaction and the size limit."""
    from driftwarden.daemon.checkpoint_kafka import KafkaCheckpointStore

    store = KafkaCheckpointStore(kafka_bootstrap, fresh_topic, max_bytes=4 * MiB)
    try:
        store.save("p0", _payload(0, 1))
        again = KafkaCheckpointStore(kafka_bootstrap, fresh_topic, max_bytes=4 * MiB)
        try:
            assert again.load("p0") is not None  # a second store reuses the existing topic
        finally:
            again.close()
    finally:
        store.close()
    configs = _topic_configs(kafka_bootstrap, fresh_topic)
    assert configs["cleanup.policy"] == "compact"
    assert configs["max.message.bytes"] == str(4 * MiB)
    assert configs["partitions"] == "1"


@pytest.mark.kafka
def test_kafka_tombstone_means_no_checkpoint(backend_kafka: KafkaHarness) -> None:
    """A tombstone (delete, or a null value from elsewhere) leaves the unit without checkpoint."""
    from driftwarden.daemon.checkpoint_kafka import KafkaCheckpointStore

    first, second = backend_kafka.open(), backend_kafka.open()
    assert isinstance(first, KafkaCheckpointStore)
    first.save("p0", _payload(0, 1))
    first.save("p1", _payload(1, 1))
    assert second.load("p0") is not None
    first.delete("p0")
    backend_kafka.write_raw("p1", None)
    assert second.load("p0") is None and second.load("p1") is None
    assert second.units() == []
    assert backend_kafka.open().load("p0") is None  # a fresh reader agrees
    first.save("p0", _payload(0, 2))
    doc = second.load("p0")
    assert doc is not None and doc["offsets"][0][2] == 2


@pytest.fixture
def backend_kafka(
    kafka_bootstrap: str, kafka_topic_factory: Callable[..., str]
) -> Iterator[KafkaHarness]:
    """The Kafka harness alone, for the Kafka-only tests."""
    topic = kafka_topic_factory(1, compact=True, configs={"max.message.bytes": str(16 * MiB)})
    harness = KafkaHarness(kafka_bootstrap, topic)
    try:
        yield harness
    finally:
        harness.close()


@pytest.mark.kafka
def test_kafka_save_all_reports_broker_waits_and_names_a_unit_it_cannot_write(
    kafka_bootstrap: str, fresh_topic: str, tmp_path: Path
) -> None:
    """The time spent sending and waiting for acknowledgements is counted in ``waited_s`` (the
    daemon leaves it out of its checkpoint pacing); a local store never waits for anyone. A
    unit that cannot be written is named, no later unit is sent after it, and the earlier ones
    are acknowledged before the error is raised (nothing of the call is left in flight)."""
    from driftwarden.daemon.checkpoint_kafka import KafkaCheckpointStore

    local = LocalCheckpointStore(tmp_path / "local")
    assert local.waited_s == 0.0
    store = KafkaCheckpointStore(kafka_bootstrap, fresh_topic, max_bytes=256 * 1024)
    try:
        assert store.waited_s == 0.0
        store.save_all((f"p{p}", _payload(p, 1)) for p in range(4))
        first = store.waited_s
        assert first > 0.0
        store.save("p0", _payload(0, 2))
        assert store.waited_s > first
        rng = np.random.default_rng(7)
        units = [
            ("p1", _payload(1, 5)),
            ("p2", {"models": {"m": {"x": rng.random(100_000).tolist()}}}),
            ("p3", _payload(3, 5)),
        ]
        with pytest.raises(CheckpointError, match="'p2'"):
            store.save_all(units)
        p1, p3 = store.load("p1"), store.load("p3")
        assert p1 is not None and p1["offsets"][0] == ["predictions", 1, 5]
        assert p3 is not None and p3["offsets"][0] == ["predictions", 3, 1]
    finally:
        store.close()


@pytest.mark.kafka
def test_kafka_oversized_state_is_refused(kafka_bootstrap: str, fresh_topic: str) -> None:
    """A state bigger than the topic's limit after compression is refused, naming unit and size."""
    from driftwarden.daemon.checkpoint_kafka import KafkaCheckpointStore

    store = KafkaCheckpointStore(kafka_bootstrap, fresh_topic, max_bytes=256 * 1024)
    try:
        rng = np.random.default_rng(7)
        big = {"models": {"m": {"x": rng.random(100_000).tolist()}}}
        with pytest.raises(CheckpointError) as err:
            store.save("p9", big)
        text = str(err.value)
        _one_sentence(text)
        assert "'p9'" in text and "bytes compressed" in text and str(256 * 1024) in text
        assert store.load("p9") is None  # nothing half-written
        # A compressible state of the same raw size fits: the limit applies after compression.
        store.save("p9", {"models": {"m": {"x": [0.5] * 100_000}}})
        assert store.load("p9") is not None
    finally:
        store.close()


@pytest.mark.kafka
def test_kafka_existing_topic_limit_applies(
    kafka_bootstrap: str, kafka_topic_factory: Callable[..., str]
) -> None:
    """On an existing topic with a smaller max.message.bytes, that smaller limit is enforced."""
    from driftwarden.daemon.checkpoint_kafka import KafkaCheckpointStore

    topic = kafka_topic_factory(1, compact=True, configs={"max.message.bytes": str(128 * 1024)})
    store = KafkaCheckpointStore(kafka_bootstrap, topic, max_bytes=16 * MiB)
    try:
        assert store.max_bytes == 128 * 1024
        rng = np.random.default_rng(11)
        with pytest.raises(CheckpointError, match=r"over the 131072-byte limit of topic"):
            store.save("p0", {"x": rng.random(50_000).tolist()})
    finally:
        store.close()


@pytest.mark.kafka
def test_kafka_topic_without_compaction_is_refused(
    kafka_bootstrap: str, kafka_topic_factory: Callable[..., str]
) -> None:
    """A state topic with delete retention is refused: it would lose checkpoints silently."""
    from driftwarden.daemon.checkpoint_kafka import KafkaCheckpointStore

    topic = kafka_topic_factory(1)
    with pytest.raises(CheckpointError, match=r"cleanup\.policy=delete; it must be compacted"):
        KafkaCheckpointStore(kafka_bootstrap, topic)


@pytest.mark.kafka
def test_kafka_reads_every_partition_of_an_existing_topic(
    kafka_bootstrap: str, kafka_topic_factory: Callable[..., str]
) -> None:
    """On a provisioned multi-partition topic, units spread over partitions all load back."""
    topic = kafka_topic_factory(3, compact=True)
    harness = KafkaHarness(kafka_bootstrap, topic)
    try:
        writer, reader = harness.open(), harness.open()
        units = [f"p{i}" for i in range(12)]
        for i, unit in enumerate(units):
            writer.save(unit, _payload(i, i * 10))
        for i, unit in enumerate(units):
            doc = reader.load(unit)
            assert doc is not None and doc["offsets"][0] == ["predictions", i, i * 10]
    finally:
        harness.close()


@pytest.mark.kafka
@pytest.mark.parametrize("partitions", [1, 3])
def test_kafka_reader_keeps_at_most_cache_bytes_of_values(
    kafka_bootstrap: str, kafka_topic_factory: Callable[..., str], partitions: int
) -> None:
    """A reader holds every unit's offset but values only up to ``cache_bytes`` (newest
    records kept): a unit whose value was dropped is fetched again, exactly, and reading on
    continues from where the reader was (later saves still arrive, none twice)."""
    from driftwarden.daemon.checkpoint_kafka import KafkaCheckpointStore

    topic = kafka_topic_factory(partitions, compact=True)
    harness = KafkaHarness(kafka_bootstrap, topic)
    try:
        writer = harness.open()
        units = [f"p{i}" for i in range(8)]
        for i, unit in enumerate(units):
            writer.save(unit, _payload(i, i * 10))
        one = len(writer.encode("p0", _payload(0, 0))[1])
        reader = KafkaCheckpointStore(
            kafka_bootstrap, topic, client_id="cache-reader", cache_bytes=3 * one + one // 2
        )
        harness.stores.append(reader)
        assert reader.units() == sorted(units)
        kept = [u for u, s in reader._latest.items() if s.value is not None]
        assert len(kept) == 3 and reader._cached <= reader.cache_bytes
        for i, unit in enumerate(units):  # dropped or not, every unit loads exactly
            doc = reader.load(unit)
            assert doc is not None and doc["offsets"][0] == ["predictions", i, i * 10]
        writer.save("p0", _payload(0, 999))
        writer.save("p9", _payload(9, 90))
        doc = reader.load("p0")
        assert doc is not None and doc["offsets"][0] == ["predictions", 0, 999]
        assert reader.load("p9") is not None and len(reader.units()) == 9
        assert reader._cached <= reader.cache_bytes

        nothing = KafkaCheckpointStore(
            kafka_bootstrap, topic, client_id="no-cache-reader", cache_bytes=0
        )
        harness.stores.append(nothing)
        for i, unit in enumerate(units[1:], start=1):
            doc = nothing.load(unit)
            assert doc is not None and doc["offsets"][0] == ["predictions", i, i * 10]
        assert nothing._cached == 0
    finally:
        harness.close()


@pytest.mark.kafka
@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"\x78\x9cnot-deflate-data", "zlib says"),
        (zlib.compress(b'{"format": "driftwarden.checkpoint", "version": 1}')[:-6], "truncated"),
        (zlib.compress(b"[1, 2"), "not valid JSON"),
    ],
)
def test_kafka_corrupted_compressed_value_is_refused(
    backend_kafka: KafkaHarness, value: bytes, reason: str
) -> None:
    """A broken zlib stream or broken JSON inside it is refused, naming unit, offset and why."""
    backend_kafka.write_raw("p6", value, [("driftwarden.codec", b"zlib")])
    with pytest.raises(CheckpointError, match=reason) as err:
        backend_kafka.open().load("p6")
    text = str(err.value)
    _one_sentence(text)
    assert "'p6'" in text and "offset 0" in text


@pytest.mark.kafka
def test_kafka_store_works_inside_a_rebalance_callback(
    backend_kafka: KafkaHarness, kafka_topic_factory: Callable[..., str]
) -> None:
    """load/save succeed on another consumer's IO thread, where the daemon's callbacks run."""
    from kafka import ConsumerRebalanceListener, KafkaConsumer

    store = backend_kafka.open()
    store.save("p0", _payload(0, 77))
    source_topic = kafka_topic_factory(1)
    seen: dict[str, Any] = {}

    class Listener(ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked: Any) -> None:
            return None

        def on_partitions_assigned(self, assigned: Any) -> None:
            if not assigned or seen:
                return  # a first round may assign nothing while topic metadata propagates
            seen["thread"] = threading.current_thread().name
            try:
                seen["loaded"] = store.load("p0")
                store.save("p0", _payload(0, 78))
            except Exception as exc:  # recorded, so the test fails with the reason
                seen["error"] = repr(exc)

    consumer = KafkaConsumer(
        bootstrap_servers=backend_kafka.bootstrap,
        group_id=f"dw-state-cb-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
    )
    try:
        consumer.subscribe([source_topic], listener=Listener())
        for _ in range(120):
            consumer.poll(timeout_ms=500)
            if seen:
                break
    finally:
        consumer.close(autocommit=False)
    assert "error" not in seen, seen.get("error")
    assert seen["thread"] != threading.main_thread().name  # really on the client's IO thread
    assert seen["loaded"]["offsets"][0][2] == 77
    doc = backend_kafka.open().load("p0")
    assert doc is not None and doc["offsets"][0][2] == 78
