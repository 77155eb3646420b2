"""A model whose events move to another input partition (the input topics gained partitions, so
Kafka's partitioner maps its key elsewhere) keeps its state: the new partition takes it over
from the old one (in memory when this process holds both, else from the old partition's latest
checkpoint), and the copy left idle on the old partition is retired instead of being reported
stale (see ``Daemon._adopt_moved`` / ``Daemon._retire_moved``)."""

from __future__ import annotations

import gzip
import json
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from driftwarden.daemon import runner
from driftwarden.daemon.cli import main
from driftwarden.daemon.runner import Unit
from driftwarden.daemon.settings import Settings
from driftwarden.daemon.sources import RawRecord
from tests.daemon.embedded import EVENTS, comparable_state
from tests.daemon.embedded import embedded_daemon as _embedded

with gzip.open(EVENTS, "rb") as _fh:
    LINES = _fh.read().splitlines()


def embedded_daemon(tmp: Path) -> Any:
    tmp.mkdir(parents=True, exist_ok=True)
    return _embedded(tmp)


def other_replica(tmp: Path) -> Any:
    """A daemon on the state directory of ``tmp`` that holds no partition yet (the file source
    hands every daemon partition 0: given back here, before any other writes its checkpoint)."""
    daemon = embedded_daemon(tmp)
    daemon.revoke([0])
    assert daemon.units == {}
    return daemon


def _feed(
    daemon: Any, lo: int, hi: int, partition: int, chunk: int = 1000, key: bytes | None = b"churn"
) -> None:
    """Example lines [lo, hi) on ``partition`` (their offsets), keyed by model as producers
    key them, in poll-sized chunks."""
    for start in range(lo, hi, chunk):
        stop = min(start + chunk, hi)
        daemon.process([RawRecord("file", partition, i, key, LINES[i]) for i in range(start, stop)])


def _moved(daemon: Any, direction: str) -> float:
    value = daemon.metrics.registry.get_sample_value(
        "driftwarden_models_moved_total", {"model": "churn", "direction": direction}
    )
    return value or 0.0


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> dict[str, float]:
    now = {"t": 1_000.0}
    monkeypatch.setattr(runner.time, "time", lambda: now["t"])
    return now


def test_a_moved_model_goes_on_as_if_it_had_not_moved(
    tmp_path: Path, clock: dict[str, float], capsys: pytest.CaptureFixture[str]
) -> None:
    """This process holds both partitions: the model's state on partition 1 continues from its
    state on partition 0, so after the move it equals that of a run where nothing moved; the
    idle copy on partition 0 is retired, not reported stale, and leaves its checkpoint."""
    ref = embedded_daemon(tmp_path / "ref")
    _feed(ref, 0, 12_000, 0)

    moved = embedded_daemon(tmp_path / "moved")
    _feed(moved, 0, 7_000, 0)
    before = moved.units[0].models["churn"].events
    clock["t"] += 10
    _feed(moved, 7_000, 12_000, 1)
    mon = moved.units[1].models["churn"]
    assert mon.events > before
    assert _moved(moved, "adopted") == 1
    assert comparable_state(mon.state()) == comparable_state(ref.units[0].models["churn"].state())
    assert moved.summary.decisions == ref.summary.decisions
    assert moved.units[0].models["churn"].events == before  # the old copy, idle

    # Still within the idle limit: both copies stay; `driftwarden status` tells them apart.
    assert moved.report_freshness(clock["t"] + 30, 60.0) == []
    assert set(moved.units[0].models) == {"churn"}
    moved.checkpoint()
    assert main(["status", "--config", str(tmp_path / "moved" / "driftwarden.yaml")]) == 0
    rows = [json.loads(ln) for ln in capsys.readouterr().out.splitlines() if ln.startswith("{")]
    copies = {r["unit"]: r for r in rows if r.get("model") == "churn"}
    assert sorted(copies) == ["p0", "p1"]
    assert copies["p0"]["superseded_by"] == "p1" and "superseded_by" not in copies["p1"]
    # The old copy idle for longer than the freshness limit: retired, nothing is stale.
    clock["t"] += 100
    _feed(moved, 12_000, 12_500, 1)
    assert moved.report_freshness(clock["t"] + 1, 60.0) == []
    assert moved.units[0].models == {} and set(moved.units[1].models) == {"churn"}
    assert _moved(moved, "retired") == 1
    moved.checkpoint()
    assert moved.store.load("p0")["models"] == {}
    assert set(moved.store.load("p1")["models"]) == {"churn"}
    # The model going quiet everywhere is still reported.
    assert moved.report_freshness(clock["t"] + 500, 60.0) == ["churn"]


def test_a_model_moved_to_another_replica_takes_the_old_checkpoint_and_the_old_copy_goes(
    tmp_path: Path, clock: dict[str, float]
) -> None:
    """Replica A holds partition 0, replica B partition 1, one state store between them (as
    the Kafka state topic is): B takes the model's state from A's checkpoint; A, idle, finds
    B's newer checkpoint and retires its copy instead of raising a staleness alert."""
    ref = embedded_daemon(tmp_path / "ref")
    _feed(ref, 0, 7_000, 0)
    ref.checkpoint()
    _feed(ref, 7_000, 12_000, 0)

    b = other_replica(tmp_path)  # the same state directory: A's checkpoints
    a = embedded_daemon(tmp_path)
    _feed(a, 0, 7_000, 0)
    a.checkpoint()
    _feed(b, 7_000, 12_000, 1)
    assert sorted(b.units) == [1]
    assert _moved(b, "adopted") == 1
    state = b.units[1].models["churn"].state()
    assert comparable_state(state) == comparable_state(ref.units[0].models["churn"].state())
    b.checkpoint()

    clock["t"] += 500
    assert a.report_freshness(clock["t"], 60.0) == []  # not "churn": it lives on, on B
    assert a.units[0].models == {} and _moved(a, "retired") == 1


def test_records_without_a_key_spread_over_partitions_each_with_its_own_state(
    tmp_path: Path, clock: dict[str, float]
) -> None:
    """A producer that sends no key spreads a model over every partition: no move, so the
    second partition's share starts a state of its own, as it always has."""
    daemon = embedded_daemon(tmp_path)
    _feed(daemon, 0, 3_000, 0, key=None)
    _feed(daemon, 3_000, 5_000, 1, key=None)
    fresh = embedded_daemon(tmp_path / "fresh")
    _feed(fresh, 3_000, 5_000, 1, key=None)
    assert daemon.units[1].models["churn"].events == fresh.units[1].models["churn"].events
    assert _moved(daemon, "adopted") == 0


def test_an_idle_model_nobody_else_holds_is_still_stale(
    tmp_path: Path, clock: dict[str, float]
) -> None:
    daemon = embedded_daemon(tmp_path)
    _feed(daemon, 0, 3_000, 0)
    daemon.checkpoint()
    assert daemon.report_freshness(clock["t"] + 500, 60.0) == ["churn"]
    assert set(daemon.units[0].models) == {"churn"} and _moved(daemon, "retired") == 0


def test_an_unreadable_old_copy_means_a_fresh_start_not_a_failure(
    tmp_path: Path, clock: dict[str, float]
) -> None:
    b = other_replica(tmp_path)
    a = embedded_daemon(tmp_path)
    _feed(a, 0, 5_000, 0)
    a.checkpoint()
    doc = a.store.load("p0")
    doc["models"]["churn"]["version"] = 999  # written by a driftwarden this one cannot read
    a.store.save("p0", {k: v for k, v in doc.items() if k not in ("format", "version")})

    _feed(b, 5_000, 8_000, 1)
    fresh = embedded_daemon(tmp_path / "fresh")
    _feed(fresh, 5_000, 8_000, 1)
    assert b.units[1].models["churn"].events == fresh.units[1].models["churn"].events
    assert _moved(b, "adopted") == 0 and b.summary.invalid == 0


def _produce(
    bootstrap: str, topics: dict[str, str], lo: int, hi: int, partition: int | None = None
) -> set[int]:
    """Example lines [lo, hi) keyed by model, to ``partition`` or where the producer's
    partitioner puts them (a new producer: it reads the topics' partitions afresh); returns
    the partitions they went to."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, acks="all")
    try:
        futures = []
        for line in LINES[lo:hi]:
            role = "labels" if b'"driftwarden.label' in line[:200] else "predictions"
            futures.append(
                producer.send(topics[role], key=b"churn", value=line, partition=partition)
            )
        producer.flush(timeout=60)
        return {f.get(timeout=30).partition for f in futures}
    finally:
        producer.close()


def _wait(
    what: str,
    done: Callable[[], bool],
    seconds: float = 120.0,
    shows: Callable[[], Any] = lambda: "",
) -> None:
    """Wait until ``done()``; a timeout names ``what`` and what ``shows()`` says then."""
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting: {what} ({shows()})"
        time.sleep(0.2)


def _counts(daemon: Any, partition: int) -> tuple[int, int] | None:
    """(events, labels) of model churn in ``partition`` (None: not held there)."""
    mon = daemon.units.get(partition, Unit(partition)).models.get("churn")
    return None if mon is None else (mon.events, mon.labels)


def _checkpoint(daemon: Any) -> None:
    """Have the running daemon checkpoint (on its own loop) and wait for it."""
    done = daemon.summary.checkpoints
    daemon.work.put(daemon.checkpoint)
    _wait("a checkpoint", lambda: daemon.summary.checkpoints > done)


def _start(daemon: Any, errors: list[BaseException]) -> threading.Thread:
    """``daemon.run`` on a thread of its own (until stopped); what it raises goes to
    ``errors``."""

    def run() -> None:
        try:
            daemon.run(timeout_s=240)
        except BaseException as exc:  # noqa: BLE001 - the test asserts there is none
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _examples_found_in_partition_1(settings: Settings, workdir: Path, before: list[str]) -> None:
    """`driftwarden retrain` (any machine) reads the model's examples from its new partition:
    the rows of before the move first, each once."""
    from driftwarden.daemon.cli import _shared_examples

    store, where = _shared_examples(settings, "churn", workdir)
    assert where["partition"] == 1
    ids = [r["prediction_id"] for r in store.rows("churn")]
    assert ids[: len(before)] == before and len(ids) > len(before)
    assert len(set(ids)) == len(ids)


@pytest.mark.kafka
def test_on_the_broker_the_new_owner_adopts_and_the_old_owner_retires(
    tmp_path: Path, kafka_bootstrap: str, kafka_topic_factory: Callable[..., str]
) -> None:
    """Two replicas (``state.backend: kafka``) in one group on 2-partition input topics. The
    model's events are first on partition 0, then on partition 1 (as after the topics gained a
    partition and its key now hashes there): whichever replica owns partition 1 takes the
    model's state from partition 0's checkpoint in the state topic and its labeled examples
    from the labeled topic; the owner of partition 0 retires its idle copy and reports no
    staleness."""
    from driftwarden.daemon.app import build_daemon
    from tests.daemon.test_labeled_gating import _policies
    from tests.daemon.test_labeled_share import _close, _ids, kafka_topics, replica_settings

    topics = kafka_topics(kafka_topic_factory, 2)
    policies = _policies(tmp_path, "pol", retrain=True)
    # A rule that fires on every clean window: its alert is firing when the events move.
    policy = policies / "churn.yaml"
    watching = "  - name: watching\n    when: not quality\n    actions: [{alert: log}]\n"
    policy.write_text(policy.read_text().replace("\nreceivers:", f"\n{watching}receivers:", 1))
    group = f"partition-move-{uuid.uuid4().hex[:8]}"

    def settings(name: str) -> Settings:
        return replica_settings(
            tmp_path,
            name,
            kafka_bootstrap,
            topics,
            policies,
            group,
            every_events=2000,
            group_instance_id=name,
        )

    ref = embedded_daemon(tmp_path / "ref")
    _feed(ref, 0, 12_000, 0)
    expected = ref.units[0].models["churn"]

    assert _produce(kafka_bootstrap, topics, 0, 7_000, 0) == {0}
    sa, sb = settings("a"), settings("b")
    daemons = {"a": build_daemon(sa), "b": build_daemon(sb)}
    errors: list[BaseException] = []
    threads = [_start(daemons["a"], errors)]
    try:
        _wait("replica a reads the first 7000", lambda: daemons["a"].summary.records >= 7_000)
        a_ids = _ids(sa)
        assert len(a_ids) > 1000
        threads.append(_start(daemons["b"], errors))
        owners: dict[int, Any] = {}

        def settled() -> bool:
            owners.clear()
            for d in daemons.values():
                for p in list(d.units):
                    owners[p] = d
            return sorted(owners) == [0, 1] and all(len(d.units) == 1 for d in daemons.values())

        _wait("each replica holds one partition", settled)
        old, new = owners[0], owners[1]
        assert _produce(kafka_bootstrap, topics, 7_000, 12_000, 1) == {1}
        whole = (expected.events, expected.labels)
        _wait(
            "the new owner reads the rest",
            lambda: _counts(new, 1) == whole,
            shows=lambda: (_counts(new, 1), whole, new.summary),
        )
        _checkpoint(new)  # its state of the model goes to the state topic
        assert _moved(new, "adopted") == 1
        new_ids = _ids(sa if new is daemons["a"] else sb)
        assert new_ids[: len(a_ids)] == a_ids  # the examples came along

        def alerts(d: Any) -> list[str]:
            active = d.executor.handover_state({"churn"})["alerts"]["active"]
            return sorted(e["alert"]["labels"]["rule"] for e in active)

        firing = alerts(old)
        assert firing == ["watching"]
        assert alerts(new) == firing  # they came along with the model

        stale: list[list[str]] = []
        old.work.put(lambda: stale.append(old.report_freshness(time.time() + 100, 1.0)))
        _wait("the old owner's freshness check", lambda: bool(stale))
        assert stale == [[]]
        assert "churn" not in old.units[0].models and _moved(old, "retired") == 1
        assert alerts(old) == []  # the new owner re-sends and resolves them
    finally:
        for d in daemons.values():
            d.request_stop()
        for t in threads:
            t.join(timeout=60)
        for d in daemons.values():
            _close(d)
    assert errors == []
    _examples_found_in_partition_1(sa, tmp_path / "retrain", a_ids)


def test_other_replicas_checkpoints_are_read_again_only_once_they_change(
    tmp_path: Path, clock: dict[str, float]
) -> None:
    """Looking for a new model's old state reads another replica's checkpoint once per version
    of it: a deployment whose models keep appearing does not parse every other partition's
    checkpoint for each of them."""
    b = other_replica(tmp_path)
    a = embedded_daemon(tmp_path)
    _feed(a, 0, 3_000, 0)
    a.checkpoint()
    loads: list[str] = []
    load = b.store.load
    b.store.load = lambda unit: loads.append(unit) or load(unit)  # type: ignore[method-assign]

    assert b._other_copies({"new-1"}, 1, owned=True) == {}
    assert loads == ["p0"]
    assert b._other_copies({"new-2"}, 1, owned=True) == {}
    assert loads == ["p0"]  # unchanged, and "new-2" is not in it
    found = b._other_copies({"churn"}, 1, owned=True)
    assert found["churn"][0] == 0 and loads == ["p0", "p0"]
    _feed(a, 3_000, 4_000, 0)
    a.checkpoint()
    assert b._other_copies({"new-3"}, 1, owned=True) == {}
    assert loads == ["p0", "p0", "p0"]  # changed: read again


@pytest.mark.kafka
def test_input_topics_gain_a_partition_while_the_daemon_runs(
    tmp_path: Path, kafka_bootstrap: str, kafka_topic_factory: Callable[..., str]
) -> None:
    """The real scale-out: a running daemon (``state.backend: kafka``) on 1-partition input
    topics; the operator adds a partition to both and producers with Kafka's default
    partitioner now send model ``churn`` to partition 1. The daemon notices the partition
    (``kafka.metadata_max_age_ms``), the labeled topic gets it too, and the model's state and
    examples carry on there: its counts equal a run where nothing moved."""
    from kafka.admin import KafkaAdminClient, NewPartitions

    from driftwarden.daemon.app import build_daemon
    from tests.daemon.test_labeled_gating import _policies
    from tests.daemon.test_labeled_share import _close, _ids, kafka_topics, replica_settings

    topics = kafka_topics(kafka_topic_factory, 1)
    settings = replica_settings(
        tmp_path,
        "driftwarden",
        kafka_bootstrap,
        topics,
        _policies(tmp_path, "pol", retrain=True),
        f"scale-out-{uuid.uuid4().hex[:8]}",
        every_events=2000,
        metadata_max_age_ms=1000,
    )
    ref = embedded_daemon(tmp_path / "ref")
    _feed(ref, 0, 12_000, 0)
    expected = ref.units[0].models["churn"]

    assert _produce(kafka_bootstrap, topics, 0, 7_000) == {0}
    daemon = build_daemon(settings)
    errors: list[BaseException] = []
    thread = _start(daemon, errors)
    try:
        _wait("the first 7000 read", lambda: daemon.summary.records >= 7_000)
        before = _ids(settings)
        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        try:
            admin.create_partitions(
                {topics[r]: NewPartitions(total_count=2) for r in ("predictions", "labels")}
            )
        finally:
            admin.close()
        # murmur2("churn") % 2 == 1: the model moved
        assert _produce(kafka_bootstrap, topics, 7_000, 12_000) == {1}
        whole = (expected.events, expected.labels)
        _wait(
            "the rest read on partition 1",
            lambda: _counts(daemon, 1) == whole,
            shows=lambda: (_counts(daemon, 1), whole, daemon.summary),
        )
        _checkpoint(daemon)  # the model's examples published to partition 1 of the labeled topic
        assert daemon.summary.records == 12_000
        assert _moved(daemon, "adopted") == 1
        held = daemon.metrics.registry.get_sample_value("driftwarden_assigned_partitions")
        assert held == 2  # the one replica holds both partitions after the rebalance
        failed = daemon.metrics.labeled_shared.labels("failed")._value.get()
        assert failed == 0  # the labeled topic gained the partition too
    finally:
        daemon.request_stop()
        thread.join(timeout=60)
        _close(daemon)
    assert errors == []
    _examples_found_in_partition_1(settings, tmp_path / "retrain", before)
