"""Throughput bench (not a test): the daemon's ingest path vs a bare Kafka consumer.

One run starts its own Kafka broker from the Maven jars (or uses ``--bootstrap``), produces
seeded events to fresh topics, then measures on the same data, alternating:

(a) a bare kafka-python consumer that polls and only decodes each value with ``orjson.loads``;
(b) the daemon's ingest path, ``build_daemon(...).run(...)`` in-process, with a policy running
    data_quality + feature_drift + prediction_drift + slice_performance on windows of 5000
    events (labeled windows of 5000 too), Kafka sinks and local checkpoints.

Both use the same consumer settings (``max_poll_records`` 2000, the daemon's default; the fetch
size and broker-side fetch wait the daemon asks for) and the collector settings of ``driftwarden run`` (thresholds
50000/20/100; the daemon's start-up objects frozen). The daemon runs with its default settings
(checkpoints every 50 000 records or 30 s, local state directory).

Each reads every record (predictions and labels) once, in its own consumer group. Rates are
records per second from the first non-empty poll to the last record handled (the daemon's
final checkpoint included); "wall" adds consumer start-up and the group join; "cpu" is the
CPU time the process spent over the same steady part (all threads). The best of
``--repeat`` rounds is reported and the ratio (b)/(a) is the number to watch (target ≥ 0.8).
``--profile`` adds one cProfile'd run of (b) and prints the top functions.
``--compare-join-compress`` adds (c) to every round: (b) with ``join.compress: false``, to
price the join buffer's compression (the order of (b) and (c) alternates between rounds).

Default data: 200 000 predictions for 4 models (25 features: 20 numeric, 5 categorical; 3
segments), labels for half of them, published a little after their prediction.

    .venv/bin/python bench/throughput.py                       # ≈ 1 min on 2 cores
    .venv/bin/python bench/throughput.py --events 40000 --profile
    .venv/bin/python bench/throughput.py --bootstrap 127.0.0.1:9092

All traffic stays on 127.0.0.1 (an external ``--bootstrap`` excepted); every loop is bounded by
``--timeout``.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import importlib.util
import io
import logging
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import orjson
import pandas as pd
import yaml

from driftwarden.daemon.app import build_daemon, load_policy_set, options_from
from driftwarden.daemon.checkpoint import LocalCheckpointStore
from driftwarden.daemon.events import (
    LABEL_SCHEMA,
    PREDICTION_SCHEMA,
    PredictionEvent,
    decode,
    format_time,
)
from driftwarden.daemon.logs import configure as configure_logs
from driftwarden.daemon.profiles import ProfileLoader
from driftwarden.daemon.runner import Daemon
from driftwarden.daemon.settings import DEFAULTS, load_settings
from driftwarden.daemon.sinks import MemorySink
from driftwarden.daemon.sources import RawRecord, Source
from driftwarden.detectors.batch import Batch
from driftwarden.detectors.profile import build_profile

ROOT = Path(__file__).resolve().parents[1]
BROKER_SCRIPT = ROOT / "scripts" / "kafka_broker.py"

N_NUMERIC = 20
N_CATEGORICAL = 5
CATEGORIES = np.array(["alpha", "bravo", "charlie", "delta", "echo"], dtype=object)
CATEGORY_MIX = np.array([0.4, 0.25, 0.15, 0.12, 0.08])
SEGMENTS = {
    "customer_tier": (["smb", "midmarket", "enterprise"], [0.7, 0.2, 0.1]),
    "region": (["eu", "us", "apac"], [0.4, 0.4, 0.2]),
    "channel": (["web", "mobile", "partner"], [0.5, 0.4, 0.1]),
}
NULL_RATE = 0.01  # on num_0 and cat_0 only, as real pipelines have a few gappy columns
T0 = 1_795_000_000.0  # fixed event-time origin (2026-11-18)
RATE_PER_S = 10.0  # event time: 10 predictions per second per model
MAX_MESSAGE_BYTES = 1_048_576  # the daemon's default limits.max_message_bytes
GC_THRESHOLD = (50_000, 20, 100)  # what `driftwarden run` sets (daemon/cli.py)

POLICY = """\
apiVersion: driftwarden/v1
kind: Policy
model: "bench-*"
reference: file:profile.json
window: {events: 5000, labeled: {events: 5000}}
detectors:
  - {name: quality, type: data_quality}
  - {name: drift, type: feature_drift, method: js, threshold: 0.1, features: all}
  - {name: scores, type: prediction_drift, method: js, threshold: 0.1}
  - {name: enterprise_recall, type: slice_performance, metric: recall,
     slice: {customer_tier: enterprise}, max_drop: 0.05, min_samples: 100}
rules:
  - name: broken-input
    when: quality
    severity: critical
    actions: [{alert: log}]
  - name: drifted
    when: (drift or scores or enterprise_recall) and not quality
    severity: warning
    actions: [{alert: log}]
receivers:
  log: {type: log}
"""


# --------------------------------------------------------------------------- data


def _rows(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Seeded columns of one model: features, segments, score, predicted class, true label."""
    cols: dict[str, np.ndarray] = {}
    for i in range(N_NUMERIC):
        cols[f"num_{i}"] = np.round(rng.normal(0.0, 1.0 + i / 10.0, n), 4)
    for i in range(N_CATEGORICAL):
        cols[f"cat_{i}"] = rng.choice(CATEGORIES, n, p=CATEGORY_MIX)
    for name, (values, mix) in SEGMENTS.items():
        cols[name] = rng.choice(np.array(values, dtype=object), n, p=mix)
    logit = 0.8 * cols["num_1"] - 0.5 * cols["num_2"] + np.where(cols["cat_1"] == "alpha", 0.7, 0)
    score = 1.0 / (1.0 + np.exp(-logit))
    cols["score"] = np.round(score, 5)
    cols["predicted"] = (score >= 0.5).astype(np.int64)
    cols["label"] = (rng.random(n) < score).astype(np.int64)
    return cols


def reference_table(n: int = 20_000, seed: int = 1) -> pd.DataFrame:
    """The validation split every bench model's profile is built from."""
    cols = _rows(np.random.default_rng(seed), n)
    null = np.random.default_rng(seed + 1).random((2, n)) < NULL_RATE
    num0 = cols["num_0"].astype(float)
    num0[null[0]] = np.nan
    cat0 = cols["cat_0"].copy()
    cat0[null[1]] = None
    cols["num_0"], cols["cat_0"] = num0, cat0
    return pd.DataFrame(cols)


@dataclass(frozen=True)
class Workload:
    """What was produced: topic names, counts, and the policy/profile folder."""

    topics: dict[str, str]
    predictions: int
    labels: int
    models: tuple[str, ...]
    mean_bytes: float

    @property
    def records(self) -> int:
        """Every record the consumers must read."""
        return self.predictions + self.labels


class _ModelStream:
    """Encodes one model's events on demand (nothing big is held in memory)."""

    def __init__(self, model: str, n: int, seed: int, label_share: float) -> None:
        rng = np.random.default_rng(seed)
        self.model = model
        self.cols = _rows(rng, n)
        self.null = rng.random((2, n)) < NULL_RATE
        self.labeled = rng.random(n) < label_share
        # Labels come 1 s to a few minutes of event time after their prediction.
        self.delay_s = rng.exponential(120.0, n) + 1.0
        self.num_names = [f"num_{i}" for i in range(N_NUMERIC)]
        self.cat_names = [f"cat_{i}" for i in range(N_CATEGORICAL)]
        self.num = np.stack([self.cols[c] for c in self.num_names], axis=1).tolist()
        self.cat = np.stack([self.cols[c] for c in self.cat_names], axis=1).tolist()

    def prediction(self, i: int) -> bytes:
        features: dict[str, Any] = dict(zip(self.num_names, self.num[i], strict=True))
        features.update(zip(self.cat_names, self.cat[i], strict=True))
        if self.null[0, i]:
            features["num_0"] = None
        if self.null[1, i]:
            features["cat_0"] = None
        c = self.cols
        return orjson.dumps(
            {
                "schema": PREDICTION_SCHEMA,
                "prediction_id": f"{self.model}-{i}",
                "model": self.model,
                "model_version": "1",
                "timestamp": format_time(T0 + i / RATE_PER_S),
                "features": features,
                "prediction": {"label": int(c["predicted"][i]), "score": float(c["score"][i])},
                "segment": {k: str(c[k][i]) for k in SEGMENTS},
            }
        )

    def label(self, i: int) -> bytes:
        return orjson.dumps(
            {
                "schema": LABEL_SCHEMA,
                "prediction_id": f"{self.model}-{i}",
                "model": self.model,
                "timestamp": format_time(T0 + i / RATE_PER_S + float(self.delay_s[i])),
                "label": int(self.cols["label"][i]),
            }
        )


def save_reference_profile(path: Path) -> None:
    """The benches' reference profile (of :func:`reference_table`, model ``bench``) at ``path``."""
    build_profile(
        reference_table(),
        "bench",
        target="label",
        prediction="predicted",
        score="score",
        segments=list(SEGMENTS),
        created_at="-",
    ).save(path)


def _publication_order(streams: list[_ModelStream], n: int) -> np.ndarray:
    """Rows (model, index, is_label) sorted by publication time (models interleaved)."""
    m = len(streams)
    pred_t = np.arange(n, dtype=np.float64) / RATE_PER_S
    parts = []
    for k, s in enumerate(streams):
        idx = np.arange(n)
        # A tiny per-model offset interleaves the models deterministically.
        parts.append(np.stack([pred_t + k * 1e-6, np.full(n, k), idx, np.zeros(n)], axis=1))
        li = idx[s.labeled]
        parts.append(
            np.stack(
                [pred_t[li] + s.delay_s[li], np.full(len(li), k), li, np.ones(len(li))], axis=1
            )
        )
    rows = np.concatenate(parts)
    rows = rows[np.argsort(rows[:, 0], kind="stable")]
    assert rows.shape[0] == m * n + sum(int(s.labeled.sum()) for s in streams)
    return rows[:, 1:].astype(np.int64)


def produce(
    bootstrap: str, n_per_model: int, models: int, label_share: float, partitions: int
) -> Workload:
    """Create fresh topics and publish every event; returns what was sent."""
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    tag = uuid.uuid4().hex[:8]
    topics = {
        "predictions": f"bench-predictions-{tag}",
        "labels": f"bench-labels-{tag}",
        "dlq": f"bench-dlq-{tag}",
        "decisions": f"bench-decisions-{tag}",
        "windows": f"bench-windows-{tag}",
        "alerts": f"bench-alerts-{tag}",
        "routing": f"bench-routing-{tag}",
        "state": f"bench-state-{tag}",
    }
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="bench-admin")
    admin.create_topics(
        [NewTopic(topics[k], partitions, 1) for k in ("predictions", "labels")]
        + [NewTopic(topics[k], 1, 1) for k in ("dlq", "decisions", "windows", "alerts")]
    )
    admin.close()

    names = tuple(f"bench-{k}" for k in range(models))
    streams = [_ModelStream(m, n_per_model, 100 + k, label_share) for k, m in enumerate(names)]
    order = _publication_order(streams, n_per_model)
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        client_id="bench-producer",
        linger_ms=20,
        batch_size=512 * 1024,
        max_request_size=4 * 1024 * 1024,
    )
    keys = [m.encode() for m in names]
    sent_bytes = 0
    preds = labels = 0
    for k, i, is_label in order.tolist():
        s = streams[k]
        if is_label:
            value = s.label(i)
            producer.send(topics["labels"], key=keys[k], value=value)
            labels += 1
        else:
            value = s.prediction(i)
            producer.send(topics["predictions"], key=keys[k], value=value)
            preds += 1
        sent_bytes += len(value)
    producer.flush(timeout=300)
    producer.close()
    return Workload(topics, preds, labels, names, sent_bytes / max(1, preds + labels))


# --------------------------------------------------------------------------- the two paths


class GcMeter:
    """Seconds spent in the cyclic garbage collector while active (cProfile cannot see it)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = 0
        self._t0 = 0.0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._t0
            self.collections += 1

    def __enter__(self) -> GcMeter:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def note(self, total_s: float) -> str:
        share = 100 * self.seconds / total_s if total_s > 0 else 0.0
        return f"gc {self.seconds:.2f} s ({share:.0f} %, {self.collections} collections)"


@dataclass(frozen=True)
class Measurement:
    """One consumer run: records read, seconds from first data to the end, wall seconds, and
    the CPU seconds this process spent over the steady part (every thread: the Kafka client's
    I/O thread too; the broker is another process and is not counted)."""

    path: str
    records: int
    seconds: float
    wall: float
    note: str = ""
    cpu: float = 0.0

    @property
    def rate(self) -> float:
        """Records per second over the steady part (first data → done)."""
        return self.records / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_rate(self) -> float:
        """Records per CPU second over the steady part. Beside :attr:`rate` it says whether a
        path waited (CPU seconds well under the steady seconds) or was busy on a core the
        whole time (about equal: one Python thread doing the work)."""
        return self.records / self.cpu if self.cpu > 0 else 0.0


def bare_consumer(
    bootstrap: str, work: Workload, max_poll_records: int, timeout_s: float
) -> Measurement:
    """(a) Poll and ``orjson.loads`` every value until all records are read."""
    from kafka import KafkaConsumer

    began = time.perf_counter()
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=f"bench-bare-{uuid.uuid4().hex[:8]}",
        client_id="bench-bare",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        # The same fetch size the daemon asks for (twice the largest valid message) and the
        # same broker-side fetch wait (the daemon's default, not Kafka's 500 ms: with it both
        # paths waited half a second per fetch near the end, when some partitions were done).
        max_partition_fetch_bytes=max(1_048_576, 2 * MAX_MESSAGE_BYTES),
        fetch_max_wait_ms=DEFAULTS["kafka"]["fetch_max_wait_ms"],
    )
    consumer.subscribe([work.topics["predictions"], work.topics["labels"]])
    deadline = time.monotonic() + timeout_s
    seen = 0
    first: float | None = None
    first_cpu = 0.0
    try:
        with GcMeter() as meter:
            while seen < work.records and time.monotonic() < deadline:
                batches = consumer.poll(timeout_ms=500, max_records=max_poll_records)
                if batches and first is None:
                    first, first_cpu = time.perf_counter(), time.process_time()
                for recs in batches.values():
                    for r in recs:
                        orjson.loads(r.value)
                    seen += len(recs)
        end, end_cpu = time.perf_counter(), time.process_time()
    finally:
        consumer.close(autocommit=False)
    note = meter.note(end - began)
    if seen != work.records:
        note = f"INCOMPLETE: read {seen} of {work.records}; {note}"
    cpu = end_cpu - first_cpu if first is not None else 0.0
    return Measurement("bare", seen, end - (first or end), end - began, note, cpu)


def _daemon_config(
    base: Path, bootstrap: str, work: Workload, name: str, join_compress: bool = True
) -> Path:
    cfg = {
        "source": "kafka",
        "kafka": {
            "bootstrap_servers": bootstrap,
            "group_id": f"bench-{name}-{uuid.uuid4().hex[:8]}",
            "client_id": f"bench-{name}",
            "topics": work.topics,
        },
        "policies": str(base / "policies"),
        "state": {"dir": str(base / f"state-{name}")},
        "join": {"compress": join_compress},
        "http": {"enabled": False},
        "log": {"level": "warning"},
    }
    path = base / f"driftwarden-{name}.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def daemon_ingest(
    base: Path,
    bootstrap: str,
    work: Workload,
    name: str,
    timeout_s: float,
    profiler: cProfile.Profile | None = None,
    join_compress: bool = True,
) -> Measurement:
    """(b) ``build_daemon(...).run(...)`` until it has consumed every record."""
    began = time.perf_counter()
    config = _daemon_config(base, bootstrap, work, name, join_compress)
    settings = load_settings(config, env={})
    daemon = build_daemon(settings)
    first: list[float] = []
    first_cpu: list[float] = []
    poll = daemon.source.poll

    def timed_poll(max_records: int, timeout: float) -> list[Any]:
        records = poll(max_records, timeout)
        if records and not first:
            first.append(time.perf_counter())
            first_cpu.append(time.process_time())
        return records

    # Instrumented from outside: the daemon's code is measured as it is.
    daemon.source.poll = timed_poll
    # As `driftwarden run` does after building the daemon (daemon/cli.py): the long-lived
    # start-up objects leave the collector's view; GC_THRESHOLD is set for both paths in main().
    gc.freeze()
    try:
        with GcMeter() as meter:
            if profiler is not None:
                profiler.enable()
            summary = daemon.run(max_events=work.records, timeout_s=timeout_s)
            if profiler is not None:
                profiler.disable()
        end, end_cpu = time.perf_counter(), time.process_time()
    finally:
        gc.unfreeze()
        daemon.sink.close()
        daemon.source.close()
    notes = []
    if summary.valid != work.records:
        notes.append(f"INCOMPLETE: {summary.valid} valid of {work.records} ({summary.stopped_by})")
    if summary.invalid:
        notes.append(f"{summary.invalid} invalid")
    notes.append(f"{summary.windows} windows, {summary.decisions} decisions")
    notes.append(meter.note(end - began))
    start = first[0] if first else end
    path = "daemon" if join_compress else "plain"
    cpu = end_cpu - first_cpu[0] if first_cpu else 0.0
    return Measurement(path, summary.valid, end - start, end - began, "; ".join(notes), cpu)


# --------------------------------------------------------------------------- Kafka-free stages


class _ListSource(Source):
    """Prepared records in poll-sized chunks: the daemon's loop with Kafka taken out."""

    def __init__(self, records: list[RawRecord], roles: dict[str, str | None]) -> None:
        self.roles = roles
        self._records = records
        self._next = 0

    def poll(self, max_records: int, timeout_s: float) -> list[RawRecord]:
        chunk = self._records[self._next : self._next + max_records]
        self._next += len(chunk)
        return chunk

    def seek(self, offsets: dict[tuple[str, int], int]) -> None:
        return None  # a fresh state: start at the beginning

    @property
    def exhausted(self) -> bool:
        return self._next >= len(self._records)


def stages(base: Path, n_per_model: int, models: int, label_share: float, partitions: int) -> None:
    """Print µs per record of each ingest stage, in memory (no Kafka, no profiler)."""
    names = tuple(f"bench-{k}" for k in range(models))
    streams = [_ModelStream(m, n_per_model, 100 + k, label_share) for k, m in enumerate(names)]
    roles: dict[str, str | None] = {"predictions": "predictions", "labels": "labels"}
    raw: list[RawRecord] = []
    for k, i, is_label in _publication_order(streams, n_per_model).tolist():
        s = streams[k]
        topic = "labels" if is_label else "predictions"
        value = s.label(i) if is_label else s.prediction(i)
        # Partitions as Kafka's keying would spread them: one model stays in one partition.
        raw.append(RawRecord(topic, k % partitions, i, names[k].encode(), value, None))
    n = len(raw)
    rows: list[tuple[str, float]] = []

    t0 = time.perf_counter()
    for r in raw:
        orjson.loads(r.value)
    rows.append(("orjson.loads", time.perf_counter() - t0))

    t0 = time.perf_counter()
    decoded = [
        decode(r.value, expect=PREDICTION_SCHEMA if r.topic == "predictions" else None) for r in raw
    ]
    rows.append(("events.decode (loads + validation)", time.perf_counter() - t0))

    by_model: dict[str, list[dict[str, Any]]] = {}
    for ev in decoded:
        if isinstance(ev, PredictionEvent):
            by_model.setdefault(ev.model, []).append(ev.record())
    preds = sum(len(v) for v in by_model.values())
    t0 = time.perf_counter()
    for recs in by_model.values():
        for j in range(0, len(recs), 500):
            Batch.from_records(recs[j : j + 500])
    took = time.perf_counter() - t0
    rows.append(("Batch.from_records (prediction batches of 500)", took))

    settings = load_settings(_daemon_config(base, "127.0.0.1:9", _stage_work(), "stages"), env={})
    policies = load_policy_set(settings["policies"])
    daemon = Daemon(
        source_factory=lambda d: _ListSource(raw, roles),
        sink=MemorySink(),
        store=LocalCheckpointStore(settings["state"]["dir"]),
        policies=policies,
        profile_loader=ProfileLoader(policies),
        options=options_from(settings),
    )
    daemon.assign(sorted({r.partition for r in raw}))
    gc.freeze()  # as `driftwarden run` does once the daemon is built
    t0 = time.perf_counter()
    try:
        with GcMeter() as meter:
            summary = daemon.run(max_events=n, timeout_s=600.0)
    finally:
        gc.unfreeze()
    took = time.perf_counter() - t0
    rows.append(("Daemon.run in memory (all but Kafka)", took))
    rows.append(("  of which cyclic gc pauses", meter.seconds))
    if summary.valid != n:
        print(f"  stages: the in-memory daemon handled {summary.valid} of {n} records")

    print(f"\nstages in memory, {n} records ({preds} predictions), no profiler:")
    print(f"{'stage':<48} {'us/record':>10} {'rec/s':>10}")
    for label, seconds in rows:
        rate = "" if label.startswith(" ") or seconds <= 0 else f"{n / seconds:,.0f}"
        print(f"{label:<48} {1e6 * seconds / n:>10.1f} {rate:>10}")


def _stage_work() -> Workload:
    topics = {k: k for k in ("predictions", "labels")}
    topics.update({k: f"bench-{k}" for k in ("dlq", "decisions", "windows", "alerts")})
    topics.update({k: f"bench-{k}" for k in ("routing", "state")})
    return Workload(topics, 0, 0, (), 0.0)


# --------------------------------------------------------------------------- broker


def _load_broker_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_kafka_broker", BROKER_SCRIPT)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import the Kafka broker script at {BROKER_SCRIPT}.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def kafka(bootstrap: str | None, workdir: Path) -> Iterator[str]:
    """The given cluster, or a broker of our own (full JIT: this is a throughput bench)."""
    if bootstrap:
        yield bootstrap
        return
    broker = _load_broker_module().Broker(workdir / "kafka", quick_jit=False, heap="1g")
    print("starting a Kafka broker from scripts/kafka/lib ...", flush=True)
    try:
        yield broker.start(timeout=180.0)
    finally:
        broker.stop()


# --------------------------------------------------------------------------- report


def _profile_report(profiler: cProfile.Profile, top: int) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.strip_dirs()
    for key in ("cumulative", "tottime"):
        out.write(f"\n--- top {top} by {key} ---\n")
        stats.sort_stats(key).print_stats(top)
    return out.getvalue()


def _own_code_report(profiler: cProfile.Profile, top: int) -> str:
    """driftwarden's own functions with their share of the profiled run (tottime, cumtime)."""
    stats = pstats.Stats(profiler)
    entries = stats.stats  # type: ignore[attr-defined]
    total = max(float(stats.total_tt), 1e-9)  # type: ignore[attr-defined]
    dirs = tuple(str(ROOT / d) + os.sep for d in ("daemon", "detectors", "policies", "retrain"))
    rows = []
    for (path, line, func), (_cc, ncalls, tt, ct, _callers) in entries.items():
        if path.startswith(dirs):
            rows.append((ct, tt, ncalls, f"{Path(path).relative_to(ROOT)}:{line}({func})"))
    lines = [f"\n--- driftwarden functions by cumulative share of {total:.2f} s profiled ---"]
    lines.append(f"{'cum s':>8} {'cum %':>6} {'own s':>8} {'own %':>6} {'calls':>9}  function")
    for ct, tt, nc, where in sorted(rows, reverse=True)[:top]:
        lines.append(
            f"{ct:8.2f} {100 * ct / total:6.1f} {tt:8.2f} {100 * tt / total:6.1f} {nc:9d}  {where}"
        )
    return "\n".join(lines)


def _git_rev() -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            [
                "git",
                "-C",
                str(ROOT),
                "status",
                "--porcelain",
                "--",
                "daemon",
                "detectors",
                "policies",
            ],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return rev + (" (daemon/detectors/policies have uncommitted changes)" if dirty else "")


def _crc_mode(disabled: bool) -> str:
    if disabled:
        return "off (--no-crc-check)"
    from kafka.record import util

    fast = getattr(util, "crc32c_c", None) is not None
    return "on, C crc32c" if fast else "on, pure-Python crc32c (install `crc32c` to speed it up)"


def main(argv: list[str] | None = None) -> int:
    """Run the bench; prints the table (and the profile with ``--profile``)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000, help="predictions in total (all models)")
    ap.add_argument("--models", type=int, default=4)
    ap.add_argument("--label-share", type=float, default=0.5, help="share of predictions labeled")
    ap.add_argument("--partitions", type=int, default=4, help="partitions of each input topic")
    ap.add_argument("--repeat", type=int, default=2, help="alternating rounds; the best counts")
    ap.add_argument("--max-poll-records", type=int, default=2000, help="for the bare consumer")
    ap.add_argument("--bootstrap", help="use this Kafka cluster instead of starting a broker")
    ap.add_argument("--profile", action="store_true", help="one more (b) run under cProfile")
    ap.add_argument("--profile-out", type=Path, help="also save the pstats file here")
    ap.add_argument(
        "--stages",
        type=int,
        default=0,
        metavar="N",
        help="also time each ingest stage in memory on N predictions (no Kafka, no profiler)",
    )
    ap.add_argument(
        "--stages-only", action="store_true", help="only the in-memory stages (no broker)"
    )
    ap.add_argument(
        "--compare-join-compress",
        action="store_true",
        help="each round also runs (c): the daemon with join.compress false, after (b)",
    )
    ap.add_argument("--top", type=int, default=25, help="functions shown per profile listing")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per consumer run")
    ap.add_argument("--workdir", type=Path, help="keep the broker and state here (default: temp)")
    ap.add_argument(
        "--no-crc-check",
        action="store_true",
        help="both paths skip kafka-python's record CRC check (its pure-Python crc32c is slow "
        "without the `crc32c` package); a what-if, not the shipped configuration",
    )
    args = ap.parse_args(argv)
    if args.events < args.models or args.models < 1 or args.repeat < 1:
        ap.error("--events must be at least --models, and --models and --repeat at least 1.")

    configure_logs("warning")
    # The collector settings of `driftwarden run` (daemon/cli.py), for both paths alike.
    gc.set_threshold(*GC_THRESHOLD)
    # kafka-python warns "No partition metadata" while a fresh group's metadata loads: noise.
    logging.getLogger("kafka").setLevel(logging.ERROR)
    if args.no_crc_check:
        from kafka import KafkaConsumer

        # Changes the class default in this process only, so the daemon's consumer gets it too.
        KafkaConsumer.DEFAULT_CONFIG["check_crcs"] = False
    base = args.workdir or Path(tempfile.mkdtemp(prefix="dw-throughput-"))
    base.mkdir(parents=True, exist_ok=True)
    try:
        (base / "policies").mkdir(exist_ok=True)
        (base / "policies" / "bench.yaml").write_text(POLICY, encoding="utf-8")
        save_reference_profile(base / "policies" / "profile.json")

        if args.stages_only:
            stages(
                base,
                max(1, (args.stages or args.events) // args.models),
                args.models,
                args.label_share,
                args.partitions,
            )
            return 0
        with kafka(args.bootstrap, base) as bootstrap:
            n_per_model = args.events // args.models
            t0 = time.perf_counter()
            work = produce(bootstrap, n_per_model, args.models, args.label_share, args.partitions)
            print(
                f"produced {work.predictions} predictions + {work.labels} labels "
                f"({work.mean_bytes:.0f} B/record mean) for {len(work.models)} models in "
                f"{time.perf_counter() - t0:.1f} s",
                flush=True,
            )
            runs: list[Measurement] = []
            rounds: list[dict[str, Measurement]] = []
            for r in range(args.repeat):
                rounds.append({})
                # (c) runs before (b) every other round: neither gains from going second.
                paths = ("bare", "daemon")
                if args.compare_join_compress:
                    paths = ("bare", "plain", "daemon") if r % 2 else ("bare", "daemon", "plain")
                for path in paths:
                    m = (
                        bare_consumer(bootstrap, work, args.max_poll_records, args.timeout)
                        if path == "bare"
                        else daemon_ingest(
                            base,
                            bootstrap,
                            work,
                            f"r{r}{path}",
                            args.timeout,
                            join_compress=path == "daemon",
                        )
                    )
                    runs.append(m)
                    rounds[-1][path] = m
                    print(
                        f"  round {r + 1} {path:<6} {m.rate:>10,.0f} rec/s  "
                        f"({m.seconds:.2f} s steady, {m.wall:.2f} s wall, "
                        f"{m.cpu_rate:,.0f} rec/cpu-s) {m.note}",
                        flush=True,
                    )
            profiler = None
            if args.profile:
                profiler = cProfile.Profile()
                pm = daemon_ingest(base, bootstrap, work, "profiled", args.timeout, profiler)
                print(f"  profiled daemon run: {pm.rate:,.0f} rec/s under cProfile {pm.note}")

        best = {
            p: max((m for m in runs if m.path == p), key=lambda m: m.rate)
            for p in ("bare", "daemon")
        }
        a, b = best["bare"], best["daemon"]
        print()
        print(f"code: {_git_rev()}; load average {os.getloadavg()[0]:.2f}; {os.cpu_count()} cores")
        print(f"kafka-python CRC check: {_crc_mode(args.no_crc_check)}")
        print(
            f"{'path':<34} {'records':>9} {'steady s':>9} {'rec/s':>10} {'wall s':>8} "
            f"{'cpu s':>7} {'rec/cpu-s':>10}"
        )
        for label, m in (("(a) bare consumer + orjson.loads", a), ("(b) daemon ingest path", b)):
            print(
                f"{label:<34} {m.records:>9} {m.seconds:>9.2f} {m.rate:>10,.0f} {m.wall:>8.2f} "
                f"{m.cpu:>7.2f} {m.cpu_rate:>10,.0f}"
            )
        ratio = b.rate / a.rate if a.rate else 0.0
        wall_ratio = a.wall / b.wall if b.wall else 0.0
        print(f"ratio (b)/(a): {ratio:.3f} steady, {wall_ratio:.3f} wall  (target >= 0.8)")
        # The bare rate swings a lot between rounds on a shared machine; each round's own pair
        # (run back to back) and the medians are steadier than the ratio of the two bests.
        pairs = [rd["daemon"].rate / rd["bare"].rate for rd in rounds if rd["bare"].rate]
        med = {
            p: float(np.median([m.rate for m in runs if m.path == p])) for p in ("bare", "daemon")
        }
        print(
            "per-round ratios: "
            + ", ".join(f"{x:.3f}" for x in pairs)
            + f"; median rates {med['bare']:,.0f} / {med['daemon']:,.0f} rec/s"
            + f" = {med['daemon'] / med['bare'] if med['bare'] else 0.0:.3f}"
        )
        # CPU per record: what each path costs this process (the broker is not counted).
        cpu_pairs = [
            rd["daemon"].cpu_rate / rd["bare"].cpu_rate for rd in rounds if rd["bare"].cpu_rate
        ]
        cpu_med = {
            p: float(np.median([m.cpu_rate for m in runs if m.path == p]))
            for p in ("bare", "daemon")
        }
        print(
            "per-round CPU ratios (rec/cpu-s): "
            + ", ".join(f"{x:.3f}" for x in cpu_pairs)
            + f"; median {cpu_med['bare']:,.0f} / {cpu_med['daemon']:,.0f} rec/cpu-s"
            + f" = {cpu_med['daemon'] / cpu_med['bare'] if cpu_med['bare'] else 0.0:.3f}"
        )
        if args.compare_join_compress:
            plain = [m.rate for m in runs if m.path == "plain"]
            print(
                f"(c) daemon with join.compress false: best {max(plain):,.0f} rec/s, median "
                f"{float(np.median(plain)):,.0f}; (b)/(c) per round "
                + ", ".join(
                    f"{rd['daemon'].rate / rd['plain'].rate:.3f}"
                    for rd in rounds
                    if rd["plain"].rate
                )
            )
        incomplete = [m for m in runs if m.note.startswith("INCOMPLETE")]
        if profiler is not None:
            print(_profile_report(profiler, args.top))
            print(_own_code_report(profiler, args.top))
            if args.profile_out:
                profiler.dump_stats(args.profile_out)
                print(f"\npstats saved to {args.profile_out}")
        if args.stages:
            stages(
                base,
                max(1, args.stages // args.models),
                args.models,
                args.label_share,
                args.partitions,
            )
        return 1 if incomplete else 0
    finally:
        if args.workdir is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
