"""Benchmark: the daemon's memory — RSS over a long in-process run, and 100 models x 25 features.

Not a test: it prints tables. Two parts, each in a fresh interpreter (RSS never shrinks much
once CPython and glibc have grown the heap, so a part that ran before would colour the next):

- **growth** — the daemon's in-memory path (``Daemon`` with a generating source, the real
  decode → join → windows → detectors → policies code, a discarding sink, local checkpoints)
  over ``--events`` records (default 2 M; ``--events 10000000`` for the long run). RSS is read
  from ``/proc/self/statm`` every ``--sample-every`` (100 k) records, together with what waits
  in the join buffers. Bounded state shows as a flat last half: the join buffer is bounded by
  its TTL (``--join-ttl``, event time) and ``join.max_entries``, windows and detector state by
  their configuration.
- **models** — ``--models`` (100) models x 25 features, one monitor each under one policy with
  ``data_quality`` + ``feature_drift`` + ``prediction_drift`` + ``slice_performance``, fed
  ``--windows`` (3) windows of ``--window`` (1000) predictions per model (labels for half of
  them). Reported: RSS after that warm-up minus the baseline (interpreter, imports, policies and
  the daemon built, no event yet); target <= 300 MB.
- **store** — the models part again with every model's policy retraining: the daemon keeps
  each model's labeled examples in the labeled store (``retrain/labeled_store.py``, under the
  state directory, as ``driftwarden run`` does for a policy with a retrain action, fsync'ed at
  each checkpoint). Reported like the models part, and the store's own share: the difference
  to the models part of the same run, per stored row.
- **kafka** — the models part through a real broker: the same events, keyed by model, are
  published (by a child interpreter: the producer's buffers are not the daemon's) to input
  topics of ``--partitions`` partitions, and a daemon built as ``driftwarden run`` builds it
  (``build_daemon``: Kafka consumer, Kafka sink for windows and decisions, local checkpoints)
  reads them all. The baseline is taken once the daemon is built, before it polls: the Kafka
  clients' fetch and send buffers count against the models. A broker of its own is started
  from the Maven jars (``scripts/kafka_broker.py``) unless ``--bootstrap`` names a cluster.

Events are generated in blocks as they are handed to the daemon (nothing big is held), seeded,
with the throughput bench's columns (20 numeric, 5 categorical features, 3 segments, a score).
Each part ends with one ``RESULT {json}`` line that ``python -m bench`` reads.

    .venv/bin/python -m bench.memory                       # both parts, ~3-5 min
    .venv/bin/python -m bench.memory --part growth --events 10000000
    .venv/bin/python -m bench.memory --part models --models 100 --windows 3
    .venv/bin/python -m bench.memory --part kafka --models 100 --windows 3
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the ``bench`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import orjson

from bench.throughput import NULL_RATE, SEGMENTS, T0, _rows, save_reference_profile
from driftwarden.daemon.app import load_policy_set
from driftwarden.daemon.checkpoint import LocalCheckpointStore
from driftwarden.daemon.events import LABEL_SCHEMA, PREDICTION_SCHEMA, format_time
from driftwarden.daemon.join import JoinBuffer
from driftwarden.daemon.logs import configure as configure_logs
from driftwarden.daemon.profiles import ProfileLoader
from driftwarden.daemon.runner import Daemon, DaemonOptions, release_free_heap
from driftwarden.daemon.settings import DEFAULTS, parse_duration
from driftwarden.daemon.sinks import Sink
from driftwarden.daemon.sources import RawRecord, Source
from driftwarden.retrain.labeled_store import LabeledStore

ROOT = Path(__file__).resolve().parents[1]
PAGE = os.sysconf("SC_PAGE_SIZE")
N_NUMERIC = 20
N_CATEGORICAL = 5
TARGET_MODELS_MB = 300.0
#: the last half counts as flat when it grew by less than this share of its starting RSS
FLAT_SHARE = 0.05
#: predictions per model per generated block in the models part (100 models x 100 = 10 k)
BLOCK = 100

POLICY = """\
apiVersion: driftwarden/v1
kind: Policy
model: "bench-*"
reference: file:profile.json
window: {{events: {window}, labeled: {{events: {labeled}}}}}
detectors:
  - {{name: quality, type: data_quality}}
  - {{name: drift, type: feature_drift, method: js, threshold: 0.1, features: all}}
  - {{name: scores, type: prediction_drift, method: js, threshold: 0.1}}
  - {{name: enterprise_recall, type: slice_performance, metric: recall,
     slice: {{customer_tier: enterprise}}, max_drop: 0.05, min_samples: 100}}
rules:
  - name: broken-input
    when: quality
    severity: critical
    actions: [{{alert: log}}]
  - name: drifted
    when: (drift or scores or enterprise_recall) and not quality
    severity: warning
    actions: [{{alert: log}}]
receivers:
  log: {{type: log}}
"""


def rss_mb() -> float:
    """Resident set size of this process in MB (``/proc/self/statm``; psutil is not needed)."""
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * PAGE / 1e6


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6


# --------------------------------------------------------------------------- workload


class GeneratedEvents:
    """Seeded prediction and label bytes for ``models`` models, generated block by block.

    Block ``b`` publishes ``block`` predictions per model (models interleaved; event time
    ``rate`` predictions per second per model), then the labels of block ``b - 1``'s labeled
    predictions (``label_share``), each 1 s to one block's span after its prediction — so labels
    arrive late, out of the predictions' order, and the rest never arrive.
    """

    def __init__(
        self, models: int, *, label_share: float, rate: float, block: int, seed: int
    ) -> None:
        self.names = [f"bench-{k}" for k in range(models)]
        self.label_share = label_share
        self.rate = rate
        self.block = block
        self.rng = np.random.default_rng(seed)
        self.num_names = [f"num_{i}" for i in range(N_NUMERIC)]
        self.cat_names = [f"cat_{i}" for i in range(N_CATEGORICAL)]

    def blocks(self) -> Iterator[list[tuple[int, bool, bytes]]]:
        """Endless blocks of ``(model index, is_label, value)`` in publication order."""
        pending: list[tuple[int, bool, bytes]] = []
        b = 0
        while True:
            out: list[tuple[int, bool, bytes]] = []
            labels: list[tuple[int, bool, bytes]] = []
            per_model = [self._model_block(k, b) for k in range(len(self.names))]
            for i in range(self.block):
                for k, (preds, _) in enumerate(per_model):
                    out.append((k, False, preds[i]))
            for k, (_, labs) in enumerate(per_model):
                labels.extend((k, True, v) for v in labs)
            # Labels of the previous block, shuffled: they do not come back in order.
            order = self.rng.permutation(len(pending))
            out.extend(pending[j] for j in order)
            pending = labels
            b += 1
            yield out

    def _model_block(self, k: int, b: int) -> tuple[list[bytes], list[bytes]]:
        n = self.block
        model = self.names[k]
        cols = _rows(self.rng, n)
        null = self.rng.random((2, n)) < NULL_RATE
        labeled = self.rng.random(n) < self.label_share
        delay = self.rng.uniform(1.0, n / self.rate, n)
        num = np.stack([cols[c] for c in self.num_names], axis=1).tolist()
        cat = np.stack([cols[c] for c in self.cat_names], axis=1).tolist()
        score = cols["score"].tolist()
        predicted = cols["predicted"].tolist()
        label = cols["label"].tolist()
        segs = {name: cols[name].tolist() for name in SEGMENTS}
        preds: list[bytes] = []
        labs: list[bytes] = []
        for i in range(n):
            idx = b * n + i
            ts = T0 + idx / self.rate
            features: dict[str, Any] = dict(zip(self.num_names, num[i], strict=True))
            features.update(zip(self.cat_names, cat[i], strict=True))
            if null[0, i]:
                features["num_0"] = None
            if null[1, i]:
                features["cat_0"] = None
            pid = f"{model}-{idx}"
            preds.append(
                _compact(
                    {
                        "schema": PREDICTION_SCHEMA,
                        "prediction_id": pid,
                        "model": model,
                        "model_version": "1",
                        "timestamp": format_time(ts),
                        "features": features,
                        "prediction": {"label": predicted[i], "score": score[i]},
                        "segment": {name: str(segs[name][i]) for name in SEGMENTS},
                    }
                )
            )
            if labeled[i]:
                labs.append(
                    _compact(
                        {
                            "schema": LABEL_SCHEMA,
                            "prediction_id": pid,
                            "model": model,
                            "timestamp": format_time(ts + float(delay[i])),
                            "label": label[i],
                        }
                    )
                )
        return preds, labs


def _compact(event: dict[str, Any]) -> bytes:
    """``orjson.dumps`` as an exact-size bytes object.

    orjson's result keeps a 4 KiB allocation behind a 500-byte record; a block of them would
    weigh 8x what a consumer's records do and be counted against the daemon.
    """
    return bytes(memoryview(orjson.dumps(event)))


class GeneratingSource(Source):
    """Hands ``total`` generated records to the daemon; calls ``on_progress`` as they go.

    Topics ``predictions``/``labels``; a model's events stay in one partition (``k %
    partitions``) as Kafka's keying would put them. ``on_progress(handed)`` runs at each poll,
    when everything handed out before has been processed — the moment to read RSS.
    """

    def __init__(
        self,
        events: GeneratedEvents,
        total: int,
        partitions: int,
        on_progress: Any = None,
    ) -> None:
        self.roles: dict[str, str | None] = {"predictions": "predictions", "labels": "labels"}
        self.total = total
        self.handed = 0
        self.partitions = partitions
        self.on_progress = on_progress
        self._blocks = events.blocks()
        self._keys = [n.encode() for n in events.names]
        self._buffer: list[RawRecord] = []
        self._pos = 0
        self._offsets: dict[tuple[str, int], int] = {}

    def poll(self, max_records: int, timeout_s: float) -> list[RawRecord]:
        if self.on_progress is not None:
            self.on_progress(self.handed)
        want = min(max_records, self.total - self.handed)
        out: list[RawRecord] = []
        while len(out) < want:
            if self._pos >= len(self._buffer):
                self._refill()
            take = self._buffer[self._pos : self._pos + want - len(out)]
            self._pos += len(take)
            out.extend(take)
        self.handed += len(out)
        return out

    def prime(self) -> None:
        """Generate the first block now, so a baseline taken next already holds one block (the
        generator holds about one block at any time)."""
        if self._pos >= len(self._buffer):
            self._refill()

    def _refill(self) -> None:
        records = []
        for k, is_label, value in next(self._blocks):
            topic = "labels" if is_label else "predictions"
            part = k % self.partitions
            offset = self._offsets.get((topic, part), 0)
            self._offsets[(topic, part)] = offset + 1
            records.append(RawRecord(topic, part, offset, self._keys[k], value, None))
        self._buffer, self._pos = records, 0

    def seek(self, offsets: dict[tuple[str, int], int]) -> None:
        return None  # a fresh state: the generator starts at its beginning

    @property
    def exhausted(self) -> bool:
        return self.handed >= self.total


class CountingSink(Sink):
    """Discards what the daemon publishes (a memory sink would itself grow), counting it."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def publish(
        self,
        topic: str,
        key: str | None,
        value: bytes,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        self.counts[topic] = self.counts.get(topic, 0) + 1

    def flush(self) -> None:
        return None


def _setup(base: Path, window: int, labeled: int) -> Path:
    """Write the policy and the shared reference profile; returns the policy folder."""
    folder = base / "policies"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bench.yaml").write_text(
        POLICY.format(window=window, labeled=labeled), encoding="utf-8"
    )
    save_reference_profile(folder / "profile.json")
    return folder


def _daemon(
    base: Path,
    source: GeneratingSource,
    window: int,
    labeled: int,
    join_ttl_s: float,
    store: LabeledStore | None = None,
) -> Daemon:
    policies = load_policy_set(_setup(base, window, labeled))
    options = DaemonOptions(
        topics={**DEFAULTS["kafka"]["topics"], "predictions": "predictions", "labels": "labels"},
        join_ttl_s=join_ttl_s,
        join_max_entries=DEFAULTS["join"]["max_entries"],
        checkpoint_every_events=DEFAULTS["checkpoint"]["every_events"],
        checkpoint_every_s=parse_duration(DEFAULTS["checkpoint"]["every"]),
    )
    daemon = Daemon(
        source_factory=lambda d: source,
        sink=CountingSink(),
        store=LocalCheckpointStore(base / "state"),
        policies=policies,
        profile_loader=ProfileLoader(policies),
        options=options,
        on_labeled=None if store is None else partial(_keep_labeled, store),
    )
    if store is not None:
        daemon.before_checkpoint.append(store.sync)
    daemon.assign(list(range(source.partitions)))
    return daemon


def _keep_labeled(
    store: LabeledStore, model: str, rows: list[dict[str, Any]], partition: int = 0
) -> None:
    """What ``driftwarden run`` does with a retraining model's labeled examples."""
    store.append(model, rows, sync=False)


def waiting(daemon: Daemon) -> tuple[int, int, int]:
    """(monitors, predictions waiting for a label, labels waiting for a prediction)."""
    monitors = preds = labels = 0
    for unit in daemon.units.values():
        for mon in unit.models.values():
            c = mon.join.counters
            monitors += 1
            preds += c.predictions - c.matched - c.expired_unlabeled - c.duplicate_predictions
            labels += c.labels - c.matched - c.orphan_labels - c.duplicate_labels
    return monitors, preds, labels


def trimmed_rss_mb() -> float:
    """RSS after a full collection and glibc's ``malloc_trim`` (freed heap handed back)."""
    gc.collect()
    release_free_heap()  # not glibc: RSS as it is
    return rss_mb()


def release_join_buffers(daemon: Daemon) -> tuple[float, float]:
    """Empty every monitor's join buffer (end of a measurement only).

    Returns the trimmed RSS before and after. What RSS gives back is a lower bound of what the
    buffers held (the allocator keeps partly used pages), good enough to tell the join buffers
    from the rest.
    """
    before = trimmed_rss_mb()
    for unit in daemon.units.values():
        for mon in unit.models.values():
            old = mon.join
            mon.join = JoinBuffer(ttl_s=old.ttl_s, max_entries=old.max_entries)
    return before, trimmed_rss_mb()


# --------------------------------------------------------------------------- the two parts


@dataclass
class Sample:
    """One reading during the growth run."""

    records: int
    seconds: float
    rss_mb: float
    waiting_predictions: int
    waiting_labels: int


def growth(args: argparse.Namespace) -> dict[str, Any]:
    """Part (a): RSS every ``sample_every`` records over a long run; returns the result."""
    base = Path(tempfile.mkdtemp(prefix="dw-memory-"))
    samples: list[Sample] = []
    t0 = time.perf_counter()
    try:
        holder: list[Daemon] = []

        def progress(handed: int) -> None:
            if handed >= len(samples) * args.sample_every and holder:
                _, wp, wl = waiting(holder[0])
                samples.append(Sample(handed, time.perf_counter() - t0, rss_mb(), wp, wl))
                print(
                    f"  {handed:>11,} records  {samples[-1].seconds:7.1f} s  "
                    f"RSS {samples[-1].rss_mb:8.1f} MB  waiting: {wp:>8,} predictions "
                    f"{wl:>7,} labels",
                    flush=True,
                )

        events = GeneratedEvents(
            args.models, label_share=args.label_share, rate=args.rate, block=250, seed=args.seed
        )
        source = GeneratingSource(events, args.events, args.partitions, progress)
        daemon = _daemon(base, source, args.window, args.window, args.join_ttl)
        gc.collect()
        source.prime()
        gc.collect()
        baseline = rss_mb()
        holder.append(daemon)
        t0 = time.perf_counter()
        summary = daemon.run(max_events=args.events)
        progress(source.handed)  # the last reading, after the final batch and checkpoint
        seconds = time.perf_counter() - t0
    finally:
        shutil.rmtree(base, ignore_errors=True)
    half = [s for s in samples if s.records >= args.events / 2]
    first, last = half[0], half[-1]
    grew = last.rss_mb - first.rss_mb
    flat = grew <= FLAT_SHARE * first.rss_mb
    per_entry_kb = 0.0
    if last.waiting_predictions + last.waiting_labels:
        per_entry_kb = (1e3 * (max(s.rss_mb for s in samples) - baseline)) / (
            last.waiting_predictions + last.waiting_labels
        )
    print(
        f"\ngrowth: {summary.valid:,} valid of {summary.records:,} records, {summary.windows:,} "
        f"windows, {summary.decisions:,} decisions, {summary.checkpoints} checkpoints in "
        f"{seconds:.0f} s ({summary.records / seconds:,.0f} rec/s incl. generation)"
    )
    print(
        f"baseline RSS {baseline:.1f} MB; last half ({first.records:,} → {last.records:,} "
        f"records): {first.rss_mb:.1f} → {last.rss_mb:.1f} MB, growth {grew:+.1f} MB "
        f"({100 * grew / first.rss_mb:+.1f} %) — {'flat' if flat else 'NOT flat'} "
        f"(flat: < {100 * FLAT_SHARE:.0f} %); peak RSS {peak_rss_mb():.1f} MB"
    )
    print(
        f"join: ttl {args.join_ttl:.0f} s of event time at {args.rate:g} predictions/s per model "
        f"→ ≈ {args.join_ttl * args.rate * (1 - args.label_share):,.0f} unlabeled predictions "
        f"wait per model; ≈ {per_entry_kb:.1f} KB of RSS above baseline per waiting entry"
    )
    return {
        "part": "growth",
        "events": summary.records,
        "valid": summary.valid,
        "seconds": seconds,
        "baseline_mb": baseline,
        "samples": [s.__dict__ for s in samples],
        "half_start_mb": first.rss_mb,
        "half_end_mb": last.rss_mb,
        "half_growth_mb": grew,
        "half_growth_share": grew / first.rss_mb,
        "flat": flat,
        "peak_mb": peak_rss_mb(),
        "kb_per_waiting_entry": per_entry_kb,
        "models": args.models,
        "join_ttl_s": args.join_ttl,
        "rate": args.rate,
    }


def _models_workload(args: argparse.Namespace) -> tuple[GeneratedEvents, int, int, int]:
    """(events, predictions per model, records in total, labeled rows per window) of the
    models parts."""
    per_model = args.window * args.windows
    events = GeneratedEvents(
        args.models, label_share=args.label_share, rate=args.rate, block=BLOCK, seed=args.seed
    )
    # Predictions of every window plus the labels of all but the last block (a block's labels
    # come after the next block's predictions); about, as labels are drawn at random.
    blocks = -(-per_model // BLOCK)
    total = args.models * per_model + int(args.models * BLOCK * (blocks - 1) * args.label_share)
    return events, per_model, total, max(100, int(args.window * args.label_share))


def models(args: argparse.Namespace) -> dict[str, Any]:
    """Part (b): RSS above baseline with one monitor per model after a few windows each
    (part (c), ``--part store``: with every model's labeled examples kept)."""
    base = Path(tempfile.mkdtemp(prefix="dw-memory-"))
    keep = args.part == "store"
    store = (
        LabeledStore(base / "labeled", max_rows_per_model=int(DEFAULTS["retrain"]["labeled_rows"]))
        if keep
        else None
    )
    try:
        events, per_model, total, labeled = _models_workload(args)
        source = GeneratingSource(events, total, args.partitions)
        daemon = _daemon(base, source, args.window, labeled, args.join_ttl, store)
        gc.collect()
        source.prime()
        gc.collect()
        baseline = rss_mb()
        t0 = time.perf_counter()
        summary = daemon.run(max_events=total)
        seconds = time.perf_counter() - t0
        gc.collect()
        after = rss_mb()
        result = _models_result(args, daemon, summary, per_model, baseline, after, seconds)
        stored = sum(store.count(name) for name in events.names) if store else 0
        disk = sum(f.stat().st_size for f in (base / "labeled").rglob("*") if f.is_file())
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if keep:
        print(
            f"labeled store: {stored:,} rows kept ({stored // max(1, result['models']):,} per "
            f"model), {disk / 1e6:.1f} MB on disk ({disk / max(1, stored):.0f} B per row)"
        )
    return {**result, "stored_rows": stored, "store_disk_mb": (disk / 1e6) if keep else 0.0}


def _models_result(
    args: argparse.Namespace,
    daemon: Daemon,
    summary: Any,
    per_model: int,
    baseline: float,
    after: float,
    seconds: float,
) -> dict[str, Any]:
    """Print the models part's figures (RSS read before and after the run) and return them;
    empties the daemon's join buffers to weigh them."""
    monitors, wp, wl = waiting(daemon)
    trimmed, released = release_join_buffers(daemon)
    used = after - baseline
    join_mb = trimmed - released
    print(
        f"models: {monitors} monitors, {summary.valid:,} valid of {summary.records:,} records "
        f"({per_model:,} predictions per model), {summary.windows:,} windows, "
        f"{summary.decisions:,} decisions in {seconds:.0f} s"
    )
    print(
        f"baseline RSS {baseline:.1f} MB → after warm-up {after:.1f} MB: {used:.1f} MB for "
        f"{monitors} models ({used / max(1, monitors):.2f} MB per model; join buffers hold "
        f"{wp:,} predictions and {wl:,} labels); peak {peak_rss_mb():.1f} MB; target <= "
        f"{TARGET_MODELS_MB:.0f} MB: {'met' if used <= TARGET_MODELS_MB else 'NOT met'}"
    )
    print(
        f"emptying the join buffers then gave back {join_mb:.1f} MB "
        f"({1e3 * join_mb / max(1, wp + wl):.1f} KB per waiting entry): the monitors without "
        f"them ≈ {used - join_mb:.1f} MB ({(used - join_mb) / max(1, monitors):.2f} MB per model)"
    )
    return {
        "part": args.part,
        "models": monitors,
        "features": N_NUMERIC + N_CATEGORICAL,
        "windows": summary.windows,
        "records": summary.records,
        "valid": summary.valid,
        "predictions_per_model": per_model,
        "seconds": seconds,
        "baseline_mb": baseline,
        "after_mb": after,
        "used_mb": used,
        "waiting_predictions": wp,
        "waiting_labels": wl,
        "join_mb": join_mb,
        "without_join_mb": used - join_mb,
        "peak_mb": peak_rss_mb(),
        "met": used <= TARGET_MODELS_MB,
    }


def kafka_models(args: argparse.Namespace) -> dict[str, Any]:
    """Part (d): the models part read from a real broker by a daemon built as ``driftwarden
    run`` builds it (see the module docstring)."""
    import yaml

    from bench.throughput import kafka as kafka_cluster
    from driftwarden.daemon.app import build_daemon
    from driftwarden.daemon.settings import load_settings

    base = Path(tempfile.mkdtemp(prefix="dw-memory-kafka-"))
    try:
        with kafka_cluster(args.bootstrap, base) as bootstrap:
            tag = os.urandom(4).hex()
            # Every topic the daemon may write has a name of its own (a --bootstrap cluster's
            # driftwarden.* topics are left alone).
            topics = {
                k: f"bench-memory-{k}-{tag}"
                for k in (
                    *("predictions", "labels", "dlq", "decisions", "windows", "alerts"),
                    *("routing", "state", "silences", "labeled"),
                )
            }
            t0 = time.perf_counter()
            child = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bench.memory",
                    *_own_args(args),
                    "--part",
                    "produce",
                    "--bootstrap",
                    bootstrap,
                    "--topics",
                    json.dumps(topics),
                ],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=False,
            )
            if child.returncode != 0:
                raise RuntimeError(f"producing the events failed:\n{child.stdout}{child.stderr}")
            sent = parse_result(child.stdout)[-1]
            print(
                f"produced {sent['records']:,} records ({sent['mb']:.0f} MB) keyed by model to "
                f"{args.partitions}-partition topics in {time.perf_counter() - t0:.0f} s",
                flush=True,
            )
            _, per_model, _, labeled = _models_workload(args)
            config = {
                "source": "kafka",
                "kafka": {
                    "bootstrap_servers": bootstrap,
                    "group_id": f"bench-memory-{tag}",
                    "client_id": "bench-memory",
                    "topics": topics,
                },
                "policies": str(_setup(base, args.window, labeled)),
                "state": {"dir": str(base / "state"), "backend": args.state_backend},
                "join": {"ttl": f"{args.join_ttl:g}s"},
                "http": {"enabled": False},
                "log": {"level": "warning"},
            }
            path = base / "driftwarden.yaml"
            path.write_text(yaml.safe_dump(config), encoding="utf-8")
            daemon = build_daemon(load_settings(path, env={}))
            try:
                gc.collect()
                baseline = rss_mb()
                t0 = time.perf_counter()
                summary = daemon.run(max_events=sent["records"], timeout_s=args.timeout)
                seconds = time.perf_counter() - t0
                gc.collect()
                after = rss_mb()
                result = _models_result(args, daemon, summary, per_model, baseline, after, seconds)
            finally:
                daemon.sink.close()
                daemon.source.close()
                daemon.store.close()  # state.backend kafka: its clients, before the broker goes
                if daemon.labeled_share is not None:
                    daemon.labeled_share.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return {
        **result,
        "produced": sent["records"],
        "partitions": args.partitions,
        "state_backend": args.state_backend,
    }


def produce(args: argparse.Namespace) -> dict[str, Any]:
    """The models part's events, keyed by model, to ``--topics`` on ``--bootstrap`` (run by
    :func:`kafka_models` in a child interpreter)."""
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    topics = json.loads(args.topics)
    admin = KafkaAdminClient(bootstrap_servers=args.bootstrap, client_id="bench-memory-admin")
    try:
        admin.create_topics(
            [NewTopic(topics[k], args.partitions, 1) for k in ("predictions", "labels")]
            + [NewTopic(topics[k], 1, 1) for k in ("dlq", "decisions", "windows", "alerts")]
        )
    finally:
        admin.close()
    events, _, total, _ = _models_workload(args)
    keys = [n.encode() for n in events.names]
    producer = KafkaProducer(
        bootstrap_servers=args.bootstrap,
        client_id="bench-memory-producer",
        linger_ms=20,
        batch_size=512 * 1024,
        acks="all",
    )
    sent = size = 0
    try:
        for block in events.blocks():
            for k, is_label, value in block[: total - sent]:
                producer.send(topics["labels" if is_label else "predictions"], value, keys[k])
                size += len(value)
            sent += min(len(block), total - sent)
            if sent >= total:
                break
        producer.flush(timeout=300)
    finally:
        producer.close()
    return {"part": "produce", "records": sent, "mb": size / 1e6}


def parse_result(text: str) -> list[dict[str, Any]]:
    """The ``RESULT {json}`` lines of this script's output, in order."""
    return [json.loads(line[7:]) for line in text.splitlines() if line.startswith("RESULT {")]


def _own_args(args: argparse.Namespace) -> list[str]:
    """The workload's arguments, for a part run in a child interpreter."""
    return [
        f"--events={args.events}",
        f"--sample-every={args.sample_every}",
        f"--growth-models={args.growth_models}",
        f"--models={args.models}",
        f"--windows={args.windows}",
        f"--window={args.window}",
        f"--label-share={args.label_share}",
        f"--rate={args.rate}",
        f"--join-ttl={args.join_ttl}",
        f"--partitions={args.partitions}",
        f"--seed={args.seed}",
        f"--timeout={args.timeout}",
        f"--state-backend={args.state_backend}",
        *([f"--bootstrap={args.bootstrap}"] if args.bootstrap else []),
    ]


def main(argv: list[str] | None = None) -> int:
    """Run the parts (each in a fresh interpreter unless ``--part`` names one)."""
    doc = __doc__ or ""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument(
        "--part", choices=["growth", "models", "store", "kafka", "produce", "all"], default="all"
    )
    ap.add_argument("--events", type=int, default=2_000_000, help="growth: records in total")
    ap.add_argument("--sample-every", type=int, default=100_000, help="growth: records per RSS")
    ap.add_argument("--growth-models", type=int, default=4, help="growth: models")
    ap.add_argument("--models", type=int, default=100, help="models part: models")
    ap.add_argument("--windows", type=int, default=3, help="models part: windows per model")
    ap.add_argument("--window", type=int, default=1000, help="predictions per window")
    ap.add_argument("--label-share", type=float, default=0.5)
    ap.add_argument("--rate", type=float, default=10.0, help="predictions/s per model (event time)")
    ap.add_argument(
        "--join-ttl",
        type=parse_duration,
        default=3600.0,
        help="join TTL (event time; default 1h: the shipped 7d is only reached after 6 M "
        "predictions per model at 10/s, then join.max_entries bounds it)",
    )
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--bootstrap", help="kafka part: use this cluster instead of a broker of its own"
    )
    ap.add_argument("--timeout", type=float, default=900.0, help="kafka part: bound on the run (s)")
    ap.add_argument(
        "--state-backend",
        choices=["local", "kafka"],
        default="local",
        help="kafka part: where the daemon checkpoints (kafka: the state topic, as replicas do)",
    )
    ap.add_argument("--topics", help=argparse.SUPPRESS)  # produce: the kafka part's topics (JSON)
    args = ap.parse_args(argv)
    if args.events < 2 * args.sample_every:
        ap.error("--events must be at least twice --sample-every.")
    if args.windows < 1 or args.models < 1 or args.window < 100:
        ap.error("--models and --windows must be at least 1 and --window at least 100.")

    if args.part == "all":
        own = _own_args(args)
        status = 0
        for part in ("growth", "models", "store", "kafka"):
            proc = subprocess.run(
                [sys.executable, "-m", "bench.memory", *own, "--part", part],
                cwd=ROOT,
                check=False,
            )
            status = status or proc.returncode
        return status

    configure_logs("warning")
    if args.part == "produce":
        print("RESULT " + json.dumps(produce(args)), flush=True)
        return 0
    if args.part == "growth":
        print(
            f"growth: {args.events:,} records, {args.growth_models} models, RSS every "
            f"{args.sample_every:,}",
            flush=True,
        )
        args.models = args.growth_models
        result = growth(args)
        ok = result["valid"] == args.events
    else:
        print(
            f"{args.part}: {args.models} models x {N_NUMERIC + N_CATEGORICAL} features, "
            f"{args.windows} windows of {args.window}"
            + (", every model's labeled examples kept" if args.part == "store" else "")
            + (", read from a real Kafka broker" if args.part == "kafka" else ""),
            flush=True,
        )
        if args.part == "kafka":
            import logging

            # kafka-python warns "No partition metadata" while a fresh group's metadata loads
            logging.getLogger("kafka").setLevel(logging.ERROR)
            result = kafka_models(args)
            ok = result["valid"] == result["produced"]
        else:
            result = models(args)
            ok = True
    print("RESULT " + json.dumps(result), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
