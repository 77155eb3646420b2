"""The ingest runtime on a real Kafka broker.

100 000 predictions and ~60 000 labels for two models (late, early and never-arriving labels,
orphan labels) with ~1 % malformed records of many kinds go through the daemon. Every valid
event is counted exactly once in the window statistics, every malformed one reaches the
dead-letter topic with its reason and origin (the oversized ones are larger than the
consumer's ``kafka.max_partition_fetch_bytes``), and the join counters are exact. Then the same
input is consumed by daemons that are stopped with SIGTERM, or killed with SIGKILL, mid-stream
and restarted: their final window statistics, and the labeled examples their store kept, equal
the uninterrupted run's.
"""

from __future__ import annotations

import base64
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from driftwarden.daemon.app import build_daemon
from driftwarden.daemon.checkpoint import LocalCheckpointStore
from driftwarden.daemon.settings import load_settings

from . import eventgen

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

N_PER_MODEL = 50_000
MODELS = ("churn", "fraud")
MAX_BYTES = 100_000
FETCH_BYTES = 96 * 1024

POLICY = """\
apiVersion: driftwarden/v1
kind: Policy
model: "*"
reference: file:profile.json
window: {duration: 200s, labeled: {duration: 10m}, allowed_lateness: 10m}
detectors:
  - {name: quality, type: data_quality}
  - {name: drift, type: feature_drift, method: js, threshold: 0.1}
  - {name: enterprise_recall, type: slice_performance, metric: recall,
     slice: {customer_tier: enterprise}, max_drop: 0.1, min_samples: 50}
rules:
  - name: broken-input
    when: quality
    severity: critical
    actions: [{alert: log}]
  # Never fires; a policy with a retrain action makes the daemon keep its models' labeled
  # examples (retrain/labeled_store.py), so crashes are checked against the store too.
  - name: keep-examples
    when: quality and not quality
    severity: info
    actions: [{retrain: {trainer: examples.churn:train, gates: {min: {roc_auc: 0.7}}}}]
receivers:
  log: {type: log}
"""


def _consume_all(bootstrap: str, topic: str, timeout_s: float = 120.0, **client: Any) -> list[Any]:
    """Every record of a topic: read until the end offsets seen at the start are reached.

    ``client``: more kafka-python settings (e.g. a secured listener's).
    """
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, **client)
    try:
        deadline = time.monotonic() + timeout_s
        while not consumer.partitions_for_topic(topic):  # metadata arrives asynchronously
            assert time.monotonic() < deadline, f"topic {topic} has no partitions"
            consumer.topics()
            time.sleep(0.2)
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(parts)
        consumer.seek_to_beginning()
        ends = consumer.end_offsets(parts)
        out: list[Any] = []
        while any(consumer.position(tp) < ends[tp] for tp in parts):
            assert time.monotonic() < deadline, f"could not read {topic} to its end"
            for recs in consumer.poll(timeout_ms=500).values():
                out.extend(recs)
        return out
    finally:
        consumer.close()


@pytest.fixture(scope="module")
def stream(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Topics filled once for the whole module, plus the expected counts."""
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    tag = uuid.uuid4().hex[:8]
    topics = {
        "predictions": f"predictions-{tag}",
        "labels": f"labels-{tag}",
        "dlq": f"dlq-{tag}",
        "decisions": f"decisions-{tag}",
        "windows": f"windows-{tag}",
        "alerts": f"alerts-{tag}",
        "routing": f"routing-{tag}",
        "state": f"state-{tag}",
    }
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics(
        [NewTopic(topics["predictions"], 2, 1), NewTopic(topics["labels"], 2, 1)]
        + [NewTopic(topics[k], 1, 1) for k in ("dlq", "decisions", "windows", "alerts", "routing")]
    )
    admin.close()

    base = tmp_path_factory.mktemp("ingest")
    (base / "policies").mkdir()
    (base / "policies" / "all.yaml").write_text(POLICY)
    eventgen.save_profile(base / "policies" / "profile.json")

    rng = random.Random(7)
    producer = KafkaProducer(
        bootstrap_servers=kafka_bootstrap, linger_ms=20, acks="all", batch_size=256 * 1024
    )
    expected = {m: Counter() for m in MODELS}
    bad = eventgen.malformed(1_600, max_bytes=MAX_BYTES)
    streams = [
        iter(
            eventgen.events(
                N_PER_MODEL, seed=11 + i, model=m, incident_from=30_000 if m == "churn" else None
            )
        )
        for i, m in enumerate(MODELS)
    ]
    sent_bad = 0
    for role, model, value, malformed in eventgen.interleave(streams, MODELS, bad, 0.0103, rng):
        producer.send(topics[role], key=model.encode(), value=value)
        if malformed:
            sent_bad += 1
        else:
            expected[model][role] += 1
    # Orphan labels: labels whose prediction never existed.
    for j in range(300):
        raw = orjson.dumps(
            {
                "schema": "driftwarden.label/v1",
                "prediction_id": f"ghost-{j}",
                "model": "fraud",
                "timestamp": eventgen.format_time(eventgen.T0 + j),
                "label": 1,
            }
        )
        producer.send(topics["labels"], key=b"fraud", value=raw)
        expected["fraud"]["orphans"] += 1
        expected["fraud"]["labels"] += 1
    producer.flush()
    producer.close()
    return {"topics": topics, "base": base, "expected": expected, "bad": sent_bad}


def _config(
    stream: dict[str, Any],
    bootstrap: str,
    name: str,
    every_events: int = 50_000,
    backend: str = "local",
) -> Path:
    base: Path = stream["base"]
    cfg = {
        "source": "kafka",
        "kafka": {
            "bootstrap_servers": bootstrap,
            "group_id": f"dw-{name}-{uuid.uuid4().hex[:6]}",
            # The labeled-examples topic (state.backend kafka) is the stream's own, shared
            # by its replicas (its partition count follows the stream's input topics).
            "topics": {"labeled": f"labeled-{stream['topics']['predictions']}", **stream["topics"]},
            "max_poll_records": 1000,
            "poll_timeout_ms": 200,
            "session_timeout_ms": 10000,
            # Under MAX_BYTES: the oversized malformed events are larger than a fetch, and
            # must still come (alone) and reach the dead-letter topic.
            "max_partition_fetch_bytes": FETCH_BYTES,
        },
        "policies": str(base / "policies"),
        "state": {"dir": str(base / f"state-{name}"), "backend": backend},
        "checkpoint": {"every_events": every_events, "every": "1h"},
        "join": {"ttl": "30d"},
        "limits": {"max_message_bytes": MAX_BYTES},
        "http": {"enabled": False},
        "log": {"level": "warning"},
    }
    path = base / f"driftwarden-{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _final_state(stream: dict[str, Any], name: str, bootstrap: str | None = None) -> dict[str, Any]:
    """The checkpoints a run left (local directory, or the state topic when ``bootstrap``)."""
    store: Any
    if bootstrap is None:
        store = LocalCheckpointStore(stream["base"] / f"state-{name}")
    else:
        from driftwarden.daemon.checkpoint_kafka import KafkaCheckpointStore

        store = KafkaCheckpointStore(bootstrap, stream["topics"]["state"], create_topic=False)
    models: dict[str, Any] = {}
    invalid = 0
    for p in (0, 1):
        doc = store.load(f"p{p}")
        if doc:
            models.update(doc["models"])
            invalid += doc["invalid"]
    store.close()
    return {"models": models, "invalid": invalid}


def _examples(stream: dict[str, Any], name: str) -> dict[str, dict[str, Any]]:
    """The labeled examples a run's store kept, per model by prediction id (the ids are
    unique: the store skips an id it holds)."""
    from driftwarden.retrain.labeled_store import LabeledStore

    store = LabeledStore(stream["base"] / f"state-{name}" / "labeled", read_only=True)
    out: dict[str, dict[str, Any]] = {}
    for model in MODELS:
        rows = store.rows(model)
        out[model] = {r["prediction_id"]: r for r in rows}
        assert len(out[model]) == len(rows), f"{model}: an id stored twice"
    return out


def _windows(stream: dict[str, Any], bootstrap: str) -> dict[tuple[str, str, int], dict[str, Any]]:
    """Window summaries by (model, stream, index); a replayed window must repeat exactly."""
    out: dict[tuple[str, str, int], dict[str, Any]] = {}
    for rec in _consume_all(bootstrap, stream["topics"]["windows"]):
        w = orjson.loads(rec.value)
        key = (w["model"], w["stream"], w["index"])
        if key in out:  # published again after a crash: the same window (but "join", a
            # processing-time snapshot, may differ)
            same = {k: v for k, v in out[key].items() if k != "join"}
            assert same == {k: v for k, v in w.items() if k != "join"}, (
                f"window {key} was published twice with different content"
            )
        out[key] = w
    return out


@pytest.fixture(scope="module")
def uninterrupted(stream: dict[str, Any], kafka_bootstrap: str) -> dict[str, Any]:
    """One daemon, in-process, consuming everything without interruption."""
    settings = load_settings(_config(stream, kafka_bootstrap, "clean"), env={})
    daemon = build_daemon(settings)
    # the setting reaches the consumer: its fetches are smaller than the oversized events
    assert daemon.source._consumer.config["max_partition_fetch_bytes"] == FETCH_BYTES
    summary = daemon.run(idle_timeout_s=8, timeout_s=300)
    daemon.sink.close()
    daemon.source.close()
    windows = {k: v for k, v in _windows(stream, kafka_bootstrap).items()}
    return {
        "summary": summary,
        "state": _final_state(stream, "clean"),
        "windows": windows,
        "examples": _examples(stream, "clean"),
    }


def test_every_event_counted_once_and_malformed_in_dlq(
    stream: dict[str, Any], uninterrupted: dict[str, Any], kafka_bootstrap: str
) -> None:
    """Exact counts: windows + open window = predictions; DLQ = malformed; join counters exact."""
    exp = stream["expected"]
    summary = uninterrupted["summary"]
    total_valid = sum(c["predictions"] + c["labels"] for c in exp.values())
    assert summary.valid == total_valid
    assert summary.invalid == stream["bad"] == uninterrupted["state"]["invalid"]
    assert stream["bad"] > 1000  # ~1 % of 160 k

    state = uninterrupted["state"]["models"]
    for model in MODELS:
        st = state[model]
        closed = sum(
            w["count"]
            for (m, s, _), w in uninterrupted["windows"].items()
            if m == model and s == "predictions"
        )
        waiting = sum(len(v) for _, v in st["pred_windows"]["future"])
        assert closed + st["pred_windows"]["count"] + waiting == exp[model]["predictions"]
        assert st["events"] == exp[model]["predictions"]
        c = st["join"]["counters"]
        assert c["predictions"] == exp[model]["predictions"]
        assert c["labels"] == exp[model]["labels"]
        assert c["matched"] == exp[model]["labels"] - exp[model]["orphans"]
        # every match is one labeled example in the store (fewer than its 50 000-row bound)
        examples = uninterrupted["examples"][model]
        assert len(examples) == c["matched"]
        assert all(r["label"] is not None and r["features"] for r in examples.values())
        pending_labels = len(st["join"]["labels"])
        assert c["orphan_labels"] + pending_labels == exp[model]["orphans"]
        assert (
            c["matched"] + c["expired_unlabeled"] + len(st["join"]["predictions"])
            == c["predictions"]
        )
        labeled = sum(
            w["count"]
            for (m, s, _), w in uninterrupted["windows"].items()
            if m == model and s == "labeled"
        )
        assert (
            labeled
            + st["lab_windows"]["count"]
            + st["lab_windows"]["late"]
            + sum(len(v) for _, v in st["lab_windows"]["future"])
            == c["matched"]
        )

    dlq = _consume_all(kafka_bootstrap, stream["topics"]["dlq"])
    assert len(dlq) == stream["bad"]
    reasons = Counter()
    larger_than_a_fetch = 0
    for rec in dlq:
        doc = orjson.loads(rec.value)
        larger_than_a_fetch += doc["value_bytes"] > FETCH_BYTES
        headers = dict(rec.headers)
        assert doc["source"]["topic"] in (
            stream["topics"]["predictions"],
            stream["topics"]["labels"],
        )
        assert headers["__connect.errors.offset"] == str(doc["source"]["offset"]).encode()
        assert doc["reason"]
        if doc["value_b64"]:
            assert len(base64.b64decode(doc["value_b64"])) == doc["value_bytes"]
        reasons[doc["reason"].split(":")[0].split(" ")[0]] += 1
    assert len(reasons) >= 6, reasons  # many different kinds of breakage, each with its reason
    assert larger_than_a_fetch > 10  # they came, each alone, though no fetch asked for that much


def test_incident_fires_and_decision_is_published(
    stream: dict[str, Any], uninterrupted: dict[str, Any], kafka_bootstrap: str
) -> None:
    """The seed's incident on churn fires broken-input; fraud (clean) fires nothing."""
    decisions = [
        orjson.loads(r.value) for r in _consume_all(kafka_bootstrap, stream["topics"]["decisions"])
    ]
    fired = {(d["model"], d["rule"]) for d in decisions if d["status"] == "firing"}
    assert ("churn", "broken-input") in fired
    assert not any(m == "fraud" for m, _ in fired)
    first = min(d["window_index"] for d in decisions if d["model"] == "churn")
    incident_ts = eventgen.T0 + 30_000 / 10.0  # 10 events/s of event time
    assert first == int(incident_ts // 200)  # caught in the first window of the incident


def _run_cli(config: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    return subprocess.Popen(
        [sys.executable, "-m", "driftwarden.daemon.cli", "run", "--config", str(config), *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _comparable(windows: dict[tuple[str, str, int], dict[str, Any]], state: dict[str, Any]) -> Any:
    # A summary's "join" is a snapshot of cumulative join counters when the window closed: it
    # depends on how far the other topic had been read (processing time), so it is left out.
    return (
        sorted((k, {f: v for f, v in w.items() if f != "join"}) for k, w in windows.items()),
        {
            m: (
                st["events"],
                st["labels"],
                st["join"]["counters"],
                st["pred_windows"],
                st["lab_windows"],
            )
            for m, st in sorted(state["models"].items())
        },
        state["invalid"],
    )


@pytest.mark.parametrize(
    ("sig", "backend"),
    [(signal.SIGTERM, "local"), (signal.SIGKILL, "local"), (signal.SIGKILL, "kafka")],
    ids=["sigterm", "kill-9", "kill-9-state-in-kafka"],
)
def test_interrupted_runs_equal_the_uninterrupted_run(
    sig: signal.Signals,
    backend: str,
    stream: dict[str, Any],
    uninterrupted: dict[str, Any],
    kafka_bootstrap: str,
    tmp_path: Path,
) -> None:
    """Stop (or kill -9) the daemon three times mid-stream; the final statistics are identical."""
    name = f"int-{sig.name.lower()}-{backend}"
    # A separate windows topic so this run's summaries are compared on their own.
    own = dict(stream)
    own["topics"] = dict(
        stream["topics"],
        windows=f"{stream['topics']['windows']}-{name}",
        decisions=f"{stream['topics']['decisions']}-{name}",
        dlq=f"{stream['topics']['dlq']}-{name}",
        state=f"{stream['topics']['state']}-{name}",
    )
    config = _config(own, kafka_bootstrap, name, every_events=7_000, backend=backend)
    rng = random.Random(sig.value)
    for _ in range(3):
        proc = _run_cli(config)
        time.sleep(rng.uniform(4.0, 7.0))
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        if sig == signal.SIGTERM:
            assert proc.returncode == 0, err.decode()[-2000:]
    proc = _run_cli(config, "--idle-timeout", "8", "--timeout", "300")
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err.decode()[-3000:]
    summary = orjson.loads(out.splitlines()[-1])
    assert (
        summary["records"] < uninterrupted["summary"].records
    )  # the restarts resumed, not restarted

    state = _final_state(own, name, kafka_bootstrap if backend == "kafka" else None)
    got = _comparable(_windows(own, kafka_bootstrap), state)
    want = _comparable(uninterrupted["windows"], uninterrupted["state"])
    assert got[2] == want[2]
    for model in want[1]:
        for part, (g, w) in enumerate(zip(got[1][model], want[1][model], strict=True)):
            if isinstance(w, dict):
                diff = {k: (g.get(k), w[k]) for k in w if g.get(k) != w[k]}
                assert not diff, f"{model} part {part}: {str(diff)[:1500]}"
            assert g == w
    assert [k for k, _ in got[0]] == [k for k, _ in want[0]]
    assert got[0] == want[0]
    # The labeled store: the same examples as the uninterrupted run's, each once, though
    # rows appended after the last checkpoint were replayed after each interruption.
    examples = _examples(own, name)
    for model in MODELS:
        assert examples[model].keys() == uninterrupted["examples"][model].keys(), model
        assert examples[model] == uninterrupted["examples"][model], model
