"""Faults against the real broker: the broker restarted under a running daemon, and one of three
replicas of a consumer group killed with SIGKILL.

Both scenarios publish the same seeded input (20 000 predictions per model for three models that
land on three different partitions, ~60 % labelled, a few malformed records) in two halves: the
first half before the fault, the second half after it, so the second half can only be processed
by a daemon that survived the fault (or by the replicas that took the killed one's partitions
over with the state it saved). The final window summaries and per-model state must equal those
of one uninterrupted daemon that read the whole input: nothing lost, nothing counted twice.

The measured figures (outage length, takeover time, whether the daemon survived the outage) are
attached to the junit XML as properties; ``bench/reliability.py`` turns them into RELIABILITY.md.
"""

from __future__ import annotations

import functools
import random
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from driftwarden.daemon.app import build_daemon
from driftwarden.daemon.checkpoint import LocalCheckpointStore
from driftwarden.daemon.settings import load_settings
from tests.daemon import eventgen
from tests.daemon.test_kafka_ingest import (
    MAX_BYTES,
    POLICY,
    _comparable,
    _config,
    _consume_all,
    _run_cli,
    _windows,
)
from tests.fixtures.kafka import load_broker_module

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

N_PER_MODEL = 20_000
# Keys hash (murmur2, kafka's default partitioner) to partitions 2, 1 and 0 of a 3-partition
# topic; the tests check the spread on the records themselves.
MODELS = ("churn", "fraud", "spam")
PARTITIONS = 3
N_BAD = 120
# Replicas are evicted after this long without a heartbeat: the takeover's floor.
SESSION_TIMEOUT_MS = 10_000
WAIT_S = 180.0  # bound on every wait below; a healthy run needs a fraction of it


# With ``incidents``: a pipeline fills days_since_last_login with 0 for a stretch of each
# model's input (as a fraction of it), so rules fire and resolve (the soak counts deliveries).
INCIDENTS = {"churn": (0.30, 0.40), "fraud": (0.55, 0.62), "spam": (0.80, 0.90)}


@functools.cache
def _input(
    n_per_model: int = N_PER_MODEL, incidents: bool = False
) -> tuple[tuple[str, str, bytes], ...]:
    """The whole seeded input as (role, key, value), in publication order."""
    rng = random.Random(17)

    def span(m: str) -> dict[str, int]:
        if not incidents:
            return {}
        a, b = INCIDENTS[m]
        return {"incident_from": int(a * n_per_model), "incident_to": int(b * n_per_model)}

    streams = [
        iter(eventgen.events(n_per_model, seed=31 + i, model=m, **span(m)))
        for i, m in enumerate(MODELS)
    ]
    bad = eventgen.malformed(N_BAD, seed=5, max_bytes=MAX_BYTES)
    out = [
        (role, key, value)
        for role, key, value, _ in eventgen.interleave(streams, MODELS, bad, 0.0015, rng)
    ]
    return tuple(out)


class Stream:
    """One set of uniquely named topics on the broker, with the policy directory beside them."""

    def __init__(
        self,
        bootstrap: str,
        base: Path,
        name: str,
        n_per_model: int = N_PER_MODEL,
        *,
        incidents: bool = False,
        policy: str = POLICY,
    ) -> None:
        from kafka.admin import KafkaAdminClient, NewTopic

        tag = f"{name}-{uuid.uuid4().hex[:8]}"
        self.bootstrap = bootstrap
        self.name = name
        self.n_per_model = n_per_model
        self.incidents = incidents
        self.topics = {
            k: f"{k}-{tag}"
            for k in ("predictions", "labels", "dlq", "decisions", "windows", "alerts", "routing")
        }
        self.topics["state"] = f"state-{tag}"
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            admin.create_topics(
                [NewTopic(self.topics[k], PARTITIONS, 1) for k in ("predictions", "labels")]
                + [
                    NewTopic(self.topics[k], 1, 1)
                    for k in ("dlq", "decisions", "windows", "alerts", "routing")
                ]
            )
        finally:
            admin.close()
        self.base = base / name
        (self.base / "policies").mkdir(parents=True)
        (self.base / "policies" / "all.yaml").write_text(policy)
        eventgen.save_profile(self.base / "policies" / "profile.json")

    def as_dict(self) -> dict[str, Any]:
        """The shape ``test_kafka_ingest``'s helpers take."""
        return {"topics": self.topics, "base": self.base}

    def produce(self, part: slice) -> int:
        """Publish a slice of the input (keyed by model) and wait for every acknowledgement."""
        from kafka import KafkaProducer

        producer = KafkaProducer(
            bootstrap_servers=self.bootstrap, linger_ms=20, acks="all", batch_size=256 * 1024
        )
        rows = _input(self.n_per_model, self.incidents)[part]
        try:
            for role, key, value in rows:
                producer.send(self.topics[role], key=key.encode(), value=value)
            producer.flush(timeout=60)
        finally:
            producer.close()
        return len(rows)

    def config(self, name: str, *, backend: str = "local", **kafka: Any) -> Path:
        """A daemon config for this stream (checkpoint every 2 s so commits track progress)."""
        path = _config(self.as_dict(), self.bootstrap, name, every_events=5_000, backend=backend)
        cfg = yaml.safe_load(path.read_text())
        cfg["checkpoint"]["every"] = "2s"
        cfg["kafka"]["session_timeout_ms"] = SESSION_TIMEOUT_MS
        cfg["kafka"].update(kafka)
        path.write_text(yaml.safe_dump(cfg))
        return path

    def input_partitions(self) -> list[tuple[str, int]]:
        return [(self.topics[r], p) for r in ("predictions", "labels") for p in range(PARTITIONS)]

    def end_offsets(self) -> dict[tuple[str, int], int]:
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        try:
            ends = consumer.end_offsets([TopicPartition(t, p) for t, p in self.input_partitions()])
        finally:
            consumer.close()
        return {(tp.topic, tp.partition): o for tp, o in ends.items()}

    def committed(self, group: str) -> dict[tuple[str, int], int]:
        """The group's committed offsets on the input topics (missing partitions are 0)."""
        from kafka.admin import KafkaAdminClient
        from kafka.errors import KafkaError

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=10_000)
        deadline = time.monotonic() + 60
        try:
            while True:
                try:
                    got = admin.list_group_offsets({group: None}).get(group, {})
                    break
                except KafkaError as err:
                    # After a broker restart the group coordinator loads for a while.
                    if not getattr(err, "retriable", False) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
        finally:
            admin.close()
        out = dict.fromkeys(self.input_partitions(), 0)
        for tp, om in got.items():
            if (tp.topic, tp.partition) in out and om.offset >= 0:
                out[(tp.topic, tp.partition)] = om.offset
        return out

    def key_partitions(self) -> dict[str, set[int]]:
        """The partitions each model's keyed records landed on (both input topics)."""
        out: dict[str, set[int]] = {}
        for role in ("predictions", "labels"):
            for rec in _consume_all(self.bootstrap, self.topics[role]):
                out.setdefault(rec.key.decode(), set()).add(rec.partition)
        return out


def _state(store: Any) -> dict[str, Any]:
    """Merge the per-partition checkpoints of a store into one state (as test_kafka_ingest)."""
    models: dict[str, Any] = {}
    invalid = 0
    for p in range(PARTITIONS):
        doc = store.load(f"p{p}")
        if doc:
            assert not set(models) & set(doc["models"]), f"a model is in two units (p{p})"
            models.update(doc["models"])
            invalid += doc["invalid"]
    store.close()
    return {"models": models, "invalid": invalid}


def _kafka_state(stream: Stream) -> dict[str, Any]:
    from driftwarden.daemon.checkpoint_kafka import KafkaCheckpointStore

    return _state(
        KafkaCheckpointStore(stream.bootstrap, stream.topics["state"], create_topic=False)
    )


def _group(config: Path) -> str:
    return str(yaml.safe_load(config.read_text())["kafka"]["group_id"])


def _wait(what: str, cond: Callable[[], bool], procs: list[subprocess.Popen[bytes]]) -> float:
    """Poll ``cond`` until true; fail naming ``what`` (with stderr of a dead daemon) after WAIT_S.

    On a timeout the daemons are stopped and what each wrote is in the failure: its size tells
    a daemon blocked on a full pipe (64 KiB unread) from one that had nothing to say."""
    t0 = time.monotonic()
    while not cond():
        for proc in procs:
            if proc.poll() is not None:
                err = proc.stderr.read().decode()[-3000:] if proc.stderr else ""
                pytest.fail(f"a daemon exited ({proc.returncode}) while waiting for {what}: {err}")
        if time.monotonic() - t0 >= WAIT_S:
            said = []
            for proc in procs:
                proc.kill()
                out, err = proc.communicate()
                said.append(
                    f"daemon pid {proc.pid}: {len(out or b'')} B on stdout, {len(err or b'')} B on "
                    f"stderr, ending: {(err or b'').decode(errors='replace')[-2000:]}"
                )
            pytest.fail(f"timed out after {WAIT_S} s waiting for {what}; " + "; ".join(said))
        time.sleep(0.3)
    return time.monotonic() - t0


def _crash_summary(stderr: str) -> str:
    """The daemon's own traceback frames and the exception line of a crashed run's stderr."""
    lines = stderr.strip().splitlines()
    # Our frames: the package is installed editable, so they are the ones outside site-packages.
    ours = [
        ln.strip()
        for ln in lines
        if ln.lstrip().startswith("File") and "site-packages" not in ln and "<frozen" not in ln
    ]
    return " | ".join([*ours, lines[-1].strip() if lines else "(no stderr)"])


def _stop(proc: subprocess.Popen[bytes]) -> str:
    """SIGTERM a daemon (final checkpoint and commit) and return its stderr; it must exit 0."""
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()[-3000:]
    return err.decode()


def _assert_same(got: Any, want: Any) -> None:
    """Compare ``_comparable`` results, naming the first model part or window that differs."""
    assert got[2] == want[2], f"invalid counts differ: {got[2]} != {want[2]}"
    assert sorted(got[1]) == sorted(want[1]), "the models with state differ"
    for model in want[1]:
        for part, (g, w) in enumerate(zip(got[1][model], want[1][model], strict=True)):
            if isinstance(w, dict):
                diff = {k: (g.get(k), w[k]) for k in w if g.get(k) != w[k]}
                assert not diff, f"{model} part {part}: {str(diff)[:1500]}"
            assert g == w, f"{model} part {part} differs"
    assert [k for k, _ in got[0]] == [k for k, _ in want[0]], "different windows were published"
    assert got[0] == want[0]


@pytest.fixture(scope="module")
def fault_broker(kafka_bootstrap: str, kafka_broker: Any, tmp_path_factory: Any) -> Iterator[Any]:
    """A broker these tests may stop: the session's jar broker, else one of their own."""
    if kafka_broker is not None:
        yield kafka_broker
        return
    kb = load_broker_module()
    broker = kb.Broker(tmp_path_factory.mktemp("fault-broker"))
    try:
        broker.start(timeout=180)
    except kb.BrokerError as err:
        pytest.fail(f"The fault tests' own Kafka broker did not start: {err}", pytrace=False)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="module")
def baseline(fault_broker: Any, tmp_path_factory: Any) -> Any:
    """One daemon, in-process, reading the whole input without interruption."""
    stream = Stream(fault_broker.bootstrap, tmp_path_factory.mktemp("faults"), "clean")
    stream.produce(slice(None))
    settings = load_settings(stream.config("clean"), env={})
    daemon = build_daemon(settings)
    summary = daemon.run(idle_timeout_s=5, timeout_s=300)
    daemon.sink.close()
    daemon.source.close()
    state = _state(LocalCheckpointStore(stream.base / "state-clean"))
    assert summary.invalid == N_BAD == state["invalid"]
    for model in MODELS:
        assert state["models"][model]["events"] == N_PER_MODEL
    return _comparable(_windows(stream.as_dict(), stream.bootstrap), state)


def test_broker_restart_mid_stream_loses_and_repeats_nothing(
    fault_broker: Any,
    baseline: Any,
    tmp_path_factory: Any,
    record_property: Callable[[str, object], None],
) -> None:
    """Stop the broker under a running daemon and start it again: the results are unchanged."""
    stream = Stream(fault_broker.bootstrap, tmp_path_factory.mktemp("faults"), "restart")
    half = len(_input()) // 2
    stream.produce(slice(0, half))
    config = stream.config("restart")
    group = _group(config)
    proc = _run_cli(config)
    procs = [proc]
    try:
        # Mid-stream: the daemon has checkpointed part of the first half, not all of it yet.
        _wait("a first commit", lambda: sum(stream.committed(group).values()) > 0, procs)
        done_before = sum(stream.committed(group).values())
        t0 = time.monotonic()
        fault_broker.stop()
        time.sleep(5.0)  # the daemon polls a dead broker for a while
        fault_broker.start(timeout=180)
        outage = time.monotonic() - t0
        crashed = proc.poll() is not None
        if crashed:  # reported as a finding; the restarted daemon must still give the same result
            _, err = proc.communicate()
            record_property("crash", _crash_summary(err.decode()))
            proc = _run_cli(config)
            procs = [proc]
        stream.produce(slice(half, None))
        ends = stream.end_offsets()
        catch_up = _wait(
            "the group to commit the whole input", lambda: stream.committed(group) == ends, procs
        )
        _stop(proc)
    finally:
        if not fault_broker.is_running():
            fault_broker.start(timeout=180)
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    record_property("records", len(_input()))
    record_property("committed_before_outage", done_before)
    record_property("outage_s", round(outage, 1))
    record_property("daemon_crashed_on_broker_loss", crashed)
    record_property("catch_up_s", round(catch_up, 1))
    record_property("first_half_in_flight_at_outage", done_before < half)
    assert done_before > 0

    state = _state(LocalCheckpointStore(stream.base / "state-restart"))
    _assert_same(_comparable(_windows(stream.as_dict(), stream.bootstrap), state), baseline)


def _members(bootstrap: str, group: str) -> tuple[str, dict[str, set[int]]]:
    """The group's state and each member's assigned input partition numbers, by client id."""
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        desc = admin.describe_groups([group])[group]
    finally:
        admin.close()
    out: dict[str, set[int]] = {}
    for member in desc.get("members", []):
        assignment = member.get("member_assignment") or {}
        parts: set[int] = set()
        for tp in assignment.get("assigned_partitions", []) if isinstance(assignment, dict) else []:
            parts.update(tp.get("partitions", []))
        out[member["client_id"]] = parts
    return str(desc.get("group_state")), out


def test_replica_killed_its_partitions_move_with_their_state(
    fault_broker: Any,
    baseline: Any,
    tmp_path_factory: Any,
    record_property: Callable[[str, object], None],
) -> None:
    """Kill -9 one of three replicas (state in Kafka): the others finish its partitions exactly."""
    stream = Stream(fault_broker.bootstrap, tmp_path_factory.mktemp("faults"), "replicas")
    half = len(_input()) // 2
    stream.produce(slice(0, half))
    spread = stream.key_partitions()
    assert all(len(spread[m]) == 1 for m in MODELS), spread  # a model's events stay together
    assert len({p for m in MODELS for p in spread[m]}) == PARTITIONS, spread  # one per partition

    group = f"dw-replicas-{uuid.uuid4().hex[:6]}"
    configs = [
        stream.config(f"replica{i}", backend="kafka", group_id=group, client_id=f"replica{i}")
        for i in range(3)
    ]
    procs = {f"replica{i}": _run_cli(c) for i, c in enumerate(configs)}
    try:

        def balanced() -> bool:
            state, members = _members(stream.bootstrap, group)
            return (
                state == "Stable"
                and len(members) == 3
                and all(len(parts) == 1 for parts in members.values())
            )

        joined_s = _wait("three replicas with one partition each", balanced, list(procs.values()))
        _, members = _members(stream.bootstrap, group)
        victim = sorted(members)[random.Random(3).randrange(3)]
        (lost,) = members[victim]
        # Let every replica checkpoint part of its work first, so the takeover restores real state.
        _wait(
            "a commit on every partition",
            lambda: all(o > 0 for o in stream.committed(group).values()),
            list(procs.values()),
        )
        procs[victim].kill()
        procs[victim].communicate()
        killed_at = time.monotonic()
        at_kill = stream.committed(group)
        stream.produce(slice(half, None))  # the lost partition gets new input only a taker can do
        survivors = [p for name, p in procs.items() if name != victim]

        def taken_over() -> bool:
            state, members = _members(stream.bootstrap, group)
            return state == "Stable" and victim not in members and len(members) == 2

        _wait("the victim's partition to move", taken_over, survivors)
        takeover_s = time.monotonic() - killed_at
        ends = stream.end_offsets()
        orphaned = sum(ends[tp] - o for tp, o in at_kill.items() if tp[1] == lost)
        _wait(
            "the group to commit the whole input",
            lambda: stream.committed(group) == ends,
            survivors,
        )
        finished_s = time.monotonic() - killed_at
        for proc in survivors:
            _stop(proc)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    record_property("records", len(_input()))
    record_property("replicas", 3)
    record_property("killed", f"{victim} (partition {lost})")
    record_property("records_on_lost_partition_after_kill", orphaned)
    record_property("join_s", round(joined_s, 1))
    record_property("takeover_s", round(takeover_s, 1))
    record_property("kill_to_all_committed_s", round(finished_s, 1))

    assert orphaned > 0  # the survivors had to process the killed replica's input
    state = _kafka_state(stream)
    _assert_same(_comparable(_windows(stream.as_dict(), stream.bootstrap), state), baseline)
