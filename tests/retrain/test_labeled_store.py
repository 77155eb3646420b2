"""LabeledStore: durability across reopen, torn writes, bounds, idempotency (pure, tmp dir)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from driftwarden.retrain.labeled_store import LabeledStore, to_epoch_seconds


def _rows(start: int, n: int, *, t0: float = 1_000.0) -> list[dict[str, Any]]:
    rng = random.Random(start)
    return [
        {
            "prediction_id": f"p{i}",
            "features": {"days_since_last_login": rng.randint(0, 60), "plan": "pro"},
            "prediction": {"label": 1, "score": rng.random()},
            "label": rng.randint(0, 1),
            "segment": {"customer_tier": "smb", "region": "eu"},
            "timestamp": t0 + i,
        }
        for i in range(start, start + n)
    ]


def test_rows_survive_reopen_in_order(tmp_path: Path) -> None:
    """What was appended is read back, in append order, by a new store on the same folder."""
    store = LabeledStore(tmp_path)
    rows = _rows(0, 30)
    assert store.append("churn", rows[:10]) == 10
    assert store.append("churn", rows[10:]) == 20
    reopened = LabeledStore(tmp_path)
    assert [r["prediction_id"] for r in reopened.rows("churn")] == [
        r["prediction_id"] for r in rows
    ]
    assert [r["label"] for r in reopened.rows("churn")] == [r["label"] for r in rows]


def test_replay_does_not_duplicate(tmp_path: Path) -> None:
    """Appending the same prediction_ids again (a replay after a crash) stores nothing new."""
    store = LabeledStore(tmp_path)
    rows = _rows(0, 20)
    store.append("churn", rows)
    assert store.append("churn", rows[5:15] + rows[5:6]) == 0
    reopened = LabeledStore(tmp_path)
    assert reopened.append("churn", rows + _rows(20, 3)) == 3
    assert reopened.count("churn") == 23


def test_torn_last_line_is_dropped_and_repaired(tmp_path: Path) -> None:
    """A crash mid-write leaves half a line: reopening drops it and later appends still parse."""
    store = LabeledStore(tmp_path)
    store.append("churn", _rows(0, 5))
    seg = sorted((tmp_path / "churn").glob("seg-*.jsonl"))[-1]
    with open(seg, "ab") as fh:
        fh.write(b'{"prediction_id": "torn", "features": {"x"')
    reopened = LabeledStore(tmp_path)
    assert reopened.count("churn") == 5
    assert reopened.append("churn", _rows(5, 2)) == 2
    assert [r["prediction_id"] for r in LabeledStore(tmp_path).rows("churn")][-2:] == ["p5", "p6"]


def test_row_bound_keeps_newest_and_survives_reopen(tmp_path: Path) -> None:
    """Over the row bound the newest rows are kept, on disk too, and evicted ids stay out."""
    store = LabeledStore(tmp_path, max_rows_per_model=100)
    for start in range(0, 400, 40):
        store.append("churn", _rows(start, 40))
    assert store.count("churn") <= 125
    store.compact("churn")
    ids = [r["prediction_id"] for r in store.rows("churn")]
    assert ids == [f"p{i}" for i in range(300, 400)]
    assert len(list((tmp_path / "churn").glob("seg-*.jsonl"))) == 1
    reopened = LabeledStore(tmp_path, max_rows_per_model=100)
    assert [r["prediction_id"] for r in reopened.rows("churn")] == ids
    assert reopened.append("churn", _rows(250, 10)) == 0  # evicted rows replayed late


def test_crash_between_compaction_rename_and_delete(tmp_path: Path) -> None:
    """Old segments left behind by a crash after the compacted file landed are not re-read."""
    store = LabeledStore(tmp_path, max_rows_per_model=10)
    store.append("churn", _rows(0, 10))
    seg_dir = tmp_path / "churn"
    old = sorted(seg_dir.glob("seg-*.jsonl"))[0]
    saved = old.read_bytes()
    store.append("churn", _rows(10, 5))  # 15 > 10 * 1.25: compacts, deleting `old`
    assert not old.exists()
    old.write_bytes(saved)  # as if the deletion never happened
    reopened = LabeledStore(tmp_path, max_rows_per_model=10)
    assert [r["prediction_id"] for r in reopened.rows("churn")] == [f"p{i}" for i in range(5, 15)]
    assert not old.exists()


def test_age_bound_uses_event_time(tmp_path: Path) -> None:
    """Rows older than max_age_s before the newest row's event time are dropped."""
    store = LabeledStore(tmp_path, max_age_s=50)
    store.append("churn", _rows(0, 100, t0=0.0))  # timestamps 0..99
    store.compact("churn")
    assert [r["timestamp"] for r in store.rows("churn")] == [float(t) for t in range(49, 100)]


def test_frame_flattens_columns(tmp_path: Path) -> None:
    """frame() gives features and segments by name plus label/score/timestamp columns."""
    store = LabeledStore(tmp_path)
    store.append(
        "churn",
        [
            {
                "prediction_id": "a",
                "features": {"plan": "pro", "region": 3},
                "prediction": {"label": 1, "score": 0.7},
                "label": 0,
                "segment": {"customer_tier": "enterprise", "region": "eu"},
                "timestamp": "2026-11-26T10:15:00Z",
            }
        ],
    )
    frame = store.frame("churn")
    row = frame.iloc[0]
    assert row["plan"] == "pro" and row["region"] == 3  # the feature keeps its name
    assert row["segment.region"] == "eu"  # the segment with a clashing name is prefixed
    assert row["customer_tier"] == "enterprise"
    assert (row["label"], row["score"], row["predicted"]) == (0, 0.7, 1)
    assert row["timestamp"] == to_epoch_seconds("2026-11-26T10:15:00+00:00")
    assert {"label", "score", "timestamp"} <= set(store.frame("churn", last=0).columns)


def test_rejects_rows_without_id_and_bad_model_names(tmp_path: Path) -> None:
    """A row without prediction_id and a model name that is not a safe folder name fail."""
    store = LabeledStore(tmp_path)
    with pytest.raises(ValueError, match="prediction_id"):
        store.append("churn", [{"features": {}, "label": 1}])
    with pytest.raises(ValueError, match="model name"):
        store.append("../etc", _rows(0, 1))


def test_deferred_sync_fsyncs_each_written_segment_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``sync=False`` writes at once (readers see the rows) but fsyncs only in ``sync()``: one
    fsync per segment touched, none when nothing was appended since."""
    import os

    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    store = LabeledStore(tmp_path, max_rows_per_model=1_000)
    rows = _rows(0, 30)
    for part in (rows[:10], rows[10:20], rows[20:]):
        store.append("churn", part, sync=False)
    store.append("fraud", _rows(100, 5), sync=False)
    assert synced == []
    assert len(LabeledStore(tmp_path).rows("churn")) == 30  # written, not only buffered
    assert store.sync() == 2 and len(synced) == 2
    assert store.sync() == 0 and len(synced) == 2
    store.append("churn", rows[:10], sync=False)  # all known: nothing written
    assert store.sync() == 0
    store.append("churn", _rows(30, 5))
    assert len(synced) == 3  # the default still fsyncs before returning


def test_shared_rows_are_the_stored_rows_and_rows_copies(tmp_path: Path) -> None:
    """shared_rows() hands out the stored dicts (read-only use); rows() still copies."""
    store = LabeledStore(tmp_path)
    store.append("churn", _rows(0, 5))
    shared = store.shared_rows("churn")
    assert shared == store.rows("churn")
    assert shared[0] is store.shared_rows("churn")[0]
    copies = store.rows("churn")
    copies[0]["label"] = "changed"
    assert store.rows("churn")[0]["label"] != "changed"
    store.append("churn", _rows(5, 2))
    assert len(shared) == 5 and len(store.shared_rows("churn")) == 7  # a list of its own
