"""LabeledStore: durability across reopen, torn writes, bounds, idempotency (pure, tmp dir)."""

from __future__ import annotations

import gc
import math
import random
import shutil
import tempfile
import threading
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driftwarden.retrain import labeled_store
from driftwarden.retrain.labeled_store import LabeledStore, flatten_rows, to_epoch_seconds


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


def test_written_hands_on_every_row_given_in_its_stored_form(tmp_path: Path) -> None:
    """``written`` gets the stored lines of the new rows, and the stored form of the rows a
    replay gives again (the labeled-examples handover publishes both)."""
    store = LabeledStore(tmp_path)
    rows = _rows(0, 10)
    written: list[bytes] = []
    assert store.append("churn", rows[:6], written=written) == 6
    assert b"".join(written) == store.raw("churn")
    again: list[bytes] = []
    assert store.append("churn", rows[4:], written=again) == 4
    lines = b"".join(again).splitlines(keepends=True)
    assert sorted(lines) == sorted(store.raw("churn").splitlines(keepends=True)[4:])
    assert store.append("churn", rows[:2]) == 0  # without ``written``: nothing asked


def test_append_stored_takes_another_stores_lines_as_they_are(tmp_path: Path) -> None:
    """Lines another store wrote (a handed-over partition's examples) are appended byte for
    byte, rows already stored skipped; lines of another form are refused, nothing stored."""
    source = LabeledStore(tmp_path / "a")
    source.append("churn", _rows(0, 30))
    data = source.raw("churn")
    taker = LabeledStore(tmp_path / "b")
    taker.append("churn", _rows(0, 5))
    assert taker.append_stored("churn", data) == 25
    assert taker.append_stored("churn", data) == 0
    assert taker.raw("churn") == data  # same rows, same order, same bytes
    assert LabeledStore(tmp_path / "b").count("churn") == 30  # indexed as written
    for bad in (b'{"prediction_id": "x"}\n', data[:-1] + b"\n\n", b'{"prediction_id": 1}\n'):
        with pytest.raises(ValueError, match="churn"):
            taker.append_stored("churn", bad)
    assert taker.count("churn") == 30


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


def test_a_damaged_line_with_rows_after_it_loses_only_itself(tmp_path: Path) -> None:
    """One bad byte in an acknowledged row (disk damage, a hand edit) is no torn write: the
    rows after it were written and synced after it, so only that line is left out (it used to
    cut the segment there, rows and all)."""
    store = LabeledStore(tmp_path)
    store.append("churn", _rows(0, 10))
    seg = sorted((tmp_path / "churn").glob("seg-*.jsonl"))[-1]
    lines = seg.read_bytes().split(b"\n")
    lines[2] = lines[2][:10] + b"\xff" + lines[2][11:]
    seg.write_bytes(b"\n".join(lines))
    reopened = LabeledStore(tmp_path)
    ids = [r["prediction_id"] for r in reopened.rows("churn")]
    assert ids == [f"p{i}" for i in range(10) if i != 2]
    assert reopened.append("churn", _rows(10, 1)) == 1
    assert len(LabeledStore(tmp_path).rows("churn")) == 10


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


def test_shared_rows_are_fresh_rows_like_rows(tmp_path: Path) -> None:
    """shared_rows() equals rows(); both parse the rows from disk, so each call hands out
    dicts of its own (changing one changes nothing stored)."""
    store = LabeledStore(tmp_path)
    store.append("churn", _rows(0, 5))
    shared = store.shared_rows("churn")
    assert shared == store.rows("churn")
    assert shared[0] is not store.shared_rows("churn")[0]
    copies = store.rows("churn")
    copies[0]["label"] = "changed"
    assert store.rows("churn")[0]["label"] != "changed"
    store.append("churn", _rows(5, 2))
    assert len(shared) == 5 and len(store.shared_rows("churn")) == 7  # a list of its own


# ---------------------------------------------------------- rows on disk, an index in memory


def _ids(rows: list[dict[str, Any]]) -> list[str]:
    return [r["prediction_id"] for r in rows]


def _stored(row: dict[str, Any]) -> dict[str, Any]:
    """A row in the stored form (what rows() gives back)."""
    keys = ("prediction_id", "features", "prediction", "label", "segment", "timestamp")
    return {**{k: row.get(k) for k in keys}, "model_version": None}


def _jsonl(objs: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(o) + b"\n" for o in objs)


def _segments(folder: Path) -> list[Path]:
    return sorted(folder.glob("seg-*.jsonl"))


def test_memory_is_an_index_of_a_few_bytes_per_row(tmp_path: Path) -> None:
    """Rows of 25 features stay on disk: memory grows by the index's numpy arrays (hash and
    event time per row, the sorted hashes: 24 bytes, plus room to grow), not by dicts."""
    rng = random.Random(1)
    rows = [
        {
            "prediction_id": f"pred-{i:09d}",
            "features": {f"f{j}": rng.random() for j in range(25)},
            "prediction": {"label": 1, "score": rng.random()},
            "label": i % 2,
            "segment": {"tier": "smb"},
            "timestamp": 1_000.0 + i,
        }
        for i in range(20_000)
    ]
    store = LabeledStore(tmp_path)
    store.append("churn", rows[:500])
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(500, len(rows), 500):
            store.append("churn", rows[i : i + 500])
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown / 19_500 < 40  # the dicts took ~1.5 KB a row
    state = store._models["churn"]
    assert state.hashes.values.dtype == np.uint64 and state.stamps.values.dtype == np.float64
    assert state.count == 20_000 and state.nbytes <= 28 * 20_000 + 4096
    assert store.rows("churn")[-1] == _stored(rows[-1])


def test_reopen_gives_the_same_rows_and_index(tmp_path: Path) -> None:
    """A restart indexes the folder to the same rows, hashes, times, evicted ids."""
    kwargs: dict[str, Any] = {"max_rows_per_model": 40, "max_age_s": 30}
    store = LabeledStore(tmp_path / "a", **kwargs)
    rows = _rows(0, 100, t0=0.0)
    for row in rows[::7]:
        row["timestamp"] = None
    for start in range(0, 100, 9):
        store.append("churn", rows[start : start + 9] + rows[:3], sync=False)
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # one store per folder
    reopened = LabeledStore(tmp_path / "b", **kwargs)
    assert reopened.rows("churn") == store.rows("churn")
    pd.testing.assert_frame_equal(reopened.frame("churn"), store.frame("churn"), check_exact=True)
    before, after = store._models["churn"], reopened._models["churn"]
    np.testing.assert_array_equal(after.hashes.values, before.hashes.values)
    np.testing.assert_array_equal(after.stamps.values, before.stamps.values)
    np.testing.assert_array_equal(after.evicted, before.evicted)
    assert after.newest_ts == before.newest_ts == 99.0
    # The same evicted ids are remembered (the newest 40): a replay stores the same rows.
    assert reopened.append("churn", rows) == store.append("churn", rows) > 0
    assert reopened.rows("churn") == store.rows("churn")


def test_evicted_ids_are_refused_after_restart(tmp_path: Path) -> None:
    """Rows dropped by age are remembered across a restart: a late replay stores nothing."""
    store = LabeledStore(tmp_path, max_age_s=10)
    store.append("churn", _rows(0, 30, t0=0.0))  # times 0..29: the oldest is past 12.5 s
    assert _ids(store.rows("churn")) == [f"p{i}" for i in range(19, 30)]
    reopened = LabeledStore(tmp_path, max_age_s=10)
    assert reopened.append("churn", _rows(0, 30, t0=0.0)) == 0
    assert reopened.count("churn") == 11


def test_a_store_whose_header_lists_evicted_ids_loads(tmp_path: Path) -> None:
    """The format before the index: a compacted segment whose header lists the evicted ids,
    a segment it replaced that a crash left, and a later segment."""
    folder = tmp_path / "churn"
    folder.mkdir()
    rows = [_stored(r) for r in _rows(0, 10)]
    (folder / "seg-00000001.jsonl").write_bytes(_jsonl(rows))
    header = {"_driftwarden_compacted": True, "replaces_before": 2, "evicted": ["p0", "p1", "p2"]}
    (folder / "seg-00000002.jsonl").write_bytes(_jsonl([header, *rows[3:7]]))
    (folder / "seg-00000003.jsonl").write_bytes(_jsonl(rows[7:]))
    store = LabeledStore(tmp_path, max_rows_per_model=5)
    assert store.rows("churn") == rows[3:]
    assert [p.name for p in _segments(folder)] == ["seg-00000002.jsonl", "seg-00000003.jsonl"]
    for last in range(9):  # across both segments, counted from either end
        assert (
            store.frame("churn", last=last)["prediction_id"].tolist()
            == _ids(rows[3:])[len(rows[3:]) - min(last, 7) :]
        )
    assert store.append("churn", _rows(0, 12)) == 2  # p10, p11; 9 rows > 6.25: compacted
    assert _ids(store.rows("churn")) == [f"p{i}" for i in range(7, 12)]
    reopened = LabeledStore(tmp_path, max_rows_per_model=5)
    assert _ids(reopened.rows("churn")) == [f"p{i}" for i in range(7, 12)]
    new_header = orjson.loads(_segments(folder)[0].read_bytes().split(b"\n")[0])
    assert "evicted" not in new_header and labeled_store._EVICTED_KEY in new_header
    # The newest 5 evicted ids are remembered (p2 from the old header, p3-p6 evicted now).
    assert reopened.append("churn", _rows(2, 10)) == 0
    assert reopened.append("churn", _rows(0, 2)) == 2


def test_blank_lines_and_duplicate_ids_are_rewritten_on_open(tmp_path: Path) -> None:
    """Files the store did not write itself (a blank line, an id twice) are rewritten when
    opened, so that row i is line i again: the first of a duplicate id is kept, as before."""
    store = LabeledStore(tmp_path)
    store.append("churn", _rows(0, 6))
    folder = tmp_path / "churn"
    lines = _segments(folder)[0].read_bytes().split(b"\n")
    _segments(folder)[0].write_bytes(b"\n".join([*lines[:3], b"", *lines[3:]]))
    want = [_stored(r) for r in _rows(0, 8)]
    later = want[1] | {"label": "replayed"}
    (folder / "seg-00000002.jsonl").write_bytes(_jsonl([later, want[6]]))
    reopened = LabeledStore(tmp_path)
    assert reopened.rows("churn") == want[:7]
    assert len(_segments(folder)) == 1
    for last in range(9):
        assert (
            reopened.frame("churn", last=last)["prediction_id"].tolist()
            == _ids(want[:7])[7 - min(last, 7) :]
        )
    assert reopened.append("churn", _rows(0, 8)) == 1
    assert LabeledStore(tmp_path).rows("churn") == want


def test_a_torn_tail_of_zeros_is_cut(tmp_path: Path) -> None:
    """A crash can leave zeros (and a newline among them) past the last line: cut on open."""
    store = LabeledStore(tmp_path)
    store.append("churn", _rows(0, 5))
    seg = _segments(tmp_path / "churn")[0]
    size = seg.stat().st_size
    with open(seg, "ab") as fh:
        fh.write(b"\0" * 100 + b"\n" + b"\0" * 10)
    reopened = LabeledStore(tmp_path)
    assert reopened.count("churn") == 5 and seg.stat().st_size == size
    assert reopened.append("churn", _rows(5, 2)) == 2
    assert _ids(LabeledStore(tmp_path).rows("churn")) == [f"p{i}" for i in range(7)]


def test_an_append_completes_while_a_read_parses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read parses outside the lock: an append, and the compaction it brings on, complete
    meanwhile, and the read returns the rows stored when it began."""
    store = LabeledStore(tmp_path, max_rows_per_model=50)
    store.append("churn", _rows(0, 40))
    parsing, appended = threading.Event(), threading.Event()
    real = labeled_store._ROWS

    class Paused:
        def decode_lines(self, data: Any) -> list[Any]:
            parsing.set()
            assert appended.wait(5)
            return real.decode_lines(data)

    monkeypatch.setattr(labeled_store, "_ROWS", Paused())
    read: list[list[dict[str, Any]]] = []
    reader = threading.Thread(target=lambda: read.append(store.rows("churn")))
    reader.start()
    assert parsing.wait(5)
    assert store.append("churn", _rows(40, 30)) == 30  # 70 rows > 62.5: compacted
    appended.set()
    reader.join(5)
    monkeypatch.undo()
    assert _ids(read[0]) == [f"p{i}" for i in range(40)]
    assert _ids(store.rows("churn")) == [f"p{i}" for i in range(20, 70)]


def test_reads_during_appends_and_compactions_are_consistent(tmp_path: Path) -> None:
    """Each read, while another thread appends and compacts, is the store at one moment:
    consecutive ids in append order."""
    store = LabeledStore(tmp_path, max_rows_per_model=300)
    store.append("churn", _rows(0, 40))
    done = threading.Event()

    def write() -> None:
        for start in range(40, 4000, 40):
            store.append("churn", _rows(start, 40), sync=False)
        done.set()

    writer = threading.Thread(target=write)
    writer.start()
    reads = 0
    while not done.is_set() or reads < 3:
        ids = [int(pid[1:]) for pid in _ids(store.rows("churn"))]
        assert ids == list(range(ids[0], ids[0] + len(ids))) and len(ids) <= 375
        tail = store.frame("churn", last=50)["prediction_id"].tolist()
        assert [int(pid[1:]) for pid in tail] == list(
            range(int(tail[0][1:]), int(tail[-1][1:]) + 1)
        )
        reads += 1
    writer.join()
    assert _ids(store.rows("churn")) == [f"p{i}" for i in range(3700, 4000)]


class _Reference:
    """The documented behaviour in plain Python (the store as it was, all in memory)."""

    def __init__(self, max_rows: int, max_age: float | None) -> None:
        self.max_rows, self.max_age = max_rows, max_age
        self.rows: dict[str, dict[str, Any]] = {}
        self.evicted: dict[str, None] = {}  # oldest first, the newest max_rows of them
        self.newest = -math.inf

    def append(self, rows: list[dict[str, Any]]) -> int:
        new = 0
        for row in rows:
            pid = row["prediction_id"]
            if pid not in self.rows and pid not in self.evicted:
                self.rows[pid] = row
                new += 1
                if row["timestamp"] is not None:
                    self.newest = max(self.newest, row["timestamp"])
        oldest = next(iter(self.rows.values()))["timestamp"] if self.rows else None
        too_old = (
            self.max_age is not None
            and oldest is not None
            and oldest < self.newest - self.max_age * 1.25
        )
        if new and (len(self.rows) > self.max_rows * 1.25 or too_old):
            self.compact()
        return new

    def compact(self) -> None:
        keep = list(self.rows.values())
        if self.max_age is not None and math.isfinite(self.newest):
            horizon = self.newest - self.max_age
            keep = [r for r in keep if r["timestamp"] is None or r["timestamp"] >= horizon]
        keep = keep[-self.max_rows :]
        kept = {r["prediction_id"] for r in keep}
        for pid in self.rows:
            if pid not in kept:
                self.evicted[pid] = None
        while len(self.evicted) > self.max_rows:
            del self.evicted[next(iter(self.evicted))]
        self.rows = {r["prediction_id"]: r for r in keep}

    def restart(self) -> None:
        """A new process knows the newest time of the rows stored."""
        stamps = [r["timestamp"] for r in self.rows.values() if r["timestamp"] is not None]
        self.newest = max(stamps, default=-math.inf)


def _random_row(i: int, ts: int | None, label: int) -> dict[str, Any]:
    """A stored-form row; a replay of id i may differ (the first one stays)."""
    return {
        "prediction_id": f"p{i}",
        "features": {"x": i / 4, "n": i, "s": None if i % 3 else "a", "t": ts},
        "prediction": {"label": label, "score": (i % 10) / 10},
        "label": label,
        "segment": {"tier": f"t{i % 2}"},
        "timestamp": None if ts is None else float(ts),
        "model_version": "1",
    }


_OPS = st.lists(
    st.one_of(
        st.lists(
            st.tuples(st.integers(0, 40), st.none() | st.integers(0, 150), st.integers(0, 1)),
            max_size=12,
        ),
        st.sampled_from(["compact", "restart", "torn"]),
    ),
    max_size=25,
)


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    max_rows=st.integers(1, 10),
    max_age=st.none() | st.integers(1, 60),
    ops=_OPS,
)
def test_random_appends_match_the_reference(
    max_rows: int, max_age: int | None, ops: list[Any]
) -> None:
    """Appends (duplicate ids in a batch, replays of stored and evicted ids, rows without a
    time, times out of order), compactions, restarts and torn tails: the same rows in the
    same order, counts and evicted ids as the reference, and the frame it would make."""
    with tempfile.TemporaryDirectory() as directory:
        store = LabeledStore(directory, max_rows_per_model=max_rows, max_age_s=max_age)
        ref = _Reference(max_rows, max_age)
        for op in ops:
            if op == "compact":
                store.compact("m")
                ref.compact()
            elif op in ("restart", "torn"):
                segments = _segments(Path(directory) / "m")
                if op == "torn" and segments:
                    with open(segments[-1], "ab") as fh:
                        fh.write(b'{"prediction_id": "torn", "feat')
                store = LabeledStore(directory, max_rows_per_model=max_rows, max_age_s=max_age)
                ref.restart()
            else:
                rows = [_random_row(*spec) for spec in op]
                assert store.append("m", rows, sync=False) == ref.append(rows)
            assert store.count("m") == len(ref.rows)
            assert store.rows("m") == list(ref.rows.values())
            np.testing.assert_array_equal(
                store._models["m"].evicted, labeled_store._hash_ids(ref.evicted)
            )
        want = list(ref.rows.values())
        for last in (None, 0, 1, 3, len(want)):
            part = want if last is None else want[-last:] if last else []
            got = store.frame("m", last=last)
            pd.testing.assert_frame_equal(got, flatten_rows(part), check_exact=True)
