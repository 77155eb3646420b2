"""The Kafka broker used by the integration tests: the script, the fixture and the broker itself."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

from tests.fixtures.kafka import BROKER_SCRIPT, load_broker_module

kb = load_broker_module()

# Upper bounds for waits on a shared 2-core machine; they bound a hang, they assert no speed.
_WAIT_S = 60.0


def _run_script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BROKER_SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )


def _consumer(bootstrap: str, group: str | None = None, **kwargs: Any) -> KafkaConsumer:
    return KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **kwargs,
    )


def _poll_n(consumer: KafkaConsumer, n: int) -> list[Any]:
    """Poll until ``n`` records arrived (or the wait bound passes); return them in order."""
    records: list[Any] = []
    deadline = time.monotonic() + _WAIT_S
    while len(records) < n and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(batch)
    return records


def _produce(bootstrap: str, topic: str, items: list[tuple[bytes, bytes]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    try:
        for key, value in items:
            producer.send(topic, key=key, value=value)
        producer.flush(timeout=_WAIT_S)
    finally:
        producer.close()


# --------------------------------------------------------------------------- pure helpers


def test_cluster_ids_have_the_form_of_kafka_uuids() -> None:
    """Cluster ids are unpadded URL-safe base64 of 16 bytes, never starting with '-'."""
    ids = [kb.new_cluster_id() for _ in range(300)]
    assert len(set(ids)) == len(ids)
    for cid in ids:
        assert len(cid) == 22 and not cid.startswith("-")
        assert len(base64.urlsafe_b64decode(cid + "==")) == 16


def test_rendered_properties_fill_every_placeholder(tmp_path: Path) -> None:
    """The shipped template renders to listeners on the given ports with no placeholder left."""
    template = (kb.KAFKA_DIR / "server.properties.template").read_text()
    text = kb.render_properties(template, port=21001, controller_port=21002, log_dir=tmp_path)
    props = dict(
        line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#")
    )
    assert "{" not in text
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:21001,CONTROLLER://127.0.0.1:21002"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:21002"
    assert props["log.dirs"] == str(tmp_path)
    assert props["group.initial.rebalance.delay.ms"] == "0"


def _props(text: str) -> dict[str, str]:
    pairs = [line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#")]
    keys = [k for k, _ in pairs]
    assert len(keys) == len(set(keys)), "a key is set twice"
    return dict(pairs)


def test_secured_properties_make_the_client_port_sasl_ssl(tmp_path: Path) -> None:
    """sasl_ssl: the client port is SASL_SSL/SCRAM-SHA-512; probe and inter-broker use INTERNAL."""
    template = (kb.KAFKA_DIR / "server.properties.template").read_text()
    plain = kb.render_properties(template, port=21001, controller_port=21002, log_dir=tmp_path)
    text = kb.secure_properties(
        plain, port=21001, internal_port=21003, controller_port=21002, tls=tmp_path, password="pw"
    )
    props, before = _props(text), _props(plain)
    assert props["listeners"] == (
        "SASL_SSL://127.0.0.1:21001,INTERNAL://127.0.0.1:21003,CONTROLLER://127.0.0.1:21002"
    )
    assert props["advertised.listeners"] == "SASL_SSL://127.0.0.1:21001,INTERNAL://127.0.0.1:21003"
    assert props["inter.broker.listener.name"] == "INTERNAL"
    assert "SASL_SSL:SASL_SSL" in props["listener.security.protocol.map"].split(",")
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert "ScramLoginModule" in props["listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config"]
    assert props["ssl.keystore.location"] == str(tmp_path / "broker.p12")
    changed = {k for k in before if before[k] != props[k]}
    assert changed == {
        "listeners",
        "advertised.listeners",
        "inter.broker.listener.name",
        "listener.security.protocol.map",
    }


def test_security_mode_is_kept_by_the_work_directory(tmp_path: Path) -> None:
    """A sasl_ssl dir keeps its mode, ports and secrets (owner-only); plaintext stays as before."""
    secured = kb.Broker(tmp_path / "s", security="sasl_ssl")
    saved = (tmp_path / "s" / "broker.json").stat()
    assert saved.st_mode & 0o777 == 0o600
    again = kb.Broker(tmp_path / "s")
    assert again.security == "sasl_ssl"
    assert again.client_security() == secured.client_security()
    assert again.internal_port == secured.internal_port not in (secured.port, None)
    sec = secured.client_security()
    assert sec["security_protocol"] == "SASL_SSL" and sec["sasl_mechanism"] == "SCRAM-SHA-512"
    assert sec["ssl_cafile"] == str(tmp_path / "s" / "tls" / "ca.pem")
    assert secured.client_security(password="x")["sasl_plain_password"] == "x"
    with pytest.raises(kb.BrokerError, match="already holds a sasl_ssl broker"):
        kb.Broker(tmp_path / "s", security="plaintext")
    with pytest.raises(kb.BrokerError, match="not one of"):
        kb.Broker(tmp_path / "x", security="ssl")

    plain = kb.Broker(tmp_path / "p")
    assert plain.security == "plaintext" and plain.client_security() == {}
    assert plain.internal_port is None and plain.ca_file is None
    assert set(json.loads((tmp_path / "p" / "broker.json").read_text())) == {
        "port",
        "controller_port",
    }


def test_free_ports_lie_below_the_ephemeral_range() -> None:
    """Chosen ports avoid the kernel's ephemeral range, so clients cannot take them mid-restart."""
    low, _ = kb._ephemeral_range()
    port = kb.free_port()
    assert 1024 < port < low
    assert kb.free_port(exclude=(port,)) != port


# --------------------------------------------------------------------------- fetch


def _jar_snapshot(lib: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in lib.glob("*.jar")}


def test_fetch_is_a_no_op_when_the_jars_are_present(tmp_path: Path) -> None:
    """With a complete lib/, `fetch` succeeds twice without Maven on PATH and changes no jar."""
    kb.ensure_jars()
    before = _jar_snapshot(kb.KAFKA_DIR / "lib")
    no_mvn = {**os.environ, "PATH": str(tmp_path)}  # an empty dir: `mvn` cannot be found
    for _ in range(2):
        done = _run_script("fetch", env=no_mvn)
        assert done.returncode == 0, done.stderr
    assert _jar_snapshot(kb.KAFKA_DIR / "lib") == before
    assert any(name.startswith("kafka_2.13-") for name in before)


@pytest.mark.slow
def test_fetch_fills_an_empty_lib_from_the_pom(tmp_path: Path) -> None:
    """`fetch` on a bare pom copies the same jar set as the project's lib/, then is a no-op."""
    if shutil.which("mvn") is None:
        pytest.fail("Maven (mvn) is needed to test the fetch step and is not on PATH.")
    shutil.copy(kb.KAFKA_DIR / "pom.xml", tmp_path / "pom.xml")
    done = _run_script("--kafka-dir", str(tmp_path), "fetch")
    assert done.returncode == 0, done.stderr
    fetched = _jar_snapshot(tmp_path / "lib")
    assert set(fetched) == set(_jar_snapshot(kb.KAFKA_DIR / "lib"))
    no_mvn = {**os.environ, "PATH": str(tmp_path / "lib")}
    again = _run_script("--kafka-dir", str(tmp_path), "fetch", env=no_mvn)
    assert again.returncode == 0, again.stderr
    assert _jar_snapshot(tmp_path / "lib") == fetched


# --------------------------------------------------------------------------- the session broker


@pytest.mark.kafka
def test_probe_finds_the_fixture_broker(kafka_bootstrap: str) -> None:
    """The stdlib Metadata probe lists the broker that the fixture's bootstrap names."""
    host, port = kafka_bootstrap.rsplit(":", 1)
    brokers = kb.probe_metadata(host, int(port))
    assert brokers and all(p > 0 for _, _, p in brokers)


@pytest.mark.kafka
def test_round_trip_and_committed_offset(kafka_bootstrap: str, kafka_topic_factory: Any) -> None:
    """Messages go through; a group's committed offset is where its next consumer starts."""
    topic = kafka_topic_factory()
    sent = [(b"churn", f"event-{i}".encode()) for i in range(5)]
    _produce(kafka_bootstrap, topic, sent)
    tp = TopicPartition(topic, 0)

    first = _consumer(kafka_bootstrap, "dw-roundtrip")
    first.subscribe([topic])
    got = _poll_n(first, len(sent))
    assert [(r.key, r.value) for r in got] == sent
    first.commit()
    assert first.committed(tp) == len(sent)
    first.close()

    _produce(kafka_bootstrap, topic, [(b"churn", b"after-commit")])
    second = _consumer(kafka_bootstrap, "dw-roundtrip")
    second.subscribe([topic])
    resumed = _poll_n(second, 1)
    second.close()
    assert [(r.offset, r.value) for r in resumed] == [(len(sent), b"after-commit")]


@pytest.mark.kafka
def test_topic_factory_creates_unique_compacted_multi_partition_topics(
    kafka_bootstrap: str, kafka_topic_factory: Any
) -> None:
    """`compact=True` with 3 partitions gives a compacted 3-partition topic; names never repeat."""
    compacted = kafka_topic_factory(3, compact=True)
    plain = kafka_topic_factory()
    assert compacted != plain
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        described = {t["name"]: t for t in admin.describe_topics([compacted, plain])}
        configs = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, compacted, ["cleanup.policy"])],
            config_filter="all",
        )
    finally:
        admin.close()
    assert len(described[compacted]["partitions"]) == 3
    assert len(described[plain]["partitions"]) == 1
    assert "'compact'" in repr(configs) or '"compact"' in repr(configs), configs


def _latest_values(bootstrap: str, topic: str) -> list[tuple[bytes, bytes]]:
    """Read a one-partition topic from the start to its current end, as (key, value) pairs."""
    consumer = _consumer(bootstrap)
    tp = TopicPartition(topic, 0)
    try:
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp])[tp]
        records: list[Any] = []
        deadline = time.monotonic() + _WAIT_S
        while consumer.position(tp) < end and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return [(r.key, r.value) for r in records]
    finally:
        consumer.close()


@pytest.mark.kafka
def test_log_cleaner_compacts_a_compacted_topic(
    kafka_bootstrap: str, kafka_topic_factory: Any
) -> None:
    """The broker's log cleaner runs: older values of a key disappear from a compacted topic."""
    topic = kafka_topic_factory(
        compact=True,
        configs={"segment.ms": "100", "min.cleanable.dirty.ratio": "0.01"},
    )
    updates = [(f"model-{k}".encode(), f"route-{v}".encode()) for v in range(4) for k in "ab"]
    _produce(kafka_bootstrap, topic, updates)
    # Compaction never touches the active segment: keep appending a filler so segments roll.
    deadline = time.monotonic() + _WAIT_S
    seen = _latest_values(kafka_bootstrap, topic)
    while time.monotonic() < deadline:
        seen = _latest_values(kafka_bootstrap, topic)
        if len([kv for kv in seen if kv[0] != b"filler"]) == 2:
            break
        time.sleep(0.5)
        _produce(kafka_bootstrap, topic, [(b"filler", b"x")])
    assert [kv for kv in seen if kv[0] != b"filler"] == [
        (b"model-a", b"route-3"),
        (b"model-b", b"route-3"),
    ]


@pytest.fixture
def restartable_broker(kafka_broker: Any, tmp_path: Path) -> Iterator[Any]:
    """The session's jar broker when there is one, else a private jar broker for this test."""
    if kafka_broker is not None:
        yield kafka_broker
        if not kafka_broker.is_running():  # leave the shared broker as we found it
            kafka_broker.start()
        return
    own = kb.Broker(tmp_path / "kafka")
    try:
        own.start()
    except kb.BrokerError as err:
        pytest.fail(f"A private Kafka broker for the restart test did not start: {err}")
    try:
        yield own
    finally:
        own.stop()


@pytest.mark.kafka
def test_committed_offset_survives_clean_restart_and_crash(restartable_broker: Any) -> None:
    """A group's committed offset and the data survive stop/start and kill/start on one port."""
    broker = restartable_broker
    bootstrap = broker.bootstrap
    topic = f"restart-{os.getpid()}-{time.monotonic_ns()}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics({topic: {"num_partitions": 1}}, wait_for_metadata=True)
    admin.close()
    tp = TopicPartition(topic, 0)
    _produce(bootstrap, topic, [(b"k", b"v0"), (b"k", b"v1"), (b"k", b"v2")])
    consumer = _consumer(bootstrap, "dw-restart")
    consumer.subscribe([topic])
    assert len(_poll_n(consumer, 3)) == 3
    consumer.commit()
    consumer.close()

    for n, halt in enumerate((broker.stop, broker.kill)):
        halt()
        assert not broker.is_running()
        assert broker.start() == bootstrap
        _produce(bootstrap, topic, [(b"k", f"after-restart-{n}".encode())])
        consumer = _consumer(bootstrap, "dw-restart")
        consumer.subscribe([topic])
        got = _poll_n(consumer, 1)
        assert [(r.offset, r.value) for r in got] == [(3 + n, f"after-restart-{n}".encode())]
        consumer.commit()
        assert consumer.committed(tp) == 4 + n
        consumer.close()


# --------------------------------------------------------------------------- command line


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.kafka
def test_cli_start_status_stop_and_failed_start(tmp_path: Path) -> None:
    """`start` detaches a ready broker; `stop` ends it; a broken start exits 1 with the log tail."""
    workdir = tmp_path / "cli"
    started = _run_script("start", "--dir", str(workdir))
    assert started.returncode == 0, started.stderr
    bootstrap = started.stdout.strip()
    pid = int((workdir / "pid").read_text())
    try:
        assert (workdir / "bootstrap").read_text().strip() == bootstrap
        host, port = bootstrap.rsplit(":", 1)
        assert int(port) in {p for _, _, p in kb.probe_metadata(host, int(port))}
        assert _run_script("status", "--dir", str(workdir)).returncode == 0
    finally:
        stopped = _run_script("stop", "--dir", str(workdir))
    assert stopped.returncode == 0, stopped.stderr
    assert not _alive(pid)
    assert not (workdir / "pid").exists()
    assert _run_script("status", "--dir", str(workdir)).returncode == 1

    # A data dir that belongs to another node id: Kafka refuses it and exits at start-up.
    meta = workdir / "data" / "meta.properties"
    meta.write_text(meta.read_text().replace("node.id=1", "node.id=7"))
    failed = _run_script("start", "--dir", str(workdir))
    assert failed.returncode == 1
    assert "Stored node id 7 doesn't match" in failed.stderr
    assert _run_script("status", "--dir", str(workdir)).returncode == 1
