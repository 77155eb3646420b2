"""A read-only labeled store (``driftwarden retrain`` beside a running daemon) never changes
the folder, and reads consistent rows while the writer appends and compacts."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from driftwarden.retrain.labeled_store import LabeledStore


def _rows(first: int, n: int) -> list[dict]:
    return [
        {"prediction_id": f"p{i:06d}", "features": {"x": float(i)}, "label": i % 2, "timestamp": i}
        for i in range(first, first + n)
    ]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_read_only_leaves_the_writers_files_alone(tmp_path: Path) -> None:
    """A torn tail (the writer's append in progress), a compaction's temporary file and the
    segments a compaction replaced (before the writer deletes them) stay as they are; the
    reader sees the complete rows of the live segments only."""
    writer = LabeledStore(tmp_path, max_rows_per_model=100)
    writer.append("m", _rows(0, 130))  # over the bound with slack: compacted to 100
    writer.append("m", _rows(130, 10))
    folder = tmp_path / "m"
    live = sorted(folder.iterdir())
    # What a crash or a running writer leaves: a stale segment before the compacted one, a
    # compaction's temporary file, and half a line at the end.
    (folder / "seg-00000000.jsonl").write_bytes(b'{"prediction_id": "stale", "features": {}}\n')
    (folder / "seg-99999999.jsonl.tmp").write_bytes(b"half a compaction")
    with open(live[-1], "ab") as fh:
        fh.write(b'{"prediction_id": "p000140", "feat')
    before = _snapshot(folder)

    reader = LabeledStore(tmp_path, max_rows_per_model=100, read_only=True)
    rows = reader.rows("m")
    assert [r["prediction_id"] for r in rows] == [f"p{i:06d}" for i in range(30, 140)]
    assert reader.count("m") == 110
    assert list(reader.frame("m", last=3)["x"]) == [137.0, 138.0, 139.0]
    assert _snapshot(folder) == before

    with pytest.raises(PermissionError, match="read-only"):
        reader.append("m", _rows(500, 1))
    with pytest.raises(PermissionError, match="read-only"):
        reader.compact("m")
    assert _snapshot(folder) == before


def test_read_only_of_a_model_never_stored_is_empty_and_creates_nothing(tmp_path: Path) -> None:
    reader = LabeledStore(tmp_path / "labeled", read_only=True)
    assert reader.rows("churn") == [] and reader.count("churn") == 0
    assert len(reader.frame("churn")) == 0
    assert not (tmp_path / "labeled").exists()


def test_read_only_refuses_a_folder_it_would_have_to_rewrite(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    line = b'{"prediction_id": "a", "features": {"x": 1.0}, "label": 1}\n'
    (folder / "seg-00000001.jsonl").write_bytes(line + b"\n" + line)
    with pytest.raises(ValueError, match="read-only"):
        LabeledStore(tmp_path, read_only=True).rows("m")
    assert (folder / "seg-00000001.jsonl").read_bytes() == line + b"\n" + line


def test_read_only_reads_stay_consistent_while_the_writer_compacts(tmp_path: Path) -> None:
    """The writer (another store object, as another process would be) appends and compacts
    continually; every read of the reader is a run of consecutive ids ending at most at the
    newest written, without duplicates, and no read fails."""
    writer = LabeledStore(tmp_path, max_rows_per_model=400)
    writer.append("m", _rows(0, 50))
    done = threading.Event()
    written = [50]

    def write() -> None:
        while not done.is_set() and written[0] < 40_000:
            writer.append("m", _rows(written[0], 37), sync=False)
            written[0] += 37

    thread = threading.Thread(target=write)
    thread.start()
    reader = LabeledStore(tmp_path, max_rows_per_model=400, read_only=True)
    reads = 0
    try:
        while thread.is_alive() and reads < 300:
            reader._models.clear()  # a fresh reader each time, as each CLI run is
            assert reader.count("m") > 0  # indexing alone races with the compactions too
            reader._models.clear()
            ids = [int(r["prediction_id"][1:]) for r in reader.rows("m")]
            assert ids, "a read returned nothing"
            assert ids == list(range(ids[0], ids[0] + len(ids))), "not a consecutive run"
            assert ids[-1] < written[0] + 37
            reads += 1
    finally:
        done.set()
        thread.join()
    assert reads >= 20
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "m").iterdir())
    assert os.listdir(tmp_path / "m")
