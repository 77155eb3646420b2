"""A durable, bounded store of labeled examples (predictions joined with their labels).

The daemon appends every joined example here; the retrain pipeline reads the recent ones as
a table. Per model the store is a folder of append-only JSONL segment files, and the rows
live only there (a read parses them), so that memory does not grow with the rows kept, for
many models: it holds an index of numpy arrays, 24 bytes per row (the id's hash and the event
time in append order, the hash again in a sorted array) and 16 per remembered evicted id.

* an append writes whole lines, flushes and ``fsync``\\ s before returning, so an acknowledged
  row survives a crash — or, with ``sync=False``, leaves the ``fsync`` to the next
  :meth:`LabeledStore.sync` (the daemon syncs at each checkpoint, before the offsets that
  produced the rows are committed: a crash before it replays them, and replays are skipped by
  id); a torn last line (a crash mid-write) is cut off when the file is opened again;
* rows are keyed by ``prediction_id``: a row whose id is already stored is skipped, so a
  replay after a crash never duplicates rows. Ids are compared by a 64-bit hash (BLAKE2b of
  the UTF-8 id): among n ids some two collide with probability ~n²/2⁶⁵ (~3·10⁻¹⁰ for the
  ~110 000 ids a model at the default bound remembers), and a new id whose hash collides with
  a known one is skipped as a duplicate;
* row i of a model is the i-th line after the header across its segments in order, so a
  compaction copies the kept rows' lines without parsing them; a folder where that does not
  hold (blank lines, a duplicate id: not written by this store) is rewritten when opened;
* when a model holds more than ``max_rows_per_model`` rows (plus some slack, so compaction is
  not paid on every append), or rows older than ``max_age_s`` (event time, relative to the
  newest row), the newest rows are rewritten into one new segment (write to a temporary
  file, fsync, rename, fsync the folder) and the older segments are deleted. The new segment
  starts with a header naming the segments it replaces, so a crash between the rename and the
  deletions is repaired on the next open instead of doubling rows.

Evicted ids are remembered (up to ``max_rows_per_model`` of them, their hashes carried in the
compaction header; headers written before the hashes list the ids, and are still read) so a
late replay of an evicted row is not stored again.

A store opened ``read_only`` (another process's reader, e.g. ``driftwarden retrain`` beside a
running daemon) never changes the folder: the repairs above are the writer's, and done by a
reader they would cut the writer's append in progress or delete its compaction's temporary
file. It ignores a torn tail and the segments a compaction replaced, and when the writer
compacts while it reads (a segment it indexed is gone) it indexes the folder again.
"""

from __future__ import annotations

import base64
import math
import os
import re
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from hashlib import blake2b
from itertools import chain
from operator import itemgetter
from pathlib import Path
from typing import Any, BinaryIO

import msgspec
import numpy as np
import orjson
import pandas as pd
import structlog

__all__ = ["LabeledStore", "parse_lines", "to_epoch_seconds"]

log = structlog.get_logger(__name__)

_SEGMENT_RE = re.compile(r"^seg-(\d{8})\.jsonl$")
_HEADER_KEY = "_driftwarden_compacted"
# The header's evicted ids: base64 of their hashes (see _hash_ids) as little-endian uint64s.
_EVICTED_KEY = "evicted_blake2b64"
# Compact once the row count exceeds the bound by this fraction (amortises the rewrite).
_SLACK = 0.25
_MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
# The index's per-row arrays grow by this factor (amortised appends, little unused room).
_GROWTH = 1.25
# _IdSet merges its recent ids into the sorted bulk past max(this, 1/16 of the bulk).
_MERGE_MIN = 1024
# A read-only read indexes the folder again this often when the writer compacts meanwhile.
_READ_ATTEMPTS = 5
# The index arrays: id hashes, event times, evicted id hashes.
_INDEX_TYPES = (np.uint64, np.float64, np.uint64)


def to_epoch_seconds(value: Any) -> float:
    """Event time as epoch seconds from a number or an ISO-8601 string (``Z`` allowed)."""
    if isinstance(value, bool):
        raise ValueError(f"timestamp {value!r} is a boolean, not a time.")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError(f"timestamp {value!r} is not a finite number.")
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        return datetime.fromisoformat(text).timestamp()
    raise ValueError(f"timestamp {value!r} is neither a number nor an ISO-8601 string.")


class _Key(msgspec.Struct, gc=False):
    """What the index needs of a stored line (the decoder skips the rest unbuilt)."""

    prediction_id: str
    timestamp: float | None = None


_KEYS = msgspec.json.Decoder(_Key)


class _StoredRow(msgspec.Struct, gc=False, forbid_unknown_fields=True):
    """A stored line as :func:`_normalise` makes it (what :meth:`LabeledStore.append_stored`
    takes from another store); only the id and the time are kept of it."""

    prediction_id: str
    features: dict[str, Any]
    prediction: dict[str, Any]
    label: Any
    segment: dict[str, Any]
    timestamp: float | None
    model_version: Any


_STORED = msgspec.json.Decoder(_StoredRow)
# Parses the rows a read returns: as fast as orjson line by line and no split of the data.
_ROWS = msgspec.json.Decoder()


class _Column:
    """A numpy vector with amortised O(1) appends."""

    __slots__ = ("_buf", "size")

    def __init__(self, values: np.ndarray) -> None:
        self._buf = values
        self.size = len(values)

    @property
    def values(self) -> np.ndarray:
        return self._buf[: self.size]

    @property
    def nbytes(self) -> int:
        return self._buf.nbytes

    def extend(self, new: np.ndarray) -> None:
        end = self.size + len(new)
        if end > len(self._buf):
            grown = np.empty(max(end, int(len(self._buf) * _GROWTH), 64), self._buf.dtype)
            grown[: self.size] = self.values
            self._buf = grown
        self._buf[self.size : end] = new
        self.size = end


class _IdSet:
    """A set of id hashes: a sorted array, plus a small sorted array of the latest additions
    merged into it once it holds a sixteenth as many (each add stays cheap, each id is copied
    a bounded number of times on average)."""

    __slots__ = ("_bulk", "_recent")

    def __init__(self, ids: np.ndarray) -> None:
        self._bulk = np.sort(ids)
        self._recent = np.empty(0, np.uint64)

    @property
    def nbytes(self) -> int:
        return self._bulk.nbytes + self._recent.nbytes

    def contains(self, ids: np.ndarray) -> np.ndarray:
        return _in_sorted(self._bulk, ids) | _in_sorted(self._recent, ids)

    def add(self, ids: np.ndarray) -> None:
        # A sorted run and a short one: the stable sort (timsort) merges them in linear time.
        self._recent = np.sort(np.concatenate([self._recent, ids]), kind="stable")
        if len(self._recent) > max(_MERGE_MIN, len(self._bulk) >> 4):
            self._bulk = np.sort(np.concatenate([self._bulk, self._recent]), kind="stable")
            self._recent = np.empty(0, np.uint64)


def _in_sorted(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Which of ``ids`` the sorted array ``sorted_ids`` holds."""
    if not len(sorted_ids):
        return np.zeros(len(ids), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    return sorted_ids[pos] == ids


@dataclass
class _Segment:
    """A segment file: one row per line from ``start`` (after a compaction header) to ``end``
    (what the store wrote and indexed; an append in progress writes past it)."""

    no: int
    path: Path
    start: int = 0
    end: int = 0
    rows: int = 0


class _ModelState:
    """One model's index: per row, in append order, its id's hash and its event time (NaN:
    none); every id stored or evicted (the membership test of an append); the evicted ids,
    oldest first; the segments, the last one being written."""

    def __init__(
        self,
        directory: Path,
        segments: list[_Segment],
        hashes: np.ndarray,
        stamps: np.ndarray,
        evicted: np.ndarray,
    ) -> None:
        self.directory = directory
        self.segments = segments
        self.reset(hashes, stamps, evicted)
        stamped = stamps[~np.isnan(stamps)]
        self.newest_ts = float(stamped.max()) if len(stamped) else -math.inf

    def reset(self, hashes: np.ndarray, stamps: np.ndarray, evicted: np.ndarray) -> None:
        """Index these rows (a compaction's kept ones) and evicted ids."""
        self.hashes = _Column(hashes)
        self.stamps = _Column(stamps)
        self.evicted = evicted
        self.known = _IdSet(np.concatenate([hashes, evicted]))

    @property
    def count(self) -> int:
        return self.hashes.size

    @property
    def nbytes(self) -> int:
        """Memory held by the index arrays."""
        return self.hashes.nbytes + self.stamps.nbytes + self.known.nbytes + self.evicted.nbytes


class LabeledStore:
    """Durable, bounded, idempotent store of joined examples, one folder per model.

    A row is a dict with ``prediction_id`` (required), ``features`` (dict), ``label``, and
    optionally ``prediction`` (``{"label", "score", "value"}``), ``segment`` (dict),
    ``timestamp`` (epoch seconds or ISO-8601) and ``model_version``. Rows are read back from
    their JSON lines: a value JSON lacks comes back as orjson wrote it (a tuple as a list, NaN
    as None, a datetime as a string). Thread-safe: the daemon appends while a retrain worker
    reads (a read parses outside the lock).

    >>> import tempfile
    >>> store = LabeledStore(tempfile.mkdtemp(), max_rows_per_model=100)
    >>> row = {"prediction_id": "p1", "features": {"x": 1.0}, "label": 1,
    ...        "prediction": {"score": 0.9}, "segment": {"tier": "a"}, "timestamp": 10}
    >>> store.append("churn", [row, row])
    1
    >>> store.frame("churn")[["x", "tier", "label", "score"]].to_dict("records")
    [{'x': 1.0, 'tier': 'a', 'label': 1, 'score': 0.9}]
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        max_rows_per_model: int = 50_000,
        max_age_s: float | None = None,
        *,
        read_only: bool = False,
    ) -> None:
        if max_rows_per_model < 1:
            raise ValueError(f"max_rows_per_model must be at least 1, got {max_rows_per_model}.")
        if max_age_s is not None and not max_age_s > 0:
            raise ValueError(f"max_age_s must be positive or None, got {max_age_s}.")
        self.directory = Path(directory)
        self.max_rows_per_model = int(max_rows_per_model)
        self.max_age_s = max_age_s
        self._lock = threading.RLock()
        self._models: dict[str, _ModelState] = {}
        self._unsynced: set[Path] = set()
        self.read_only = read_only
        if not read_only:
            self.directory.mkdir(parents=True, exist_ok=True)

    # ---------------------------------------------------------------- public API

    def append(
        self,
        model: str,
        rows: Sequence[Mapping[str, Any]],
        *,
        sync: bool = True,
        written: list[bytes] | None = None,
    ) -> int:
        """Store the rows not stored yet (by ``prediction_id``); returns how many were new.

        The rows are durable (fsync'ed) when this returns; with ``sync=False`` only once
        :meth:`sync` has run (they are written to the file, so readers see them at once).
        ``written`` gets the stored form (JSON lines) of every row given: of the new rows as
        appended, and of the rows stored before (a replay) as they would be.
        """
        self._writable()
        with self._lock:
            state = self._state(model)
            normalised = [_normalise(raw, model, i) for i, raw in enumerate(rows)]
            hashes = _hash_ids(r["prediction_id"] for r in normalised)
            _, first = np.unique(hashes, return_index=True)  # each id's first row
            new = np.sort(first[~state.known.contains(hashes[first])])
            if written is not None and len(new) < len(normalised):
                # Rows stored before (a replay after a crash): handed on again all the same,
                # since the crash may have come before they were handed on.
                seen = np.ones(len(normalised), dtype=bool)
                seen[new] = False
                written.append(
                    b"".join(orjson.dumps(normalised[i]) + b"\n" for i in np.flatnonzero(seen))
                )
            if not len(new):
                return 0
            fresh = [normalised[i] for i in new.tolist()]
            payload = b"".join(orjson.dumps(r) + b"\n" for r in fresh)
            stamps = [r["timestamp"] for r in fresh]
            self._write(model, state, payload, hashes[new], stamps, sync=sync)
            if written is not None:
                written.append(payload)
            return len(fresh)

    def append_stored(self, model: str, data: bytes, *, sync: bool = True) -> int:
        """:meth:`append` of rows already in the stored form — the JSON lines another store
        wrote (a handed-over partition's examples) — without parsing them into rows and
        writing them out again: each line is type-checked in one C pass, the lines of the
        rows not stored yet are appended as they are. Raises ``ValueError`` naming the model
        when the lines are not that form (nothing is stored then)."""
        self._writable()
        lines = data.split(b"\n")
        if lines and not lines[-1]:
            lines.pop()
        if not lines:
            return 0
        try:
            rows = _STORED.decode_lines(data)
        except msgspec.DecodeError as exc:
            raise ValueError(
                f"labeled rows for model {model!r} are not stored rows: {exc}"
            ) from None
        if len(rows) != len(lines):  # a blank line: not what a store writes
            raise ValueError(f"labeled rows for model {model!r} are not one row per line.")
        with self._lock:
            state = self._state(model)
            hashes = _hash_ids(r.prediction_id for r in rows)
            _, first = np.unique(hashes, return_index=True)
            new = np.sort(first[~state.known.contains(hashes[first])])
            if not len(new):
                return 0
            keep = new.tolist()
            payload = b"".join([lines[i] + b"\n" for i in keep])
            stamps = [rows[i].timestamp for i in keep]
            self._write(model, state, payload, hashes[new], stamps, sync=sync)
            return len(keep)

    def _write(
        self,
        model: str,
        state: _ModelState,
        payload: bytes,
        hashes: np.ndarray,
        stamps: list[float | None],
        *,
        sync: bool,
    ) -> None:
        """Append new rows' lines to the model's last segment and index them (lock held)."""
        segment = state.segments[-1]
        try:
            with open(segment.path, "ab") as fh:
                fh.write(payload)
                fh.flush()
                if sync:
                    os.fsync(fh.fileno())
                else:
                    self._unsynced.add(segment.path)
        except BaseException:
            # Part of the payload may be in the file: index the folder again, as after
            # a crash (the torn tail is cut), before the next use.
            del self._models[model]
            raise
        segment.end += len(payload)
        segment.rows += len(stamps)
        state.hashes.extend(hashes)
        state.stamps.extend(np.array([math.nan if t is None else t for t in stamps]))
        state.known.add(hashes)
        stamped = [t for t in stamps if t is not None]
        if stamped:
            state.newest_ts = max(state.newest_ts, max(stamped))
        self._maybe_compact(model, state)

    def sync(self) -> int:
        """``fsync`` every segment appended to with ``sync=False`` since the last call."""
        with self._lock:
            paths, self._unsynced = self._unsynced, set()
            n = 0
            for path in paths:
                try:
                    fd = os.open(path, os.O_RDONLY)
                except FileNotFoundError:  # compacted meanwhile: the new segment was fsync'ed
                    continue
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                n += 1
            return n

    def rows(self, model: str) -> list[dict[str, Any]]:
        """The stored rows of ``model`` in append order (parsed from disk: the caller's own)."""
        return parse_lines(self._read(model))

    def shared_rows(self, model: str) -> list[Mapping[str, Any]]:
        """:meth:`rows`, under the name read-only readers (the retrain snapshot) call.

        The rows used to be shared with the store's memory; the store no longer keeps them,
        so these are freshly parsed dicts too.
        """
        return parse_lines(self._read(model))

    def count(self, model: str) -> int:
        """How many rows ``model`` holds."""
        with self._lock:
            return self._state(model).count

    def frame(self, model: str, last: int | None = None) -> pd.DataFrame:
        """The stored rows as a flat table, oldest first (``last``: only the newest N, the
        older ones are not parsed).

        Columns: one per feature (by name); one per segment key (by name, or
        ``segment.<key>`` where a feature has the same name); ``label``, ``score``,
        ``predicted`` (the predicted label), ``value``, ``timestamp`` (epoch seconds),
        ``prediction_id`` and ``model_version``.
        """
        return flatten_rows(parse_lines(self._read(model, last)))

    def compact(self, model: str) -> None:
        """Apply the bounds now and rewrite the model's rows into one segment."""
        self._writable()
        with self._lock:
            self._compact(model, self._state(model))

    # ---------------------------------------------------------------- internals

    def _writable(self) -> None:
        if self.read_only:
            raise PermissionError(f"labeled store {self.directory} is open read-only.")

    def _model_dir(self, model: str) -> Path:
        if not _MODEL_NAME_RE.match(model):
            raise ValueError(
                f"model name {model!r} cannot name a store folder (letters, digits, '.', '_', "
                "'-' only)."
            )
        return self.directory / model

    def _state(self, model: str) -> _ModelState:
        state = self._models.get(model)
        if state is None:
            for attempt in range(_READ_ATTEMPTS):
                try:
                    state = self._load(model)
                    break
                except FileNotFoundError:
                    # read-only: the writer compacted a segment away while it was indexed
                    if not self.read_only or attempt == _READ_ATTEMPTS - 1:
                        raise
            assert state is not None
            self._models[model] = state
        return state

    def raw(self, model: str, last: int | None = None) -> bytes:
        """The stored rows of ``model`` (the newest ``last``) as they are on disk: one JSON
        object per line, oldest first, each line ending in a newline (no compaction header).
        :func:`parse_lines` makes them :meth:`rows`; a columnar reader can take them whole."""
        return self._read(model, last)

    def _read(self, model: str, last: int | None = None) -> bytes:
        """The stored rows (the newest ``last``) read from the segments, unparsed.

        Under the lock the segments are only opened and their extents noted: appends write
        past those extents, and a compaction writes a new file and unlinks the old ones (an
        open file stays readable), so reading and parsing run outside the lock while the
        appends go on. Read-only, the writer is another process: a segment it compacted away
        since the folder was indexed means indexing it again (a few times, then the error).
        """
        for attempt in range(_READ_ATTEMPTS):
            try:
                return self._read_once(model, last)
            except FileNotFoundError:
                if not self.read_only or attempt == _READ_ATTEMPTS - 1:
                    raise
                with self._lock:
                    self._models.pop(model, None)
        raise AssertionError("unreachable")  # pragma: no cover

    def _read_once(self, model: str, last: int | None) -> bytes:
        with ExitStack() as files:
            parts: list[tuple[BinaryIO, int, int, int, int]] = []  # file, start, end, rows, skip
            with self._lock:
                state = self._state(model)
                wanted = state.count if last is None else max(0, min(last, state.count))
                for seg in reversed(state.segments):
                    if wanted <= 0:
                        break
                    if seg.rows:
                        fh = files.enter_context(open(seg.path, "rb"))
                        take = min(seg.rows, wanted)
                        parts.append((fh, seg.start, seg.end, seg.rows, seg.rows - take))
                        wanted -= take
            out: list[bytes] = []
            for file, start, end, rows, skip in reversed(parts):
                file.seek(start)
                data = file.read(end - start)
                out.append(data[_line_start(data, skip, rows) :] if skip else data)
            return out[0] if len(out) == 1 else b"".join(out)

    def _load(self, model: str) -> _ModelState:
        directory = self._model_dir(model)
        if self.read_only:
            if not directory.is_dir():
                return _ModelState(directory, [], *(np.empty(0, t) for t in _INDEX_TYPES))
        else:
            directory.mkdir(parents=True, exist_ok=True)
            for tmp in directory.glob("*.tmp"):
                tmp.unlink()  # an unfinished compaction: its source segments are still there
        numbers = _segment_numbers(directory)
        # A compacted segment replaces every segment before it; a crash may have left them.
        for no in reversed(numbers):
            if _read_header(directory / _segment_name(no)) is not None:
                if not self.read_only:
                    for old in [n for n in numbers if n < no]:
                        (directory / _segment_name(old)).unlink(missing_ok=True)
                numbers = [n for n in numbers if n >= no]
                break
        segments: list[_Segment] = []
        scans: list[tuple[bytes, _Scan]] = []
        for no in numbers:
            path = directory / _segment_name(no)
            data = path.read_bytes()
            scan = _scan(data, path)
            if scan.end < len(data) and not self.read_only:  # read-only: the writer's append
                log.warning("labeled_store.torn_tail", path=str(path), bytes=len(data) - scan.end)
                if no == numbers[-1] and not self.read_only:
                    # cut, so the next append starts on a clean line
                    with open(path, "r+b") as fh:
                        fh.truncate(scan.end)
                        fh.flush()
                        os.fsync(fh.fileno())
            segments.append(_Segment(no, path, scan.start, scan.end, len(scan.ids)))
            scans.append((data, scan))
        if not segments:
            segments.append(_Segment(1, directory / _segment_name(1)))
        hashes = _hash_ids(chain.from_iterable(s.ids for _, s in scans))
        stamps = np.array([t for _, s in scans for t in s.stamps], dtype=np.float64)
        evicted = np.concatenate(
            [np.empty(0, np.uint64), *(e for _, s in scans for e in s.evicted)]
        )
        _, first = np.unique(hashes, return_index=True)
        unclean = len(first) < len(hashes) or any(s.lines is not None for _, s in scans)
        keep = np.sort(first)  # a duplicate id: its first row, as before
        state = _ModelState(directory, segments, hashes[keep], stamps[keep], evicted)
        if unclean and self.read_only:
            raise ValueError(
                f"labeled store folder {directory} holds lines that are not one row each (blank "
                "lines or a repeated prediction_id); opened read-only it cannot be rewritten: "
                "the daemon rewrites it when it opens it."
            )
        if unclean:
            lines = [
                line
                for data, s in scans
                for line in (
                    data[s.start : s.end].split(b"\n")[:-1] if s.lines is None else s.lines
                )
            ]
            self._rewrite(state, (lines[i] + b"\n" for i in keep.tolist()), len(keep), evicted)
            log.warning("labeled_store.rewritten", model=model, rows=state.count)
        if state.count or numbers:
            log.debug("labeled_store.loaded", model=model, rows=state.count, segments=len(numbers))
        return state

    def _over_bounds(self, state: _ModelState) -> bool:
        if state.count > self.max_rows_per_model * (1 + _SLACK):
            return True
        if self.max_age_s is not None and state.count:
            oldest = float(state.stamps.values[0])
            # Append order is close to event order; compacting by age costs a rewrite, so
            # allow the same slack in time as in rows.
            horizon = state.newest_ts - self.max_age_s * (1 + _SLACK)
            if oldest < horizon:  # False for NaN (no timestamp)
                return True
        return False

    def _maybe_compact(self, model: str, state: _ModelState) -> None:
        if self._over_bounds(state):
            self._compact(model, state)

    def _compact(self, model: str, state: _ModelState) -> None:
        hashes, stamps = state.hashes.values, state.stamps.values
        keep = np.arange(state.count)
        if self.max_age_s is not None and math.isfinite(state.newest_ts):
            horizon = state.newest_ts - self.max_age_s
            keep = np.flatnonzero(np.isnan(stamps) | (stamps >= horizon))
        keep = keep[-self.max_rows_per_model :]
        dropped = np.ones(state.count, dtype=bool)
        dropped[keep] = False
        evicted = np.concatenate([state.evicted, hashes[dropped]])
        evicted = evicted[-self.max_rows_per_model :].copy()
        try:
            self._rewrite(state, _kept_lines(state.segments, keep), len(keep), evicted)
        except BaseException:
            del self._models[model]  # the folder may be half rewritten: index it again
            raise
        n_dropped = state.count - len(keep)
        state.reset(hashes[keep], stamps[keep], evicted)
        log.info("labeled_store.compacted", model=model, kept=len(keep), dropped=n_dropped)

    def _rewrite(
        self,
        state: _ModelState,
        lines: Iterable[bytes | memoryview],
        rows: int,
        evicted: np.ndarray,
    ) -> None:
        """Replace the model's segments by one holding ``lines`` (``rows`` rows, newlines
        included) after a header that names the segments it replaces and carries the evicted
        ids (temporary file, fsync, rename, fsync the folder, then delete the old segments)."""
        directory = state.directory
        old_numbers = _segment_numbers(directory)
        new_no = (old_numbers[-1] if old_numbers else state.segments[-1].no) + 1
        final = directory / _segment_name(new_no)
        tmp = final.with_name(final.name + ".tmp")
        header = orjson.dumps(
            {
                _HEADER_KEY: True,
                "replaces_before": new_no,
                _EVICTED_KEY: base64.b64encode(evicted.astype("<u8").tobytes()).decode(),
            }
        )
        with open(tmp, "wb") as fh:
            fh.write(header + b"\n")
            for chunk in lines:
                fh.write(chunk)
            end = fh.tell()
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        _fsync_dir(directory)
        for no in old_numbers:
            (directory / _segment_name(no)).unlink(missing_ok=True)
        _fsync_dir(directory)
        state.segments = [_Segment(new_no, final, len(header) + 1, end, rows)]


def _normalise(raw: Mapping[str, Any], model: str, index: int) -> dict[str, Any]:
    """The stored form of one row: plain JSON, timestamp as epoch seconds."""
    pid = raw.get("prediction_id")
    if pid is None or pid == "":
        raise ValueError(f"row {index} for model {model!r} has no prediction_id.")
    features = raw.get("features") or {}
    if not isinstance(features, Mapping):
        raise ValueError(f"row {index} for model {model!r}: 'features' is not an object.")
    ts = raw.get("timestamp")
    return {
        "prediction_id": str(pid),
        "features": dict(features),
        "prediction": dict(raw.get("prediction") or {}),
        "label": raw.get("label"),
        "segment": dict(raw.get("segment") or {}),
        "timestamp": None if ts is None else to_epoch_seconds(ts),
        "model_version": raw.get("model_version"),
    }


def parse_lines(data: bytes) -> list[Any]:
    """The rows of :meth:`LabeledStore.raw`'s lines, parsed (fresh dicts: the caller's own)."""
    return _ROWS.decode_lines(data)


try:  # what pandas does to a list column once it is an object array (see frame_of_columns)
    from pandas.core.dtypes.cast import maybe_convert_platform as _convert_platform
except ImportError:  # pragma: no cover - a pandas without it: lists, pandas' own way
    _convert_platform = None

_META = ("label", "score", "predicted", "value", "timestamp", "prediction_id", "model_version")


def flatten_rows(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Flatten stored rows into a table (see :meth:`LabeledStore.frame` for the columns).

    Column by column: a nested key's values are gathered in C (``itemgetter``) when every
    dict holds every key, else with one comprehension per column. Names that
    would collide (a feature called like a meta column, two segments on one ``segment.<k>``)
    take :func:`_flatten_rows_loop`, the row-by-row original, and its outcome.
    """
    rows = rows if isinstance(rows, list) else list(rows)
    columns = flatten_columns(rows)
    return _flatten_rows_loop(rows) if columns is None else frame_of_columns(columns)


def flatten_columns(rows: list[Mapping[str, Any]]) -> dict[str, list[Any]] | None:
    """:func:`flatten_rows`' columns as lists, before they become a frame (see
    :func:`frame_of_columns`); ``None`` when names collide (only the row-by-row original
    knows what to do then)."""
    feats = [r.get("features") or {} for r in rows]
    segs = [r.get("segment") or {} for r in rows]
    feature_names = list(dict.fromkeys(chain.from_iterable(feats)))
    segment_names = list(dict.fromkeys(chain.from_iterable(segs)))
    reserved = set(feature_names).union(_META)
    seg_cols = [f"segment.{k}" if k in reserved else k for k in segment_names]
    names = [*feature_names, *seg_cols, *_META]
    if len(set(names)) != len(names):
        return None
    preds = [r.get("prediction") or {} for r in rows]
    columns = dict(zip(feature_names, _transpose(feats, feature_names), strict=True))
    columns.update(zip(seg_cols, _transpose(segs, segment_names), strict=True))
    columns["label"] = [r.get("label") for r in rows]
    columns["score"] = [p.get("score") for p in preds]
    columns["predicted"] = [p.get("label") for p in preds]
    columns["value"] = [p.get("value") for p in preds]
    columns["timestamp"] = [r.get("timestamp") for r in rows]
    columns["prediction_id"] = [r.get("prediction_id") for r in rows]
    columns["model_version"] = [r.get("model_version") for r in rows]
    return columns


def _transpose(dicts: list[Mapping[str, Any]], keys: list[str]) -> list[list[Any]]:
    """``[[d.get(k) for d in dicts] for k in keys]``; ``keys`` holds every key of ``dicts``.

    Per key, not with ``zip(*rows)``: that would allocate a tuple per row, and on a heap
    holding the store's rows each allocation burst costs a garbage collection pass.
    """
    n = len(dicts)
    if n and sum(map(len, dicts)) == n * len(keys):
        # Each dict's keys are among ``keys`` and the counts add up: each has all of them.
        return [list(map(itemgetter(k), dicts)) for k in keys]
    return [[d.get(k) for d in dicts] for k in keys]


def frame_of_columns(columns: dict[str, list[Any]]) -> pd.DataFrame:
    """``pd.DataFrame(columns)`` with the numeric meta columns (those present) as float64.

    pandas turns each list into an object array one item at a time in Python and then infers
    its dtype (``maybe_convert_platform``); ``np.fromiter`` makes the same object array in C
    and the same function infers the same dtype.
    """
    n = len(next(iter(columns.values()), ()))
    if n and _convert_platform is not None and all(len(v) == n for v in columns.values()):
        columns = {
            k: _convert_platform(np.fromiter(v, dtype=object, count=n)) for k, v in columns.items()
        }
    frame = pd.DataFrame(columns)
    for col in ("score", "value", "timestamp"):
        if col in columns:
            frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
    return frame


def _flatten_rows_loop(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Row by row (the original :func:`flatten_rows`; it handles names that collide)."""
    rows = list(rows)
    feature_names = list(dict.fromkeys(k for r in rows for k in (r.get("features") or {})))
    segment_names = list(dict.fromkeys(k for r in rows for k in (r.get("segment") or {})))
    reserved = set(feature_names) | {
        "label",
        "score",
        "predicted",
        "value",
        "timestamp",
        "prediction_id",
        "model_version",
    }
    seg_cols = {k: (f"segment.{k}" if k in reserved else k) for k in segment_names}
    columns: dict[str, list[Any]] = {k: [] for k in feature_names}
    columns.update({seg_cols[k]: [] for k in segment_names})
    for extra in ("label", "score", "predicted", "value", "timestamp", "prediction_id"):
        columns[extra] = []
    columns["model_version"] = []
    for r in rows:
        feats = r.get("features") or {}
        segs = r.get("segment") or {}
        pred = r.get("prediction") or {}
        for k in feature_names:
            columns[k].append(feats.get(k))
        for k in segment_names:
            columns[seg_cols[k]].append(segs.get(k))
        columns["label"].append(r.get("label"))
        columns["score"].append(pred.get("score"))
        columns["predicted"].append(pred.get("label"))
        columns["value"].append(pred.get("value"))
        columns["timestamp"].append(r.get("timestamp"))
        columns["prediction_id"].append(r.get("prediction_id"))
        columns["model_version"].append(r.get("model_version"))
    frame = pd.DataFrame(columns)
    for col in ("score", "value", "timestamp"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
    return frame


def _segment_name(no: int) -> str:
    return f"seg-{no:08d}.jsonl"


def _segment_numbers(directory: Path) -> list[int]:
    return sorted(int(m.group(1)) for p in directory.iterdir() if (m := _SEGMENT_RE.match(p.name)))


def _hash_ids(ids: Iterable[str]) -> np.ndarray:
    """Each id's 64-bit hash: BLAKE2b-64 of its UTF-8 bytes, little-endian — the same in every
    process, as the hashes of evicted ids are persisted."""
    digests = b"".join(
        blake2b(i.encode("utf-8", "surrogatepass"), digest_size=8).digest() for i in ids
    )
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64)


def _header_of(line: bytes) -> dict[str, Any] | None:
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) and obj.get(_HEADER_KEY) else None


def _read_header(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as fh:
            return _header_of(fh.readline())
    except FileNotFoundError:
        return None


def _header_evicted(header: Mapping[str, Any]) -> np.ndarray:
    """The hashes of the evicted ids a compaction header carries (older headers list ids)."""
    listed = _hash_ids(str(pid) for pid in header.get("evicted", []))
    hashed = np.frombuffer(base64.b64decode(header.get(_EVICTED_KEY, "")), dtype="<u8")
    return np.concatenate([listed, hashed.astype(np.uint64)])


@dataclass
class _Scan:
    """A segment file as indexed on open: its rows' ids and event times (NaN: none), where
    its rows start (after a header) and end (after the last complete line), the evicted ids
    of its header(s), and each row's line when rows and lines do not map one to one."""

    start: int
    end: int
    ids: list[str]
    stamps: list[float]
    evicted: list[np.ndarray]
    lines: list[bytes] | None


def _scan(data: bytes, path: Path | None = None) -> _Scan:
    """Index a segment's data. Usually in one typed pass that builds only each line's id and
    time; else line by line as the original reader did: a blank line or a header is no row,
    unparseable lines at the end are a torn write (nothing after them was acknowledged), and
    an unparseable line with rows after it is damage: it is left out (logged), not the rows
    after it."""
    first_nl = data.find(b"\n")
    header = _header_of(data[:first_nl]) if first_nl >= 0 else None
    start = first_nl + 1 if header is not None else 0
    evicted = [] if header is None else [_header_evicted(header)]
    end = data.rfind(b"\n") + 1
    try:
        keys = _KEYS.decode_lines(memoryview(data)[start:end])
    except msgspec.DecodeError:  # a torn or foreign line: see below
        keys = None
    if keys is not None and len(keys) == data.count(b"\n", start, end):
        ids = [k.prediction_id for k in keys]
        stamps = [math.nan if k.timestamp is None else k.timestamp for k in keys]
        return _Scan(start, end, ids, stamps, evicted, None)
    ids, stamps, lines = [], [], []
    pos = good_end = start
    damaged: list[int] = []  # offsets of unparseable lines (damage if rows follow them)
    while (nl := data.find(b"\n", pos)) >= 0:
        line = data[pos:nl]
        if line.strip():
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                damaged.append(pos)
                pos = nl + 1
                continue
            if _HEADER_KEY in obj:
                evicted.append(_header_evicted(obj))
            else:
                ids.append(str(obj["prediction_id"]))
                ts = obj.get("timestamp")
                stamps.append(math.nan if ts is None else float(ts))
                lines.append(line)
        pos = good_end = nl + 1
    skipped = [at for at in damaged if at < good_end]
    if skipped:
        log.warning(
            "labeled_store.damaged_lines",
            path=str(path),
            lines=len(skipped),
            offsets=skipped[:10],
            note="unreadable lines with rows after them are left out; the rows are kept",
        )
    one_to_one = len(lines) == data.count(b"\n", start, good_end)
    return _Scan(start, good_end, ids, stamps, evicted, None if one_to_one else lines)


def _kept_lines(segments: list[_Segment], keep: np.ndarray) -> Iterator[memoryview]:
    """The lines of the rows ``keep`` (indices in append order, ascending) as slices of the
    segment files' bytes, one slice per run of consecutive rows: a compaction copies them
    without parsing or splitting them into a bytes object each."""
    first = 0
    for seg in segments:
        local = keep[(keep >= first) & (keep < first + seg.rows)] - first
        first += seg.rows
        if not len(local):
            continue
        with open(seg.path, "rb") as fh:
            fh.seek(seg.start)
            data = fh.read(seg.end - seg.start)
        ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == ord("\n")) + 1
        starts = np.concatenate([[0], ends[:-1]])
        cut = np.flatnonzero(np.diff(local) != 1) + 1  # where a run of rows breaks
        run_first = local[np.concatenate([[0], cut])].tolist()
        run_last = local[np.concatenate([cut - 1, [len(local) - 1]])].tolist()
        view = memoryview(data)
        for a, b in zip(run_first, run_last, strict=True):
            yield view[starts[a] : ends[b]]


def _line_start(data: bytes, k: int, lines: int) -> int:
    """Where line ``k`` of ``data`` (``lines`` newline-terminated lines) starts, counted from
    the nearer end."""
    pos = 0
    if k <= lines - k:
        for _ in range(k):
            pos = data.index(b"\n", pos) + 1
        return pos
    pos = len(data)
    for _ in range(lines - k):
        pos = data.rindex(b"\n", 0, pos - 1) + 1
    return pos


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
