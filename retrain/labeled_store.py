"""A durable, bounded store of labeled examples (predictions joined with their labels).

The daemon appends every joined example here; the retrain pipeline reads the recent ones as
a table. Per model the store is a folder of append-only JSONL segment files:

* an append writes whole lines, flushes and ``fsync``\\ s before returning, so an acknowledged
  row survives a crash — or, with ``sync=False``, leaves the ``fsync`` to the next
  :meth:`LabeledStore.sync` (the daemon syncs at each checkpoint, before the offsets that
  produced the rows are committed: a crash before it replays them, and replays are skipped by
  id); a torn last line (a crash mid-write) is cut off when the file is opened again;
* rows are keyed by ``prediction_id``: a row whose id is already stored is skipped, so a
  replay after a crash never duplicates rows;
* when a model holds more than ``max_rows_per_model`` rows (plus some slack, so compaction is
  not paid on every append), or rows older than ``max_age_s`` (event time, relative to the
  newest row), the newest rows are rewritten into one new segment (write to a temporary
  file, fsync, rename, fsync the folder) and the older segments are deleted. The new segment
  starts with a header naming the segments it replaces, so a crash between the rename and the
  deletions is repaired on the next open instead of doubling rows.

Evicted ids are remembered (up to ``max_rows_per_model`` of them, carried in the compaction
header) so a late replay of an evicted row is not stored again.
"""

from __future__ import annotations

import math
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import chain
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import structlog

__all__ = ["LabeledStore", "to_epoch_seconds"]

log = structlog.get_logger(__name__)

_SEGMENT_RE = re.compile(r"^seg-(\d{8})\.jsonl$")
_HEADER_KEY = "_driftwarden_compacted"
# Compact once the row count exceeds the bound by this fraction (amortises the rewrite).
_SLACK = 0.25
_MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


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


@dataclass
class _ModelState:
    """One model's in-memory view: its rows in append order and the segment being written."""

    directory: Path
    rows: OrderedDict[str, dict[str, Any]] = field(default_factory=OrderedDict)
    evicted: OrderedDict[str, None] = field(default_factory=OrderedDict)
    segment_no: int = 0
    newest_ts: float = -math.inf


class LabeledStore:
    """Durable, bounded, idempotent store of joined examples, one folder per model.

    A row is a dict with ``prediction_id`` (required), ``features`` (dict), ``label``, and
    optionally ``prediction`` (``{"label", "score", "value"}``), ``segment`` (dict),
    ``timestamp`` (epoch seconds or ISO-8601) and ``model_version``. Thread-safe: the daemon
    appends while a retrain worker reads.

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
        self.directory.mkdir(parents=True, exist_ok=True)

    # ---------------------------------------------------------------- public API

    def append(self, model: str, rows: Sequence[Mapping[str, Any]], *, sync: bool = True) -> int:
        """Store the rows not stored yet (by ``prediction_id``); returns how many were new.

        The rows are durable (fsync'ed) when this returns; with ``sync=False`` only once
        :meth:`sync` has run (they are written to the file, so readers see them at once).
        """
        with self._lock:
            state = self._state(model)
            fresh: list[dict[str, Any]] = []
            seen: set[str] = set()
            for i, raw in enumerate(rows):
                row = _normalise(raw, model, i)
                pid = row["prediction_id"]
                if pid in state.rows or pid in state.evicted or pid in seen:
                    continue
                seen.add(pid)
                fresh.append(row)
            if not fresh:
                return 0
            path = self._segment_path(state, state.segment_no)
            payload = b"".join(orjson.dumps(r) + b"\n" for r in fresh)
            with open(path, "ab") as fh:
                fh.write(payload)
                fh.flush()
                if sync:
                    os.fsync(fh.fileno())
                else:
                    self._unsynced.add(path)
            for r in fresh:
                state.rows[r["prediction_id"]] = r
                if r["timestamp"] is not None:
                    state.newest_ts = max(state.newest_ts, r["timestamp"])
            self._maybe_compact(model, state)
            return len(fresh)

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
        """The stored rows of ``model`` in append order (copies)."""
        with self._lock:
            return [dict(r) for r in self._state(model).rows.values()]

    def shared_rows(self, model: str) -> list[Mapping[str, Any]]:
        """:meth:`rows` without the copies: the stored row dicts themselves, for readers that
        only read them (the retrain snapshot). They must not be modified.

        The store never changes a row once stored (compaction and appends only add or drop
        whole rows), so the list is a consistent view even while appends go on. Copying 50 000
        dicts costs more than the copy itself: under Python's default GC thresholds the
        copies bring on a full garbage collection of the whole heap.
        """
        with self._lock:
            return list(self._state(model).rows.values())

    def count(self, model: str) -> int:
        """How many rows ``model`` holds."""
        with self._lock:
            return len(self._state(model).rows)

    def frame(self, model: str, last: int | None = None) -> pd.DataFrame:
        """The stored rows as a flat table, oldest first (``last``: only the newest N).

        Columns: one per feature (by name); one per segment key (by name, or
        ``segment.<key>`` where a feature has the same name); ``label``, ``score``,
        ``predicted`` (the predicted label), ``value``, ``timestamp`` (epoch seconds),
        ``prediction_id`` and ``model_version``.
        """
        rows = self.shared_rows(model)
        if last is not None:
            rows = rows[-last:] if last > 0 else []
        return flatten_rows(rows)

    def compact(self, model: str) -> None:
        """Apply the bounds now and rewrite the model's rows into one segment."""
        with self._lock:
            self._compact(model, self._state(model))

    # ---------------------------------------------------------------- internals

    def _model_dir(self, model: str) -> Path:
        if not _MODEL_NAME_RE.match(model):
            raise ValueError(
                f"model name {model!r} cannot name a store folder (letters, digits, '.', '_', "
                "'-' only)."
            )
        return self.directory / model

    @staticmethod
    def _segment_path(state: _ModelState, no: int) -> Path:
        return state.directory / f"seg-{no:08d}.jsonl"

    def _state(self, model: str) -> _ModelState:
        state = self._models.get(model)
        if state is None:
            state = self._load(model)
            self._models[model] = state
        return state

    def _load(self, model: str) -> _ModelState:
        directory = self._model_dir(model)
        directory.mkdir(parents=True, exist_ok=True)
        state = _ModelState(directory=directory)
        for tmp in directory.glob("*.tmp"):
            tmp.unlink()  # an unfinished compaction: its source segments are still there
        numbers = sorted(
            int(m.group(1)) for p in directory.iterdir() if (m := _SEGMENT_RE.match(p.name))
        )
        # A compacted segment replaces every segment before it; a crash may have left them.
        for no in reversed(numbers):
            header = _read_header(self._segment_path(state, no))
            if header is not None:
                for old in [n for n in numbers if n < no]:
                    self._segment_path(state, old).unlink(missing_ok=True)
                numbers = [n for n in numbers if n >= no]
                break
        for no in numbers:
            path = self._segment_path(state, no)
            for obj in _read_lines(path, repair=(no == numbers[-1])):
                if _HEADER_KEY in obj:
                    for pid in obj.get("evicted", []):
                        state.evicted[str(pid)] = None
                    continue
                pid = str(obj["prediction_id"])
                if pid in state.rows:
                    continue
                state.rows[pid] = obj
                if obj.get("timestamp") is not None:
                    state.newest_ts = max(state.newest_ts, float(obj["timestamp"]))
        state.segment_no = numbers[-1] if numbers else 1
        if len(state.rows) or numbers:
            log.debug(
                "labeled_store.loaded", model=model, rows=len(state.rows), segments=len(numbers)
            )
        return state

    def _over_bounds(self, state: _ModelState) -> bool:
        if len(state.rows) > self.max_rows_per_model * (1 + _SLACK):
            return True
        if self.max_age_s is not None and state.rows:
            oldest = next(iter(state.rows.values()))["timestamp"]
            # Append order is close to event order; compacting by age costs a rewrite, so
            # allow the same slack in time as in rows.
            horizon = state.newest_ts - self.max_age_s * (1 + _SLACK)
            if oldest is not None and oldest < horizon:
                return True
        return False

    def _maybe_compact(self, model: str, state: _ModelState) -> None:
        if self._over_bounds(state):
            self._compact(model, state)

    def _compact(self, model: str, state: _ModelState) -> None:
        keep = list(state.rows.values())
        if self.max_age_s is not None and math.isfinite(state.newest_ts):
            horizon = state.newest_ts - self.max_age_s
            keep = [r for r in keep if r["timestamp"] is None or r["timestamp"] >= horizon]
        keep = keep[-self.max_rows_per_model :]
        kept_ids = {r["prediction_id"] for r in keep}
        for pid in state.rows:
            if pid not in kept_ids:
                state.evicted[pid] = None
        while len(state.evicted) > self.max_rows_per_model:
            state.evicted.popitem(last=False)

        old_numbers = sorted(
            int(m.group(1)) for p in state.directory.iterdir() if (m := _SEGMENT_RE.match(p.name))
        )
        new_no = (old_numbers[-1] if old_numbers else state.segment_no) + 1
        final = self._segment_path(state, new_no)
        tmp = final.with_name(final.name + ".tmp")
        header = {_HEADER_KEY: True, "replaces_before": new_no, "evicted": list(state.evicted)}
        with open(tmp, "wb") as fh:
            fh.write(orjson.dumps(header) + b"\n")
            fh.write(b"".join(orjson.dumps(r) + b"\n" for r in keep))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        _fsync_dir(state.directory)
        for no in old_numbers:
            self._segment_path(state, no).unlink(missing_ok=True)
        _fsync_dir(state.directory)
        dropped = len(state.rows) - len(keep)
        state.rows = OrderedDict((r["prediction_id"], r) for r in keep)
        state.segment_no = new_no
        log.info("labeled_store.compacted", model=model, kept=len(keep), dropped=dropped)


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


def _read_header(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as fh:
            first = fh.readline()
    except FileNotFoundError:
        return None
    try:
        obj = orjson.loads(first)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) and obj.get(_HEADER_KEY) else None


def _read_lines(path: Path, *, repair: bool) -> list[dict[str, Any]]:
    """Parse a segment; a torn trailing line (crash mid-write) is dropped and, if ``repair``,
    cut from the file so the next append starts on a clean line."""
    data = path.read_bytes()
    out: list[dict[str, Any]] = []
    good_end = 0
    pos = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        if nl < 0:
            break  # no newline: the last write never finished
        line = data[pos:nl]
        if line.strip():
            try:
                out.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                break  # a torn write; nothing after it was acknowledged
        pos = nl + 1
        good_end = pos
    if good_end < len(data):
        log.warning("labeled_store.torn_tail", path=str(path), bytes=len(data) - good_end)
        if repair:
            with open(path, "r+b") as fh:
                fh.truncate(good_end)
                fh.flush()
                os.fsync(fh.fileno())
    return out


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
