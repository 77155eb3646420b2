"""Bench (not a test): what handing labeled examples over costs (``daemon/labeled_share.py``).

On one broker (its own, from the Maven jars, or ``--bootstrap``), for ``--rows`` labeled rows of
the example churn model, measured side by side in one run:

(a) appending the rows to a replica's labeled store (what the daemon pays already to keep a
    retraining model's examples) — the baseline of (b);
(b) publishing the same rows at a checkpoint (split, zlib, produce, acknowledged) — the added
    cost per checkpoint;
(c) a replica taking the partition over: reading them from the topic into its own empty store
    (``LabeledShare.restore``) — the time the rebalance path spends;
(d) a bare kafka-python consumer reading the same records (no decompression, no store) — the
    baseline of (c).

    .venv/bin/python bench/labeled_share.py                 # 50 000 rows, ≈ 1 min with the broker
    .venv/bin/python bench/labeled_share.py --rows 200000 --bootstrap 127.0.0.1:9092
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "config"), str(ROOT)]

from examples.churn import generate, to_rows  # noqa: E402

from bench.throughput import kafka  # noqa: E402
from driftwarden.daemon.labeled_share import LabeledShare  # noqa: E402
from driftwarden.retrain.labeled_store import LabeledStore  # noqa: E402

MODEL = "churn"


def _share(bootstrap: str, topic: str, store: LabeledStore, base: Path, rows: int) -> LabeledShare:
    return LabeledShare(
        bootstrap,
        topic,
        store=store,
        keeps=lambda m: True,
        max_rows=rows,
        marks_path=base / f"marks-{uuid.uuid4().hex[:6]}.json",
        partitions=1,
    )


def _bare_read(bootstrap: str, topic: str, end: int) -> float:
    from kafka import KafkaConsumer, TopicPartition

    tp = TopicPartition(topic, 0)
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    try:
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        t0 = time.perf_counter()
        while consumer.position(tp) < end:
            for rec in consumer.poll(timeout_ms=200, max_records=500).get(tp, ()):
                _ = rec.value
        return time.perf_counter() - t0
    finally:
        consumer.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--repeat", type=int, default=3, help="rounds; medians are reported")
    ap.add_argument("--bootstrap", help="use this Kafka cluster instead of starting a broker")
    args = ap.parse_args()

    base = Path(tempfile.mkdtemp(prefix="dw-labeled-share-"))
    rows = to_rows(generate(args.rows, seed=4), prefix="x")
    times: dict[str, list[float]] = {k: [] for k in "abcd"}
    nbytes = 0
    with kafka(args.bootstrap, base) as bootstrap:
        for i in range(args.repeat):
            topic = f"bench-labeled-{uuid.uuid4().hex[:8]}"
            store = LabeledStore(base / f"store-{i}", max_rows_per_model=args.rows)
            writer = _share(bootstrap, topic, store, base, args.rows)
            written: list[bytes] = []
            t0 = time.perf_counter()
            store.append(MODEL, rows, sync=False, written=written)
            store.sync()
            times["a"].append(time.perf_counter() - t0)
            nbytes = sum(map(len, written))
            writer.add(0, MODEL, written)
            t0 = time.perf_counter()
            writer.checkpoint([0])
            times["b"].append(time.perf_counter() - t0)
            doc = writer.state(0, [MODEL])
            writer.close()

            taker_store = LabeledStore(base / f"taker-{i}", max_rows_per_model=args.rows)
            taker = _share(bootstrap, topic, taker_store, base, args.rows)
            t0 = time.perf_counter()
            taker.restore(0, doc, [MODEL])
            times["c"].append(time.perf_counter() - t0)
            assert taker_store.count(MODEL) == args.rows, taker_store.count(MODEL)
            taker.close()
            times["d"].append(_bare_read(bootstrap, topic, int(doc["end"])))
            print(f"  round {i}: " + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in times.items()))

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"rows {args.rows}, {nbytes / args.rows:.0f} bytes per stored row, {args.repeat} rounds")
    print(f"(a) store append + fsync          median {med['a']:.3f} s")
    print(
        f"(b) publish at the checkpoint      median {med['b']:.3f} s  ({med['b'] / med['a']:.2f}x (a))"
    )
    print(f"(c) takeover read into the store   median {med['c']:.3f} s")
    print(
        f"(d) bare consumer, same records    median {med['d']:.3f} s  (c) = {med['c'] / med['d']:.2f}x (d)"
    )
    print(
        f"per 50 000 rows: publish {med['b'] * 50_000 / args.rows:.2f} s, takeover read {med['c'] * 50_000 / args.rows:.2f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
