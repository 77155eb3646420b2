"""A retrain snapshot's recent rows read column by column, without a Python dict per row.

The labeled store keeps rows as JSON lines. Parsed into dicts and transposed, 50 000 rows
cost a retrain ~0.26 s before it trains (the recent table and the data gate's batch, both
built from the dicts). pyarrow's JSON reader (pyarrow comes with MLflow) parses the same
lines into typed columns in C++, in a fraction of that. :func:`recent_columns` builds from its
columns exactly what the dict route builds — the table's columns with the dtypes pandas would
infer (:func:`~driftwarden.retrain.labeled_store.flatten_columns` then
:func:`~driftwarden.retrain.labeled_store.frame_of_columns`) and the
:meth:`~driftwarden.detectors.batch.Batch.from_records` batch — and returns ``None`` whenever
it cannot prove the result the same, so the caller takes the dict route:

* a column arrow cannot type (a feature that is a number in one row and a string in another,
  an object, a list, a number beyond float64) fails the read;
* a JSON ``null`` and a missing key both come out of arrow as null: each row holding a null is
  parsed on its own to tell them apart (the data gate counts them separately);
* the columns' order is the order keys are first seen (as the dict route), read from the
  first rows parsed on their own until every key has been seen;
* a float column holding an integral value may have held a JSON integer (arrow makes
  ``[1, 2.5]`` all floats): where Python types survive (labels, the predicted label, model
  versions as objects) or the key form differs (beyond 2**53) that is the dict route's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import numpy as np

from driftwarden.detectors.batch import Batch, FeatureColumn
from driftwarden.detectors.stats import value_key

from .labeled_store import _line_start

__all__ = ["recent_columns"]

_TOP = ("prediction_id", "features", "prediction", "label", "segment", "timestamp", "model_version")
_META = ("label", "score", "predicted", "value", "timestamp", "prediction_id", "model_version")
# Rows parsed one by one to learn the keys' first-seen order before the dict route is cheaper.
_MAX_ORDER_ROWS = 256
# Past this share of rows holding a null (each parsed on its own) the dict route is cheaper.
_MAX_NULL_ROW_SHARE = 0.25
_LINE = msgspec.json.Decoder()
# A row this close to either end is found by walking the lines, not by indexing them all.
_NEAR_END = 512


class _Unsupported(Exception):
    """The columns cannot be proven to equal the dict route's: take that route."""


def recent_columns(data: bytes, recent: int | None) -> tuple[dict[str, np.ndarray], Batch] | None:
    """The labeled rows of ``data`` (the store's lines) as the recent table's columns and the
    data gate's batch, or ``None`` when only the dict route can build them exactly.

    Rows without a label are dropped, ``recent`` keeps the newest N (none when ≤ 0), and the
    rows are put in event-time order (stable; rows without a time last) when they are not in
    it. The columns are :func:`~driftwarden.retrain.labeled_store.flatten_columns`' (names
    and order) as the arrays :func:`~driftwarden.retrain.labeled_store.frame_of_columns`
    makes of them (``score``, ``value`` and ``timestamp`` float64).
    """
    if not data:
        return None
    try:
        return _recent_columns(data, recent)
    except _Unsupported:
        return None


def _recent_columns(data: bytes, recent: int | None) -> tuple[dict[str, np.ndarray], Batch] | None:
    import pyarrow as pa
    import pyarrow.json as pa_json

    try:
        table = pa_json.read_json(pa.BufferReader(data))
    except (pa.ArrowException, ValueError):  # a column arrow cannot type, a bad number
        return None
    if set(table.column_names) - set(_TOP) or not table.num_rows:
        return None
    lines = _Lines(data, table.num_rows)
    column = {name: table.column(name).combine_chunks() for name in table.column_names}

    label = column.get("label")
    if label is None:
        return None
    keep = np.flatnonzero(_valid(label))
    if recent is not None:
        keep = keep[-int(recent) :] if int(recent) > 0 else keep[:0]
    if not keep.size:
        return None
    if keep.size < table.num_rows and _typed_by_others(column, keep):
        # A float column whose kept values are all integral took its type from rows left
        # out: the kept rows alone may all hold JSON integers (an int64 column to pandas).
        # Read the kept lines on their own, typed by themselves.
        return _recent_columns(_select_lines(data, keep, table.num_rows), None)
    stamps = _floats(column["timestamp"], keep) if "timestamp" in column else None
    if stamps is not None:
        missing = np.isnan(stamps)
        if missing.any() or bool(np.any(stamps[1:] < stamps[:-1])):
            order = np.lexsort((np.where(missing, 0.0, stamps), missing))
            keep = keep[order]
    taken = pa.array(keep)
    column = {name: arr.take(taken) for name, arr in column.items()}
    n = int(keep.size)

    features = _struct(column.get("features"), n)
    segments = _struct(column.get("segment"), n)
    prediction = _struct(column.get("prediction"), n)
    # Rows holding a null in a feature or segment: was the key there? (Parsed one by one.)
    nulls = {("features", k): ~_valid(a) for k, a in features.items()}
    nulls.update({("segment", k): ~_valid(a) for k, a in segments.items()})
    any_null = np.zeros(n, dtype=bool)
    for mask in nulls.values():
        any_null |= mask
    null_rows = np.flatnonzero(any_null)
    if null_rows.size > _MAX_NULL_ROW_SHARE * n:
        return None
    present = {key: np.ones(n, dtype=bool) for key in nulls}
    for r in null_rows.tolist():
        row = lines.parse(int(keep[r]))
        for (part, k), mask in nulls.items():
            if mask[r]:
                present[(part, k)][r] = k in (row.get(part) or {})
    feature_names, segment_names = _first_seen(
        lines,
        keep,
        {k for k in features if present[("features", k)].any()},
        {k for k in segments if present[("segment", k)].any()},
    )
    reserved = set(feature_names).union(_META)
    seg_cols = [f"segment.{k}" if k in reserved else k for k in segment_names]
    names = [*feature_names, *seg_cols, *_META]
    if len(set(names)) != len(names):
        return None

    def field_of(struct: dict[str, Any], key: str) -> Any:
        return struct.get(key, pa.nulls(n))

    columns: dict[str, np.ndarray] = {k: _frame_values(features[k]) for k in feature_names}
    columns.update(
        {c: _frame_values(segments[k]) for c, k in zip(seg_cols, segment_names, strict=True)}
    )
    columns["label"] = _frame_values(column["label"])
    columns["score"] = _numbers(field_of(prediction, "score"))
    columns["predicted"] = _frame_values(field_of(prediction, "label"))
    columns["value"] = _numbers(field_of(prediction, "value"))
    columns["timestamp"] = _numbers(column.get("timestamp", pa.nulls(n)))
    columns["prediction_id"] = _frame_values(column.get("prediction_id", pa.nulls(n)))
    columns["model_version"] = _frame_values(column.get("model_version", pa.nulls(n)))

    batch = Batch(
        features={k: _feature_column(features[k], present[("features", k)]) for k in feature_names},
        segments={k: _segment_values(segments[k]) for k in segment_names},
        score=_batch_floats(field_of(prediction, "score")),
        value=_batch_floats(field_of(prediction, "value")),
        predicted=_python_objects(field_of(prediction, "label")),
        label=_python_objects(column["label"]),
        timestamp=_batch_floats(column.get("timestamp", pa.nulls(n))),
        model_version=_python_objects(column.get("model_version", pa.nulls(n))),
    )
    return columns, batch


def _typed_by_others(column: dict[str, Any], keep: np.ndarray) -> bool:
    """Whether a float column (a feature, a segment, the label, the predicted label, the
    model version) holds only integral values and no null in the kept rows, so that its float
    type may come from the rows left out."""
    import pyarrow as pa

    arrays = [column.get("label"), column.get("model_version")]
    for name in ("features", "segment", "prediction"):
        arr = column.get(name)
        if arr is not None and pa.types.is_struct(arr.type):
            arrays += [arr.field(i) for i in range(arr.type.num_fields)]
    for arr in arrays:
        if arr is None or not pa.types.is_float64(arr.type):
            continue
        values = _as_float(arr)[keep]
        if not np.isnan(values).any() and bool(np.all(values == np.round(values))):
            return True
    return False


def _select_lines(data: bytes, keep: np.ndarray, rows: int) -> bytes:
    """The lines ``keep`` (ascending) of ``data`` (``rows`` lines, one per row), in order."""
    ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)
    if ends.size != rows:  # not one row per line: arrow read it otherwise
        raise _Unsupported
    starts = np.concatenate([[0], ends[:-1] + 1])
    if keep.size and int(keep[-1]) - int(keep[0]) + 1 == keep.size:  # one run of lines
        return data[int(starts[keep[0]]) : int(ends[keep[-1]]) + 1]
    view = memoryview(data)
    return b"".join(view[int(starts[k]) : int(ends[k]) + 1] for k in keep.tolist())


class _Lines:
    """Row ``i`` of the data parsed on its own (the line offsets found once, when needed)."""

    def __init__(self, data: bytes, rows: int) -> None:
        self.data = data
        self.rows = rows
        self._ends: np.ndarray | None = None

    def parse(self, i: int) -> dict[str, Any]:
        if self._ends is None and min(i, self.rows - i) < _NEAR_END:
            # a row near either end (the first rows of the usual snapshot): walked to
            start = _line_start(self.data, i, self.rows)
            end = self.data.find(b"\n", start)
        else:
            if self._ends is None:
                self._ends = np.flatnonzero(np.frombuffer(self.data, dtype=np.uint8) == 10)
            if self._ends.size != self.rows:  # not one row per line: arrow read it otherwise
                raise _Unsupported
            start = int(self._ends[i - 1]) + 1 if i else 0
            end = int(self._ends[i])
        if end < 0:
            raise _Unsupported
        row = _LINE.decode(memoryview(self.data)[start:end])
        if not isinstance(row, dict):
            raise _Unsupported
        return row


def _first_seen(
    lines: _Lines, keep: np.ndarray, features: set[str], segments: set[str]
) -> tuple[list[str], list[str]]:
    """The feature and segment keys in the order the dict route sees them first: the rows in
    order, parsed one by one until every key has been seen."""
    seen_f: dict[str, None] = {}
    seen_s: dict[str, None] = {}
    for i, r in enumerate(keep.tolist()):
        if len(seen_f) == len(features) and len(seen_s) == len(segments):
            break
        if i == _MAX_ORDER_ROWS:
            raise _Unsupported
        row = lines.parse(int(r))
        seen_f.update(dict.fromkeys(row.get("features") or {}))
        seen_s.update(dict.fromkeys(row.get("segment") or {}))
    if set(seen_f) != features or set(seen_s) != segments:
        raise _Unsupported  # arrow and the parsed rows disagree on the keys
    return list(seen_f), list(seen_s)


def _struct(arr: Any, n: int) -> dict[str, Any]:
    """A struct column's fields by name (a row whose object is null: unsupported)."""
    import pyarrow as pa

    if arr is None:
        return {}
    if pa.types.is_null(arr.type):
        raise _Unsupported  # an object that is null in every row (never written by the store)
    if not pa.types.is_struct(arr.type) or arr.null_count:
        raise _Unsupported
    return {arr.type.field(i).name: arr.field(i) for i in range(arr.type.num_fields)}


def _valid(arr: Any) -> np.ndarray:
    """Mask of the rows holding a value (not null)."""
    mask: np.ndarray = arr.is_valid().to_numpy(zero_copy_only=False)
    return mask


def _kind(arr: Any) -> str:
    import pyarrow as pa

    t = arr.type
    if pa.types.is_null(t) or arr.null_count == len(arr):
        return "null"
    if pa.types.is_int64(t):
        return "int"
    if pa.types.is_float64(t):
        return "float"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "str"
    raise _Unsupported  # an object, a list, another type: the dict route's


def _as_float(arr: Any) -> np.ndarray:
    """A number column as float64, NaN where null."""
    out: np.ndarray = arr.to_numpy(zero_copy_only=False).astype(np.float64, copy=True)
    return out


def _float_column(arr: Any, *, integral_ok: bool) -> np.ndarray:
    """A float column's values; unsupported when one may have been a JSON integer whose
    Python type would show (``integral_ok`` false), or one too big for an exact key."""
    values = _as_float(arr)
    finite = values[~np.isnan(values)]
    integral = finite == np.round(finite)
    if not integral_ok and integral.any():
        raise _Unsupported
    if integral.any() and bool(np.any(np.abs(finite[integral]) >= 2**53)):
        raise _Unsupported
    return values


def _frame_values(arr: Any) -> np.ndarray:
    """The array pandas infers from the same values as Python objects (what
    ``frame_of_columns`` makes of the dict route's list)."""
    kind = _kind(arr)
    n = len(arr)
    if kind == "null":
        return np.full(n, None, dtype=object)
    nulls = bool(arr.null_count)
    if kind == "float":
        return _float_column(arr, integral_ok=True)
    if kind == "int":
        if nulls:
            values = _as_float(arr)
            if bool(np.any(np.abs(values[~np.isnan(values)]) >= 2**53)):
                raise _Unsupported  # pandas keeps such ints as objects
            return values
        out: np.ndarray = arr.to_numpy(zero_copy_only=False)
        return out
    if kind == "bool" and not nulls:
        flags: np.ndarray = arr.to_numpy(zero_copy_only=False).astype(bool)
        return flags
    return _python_objects(arr)


def _numbers(arr: Any) -> np.ndarray:
    """``pandas.to_numeric(..., errors="coerce")`` as float64 for a number column (what the
    dict route's frame does to ``score``, ``value`` and ``timestamp``)."""
    kind = _kind(arr)
    if kind == "null":
        return np.full(len(arr), np.nan)
    if kind not in ("int", "float"):
        raise _Unsupported  # strings and bools convert their own way
    return _float_column(arr, integral_ok=True)


def _batch_floats(arr: Any) -> np.ndarray:
    """``Batch``'s float columns: a number, NaN for anything else (bools and strings too)."""
    kind = _kind(arr)
    if kind in ("int", "float"):
        return _float_column(arr, integral_ok=True)
    return np.full(len(arr), np.nan)


def _python_objects(arr: Any) -> np.ndarray:
    """An object array of the values as Python objects (``None`` where null)."""
    kind = _kind(arr)
    n = len(arr)
    if kind == "null":
        return np.full(n, None, dtype=object)
    if kind == "float":
        _float_column(arr, integral_ok=False)  # 1 and 1.0 would differ here
    if kind == "str":
        strings: np.ndarray = arr.to_numpy(zero_copy_only=False)  # str objects, None if null
        return strings
    if not arr.null_count:  # int64 and bool to object: Python ints and bools
        values: np.ndarray = arr.to_numpy(zero_copy_only=False).astype(object)
        return values
    return np.fromiter(arr.to_pylist(), dtype=object, count=n)


def _feature_column(arr: Any, present: np.ndarray) -> FeatureColumn:
    """The batch's four views of a feature (see :class:`FeatureColumn`)."""
    kind = _kind(arr)
    n = len(arr)
    valid = _valid(arr)
    null = ~valid & present
    absent = ~present
    text = np.empty(n, dtype=object)
    numeric = np.full(n, np.nan)
    if kind in ("int", "float"):
        numeric = _float_column(arr, integral_ok=True) if kind == "float" else _as_float(arr)
    elif kind == "str":
        text = _python_objects(arr)
    elif kind == "bool":
        flags = arr.fill_null(False).to_numpy(zero_copy_only=False).astype(bool)
        text[valid & flags] = "true"
        text[valid & ~flags] = "false"
    return FeatureColumn(numeric=numeric, text=text, null=null, absent=absent)


def _segment_values(arr: Any) -> np.ndarray:
    """A segment's values in the profile's key form, ``None`` where null or missing."""
    kind = _kind(arr)
    if kind in ("null", "str"):
        return _python_objects(arr)
    if kind == "float":
        _float_column(arr, integral_ok=True)  # keys of integral floats beyond 2**53 differ
    keyed: Callable[[Any], Any] = value_key
    return np.fromiter(
        (None if v is None else keyed(v) for v in arr.to_pylist()), dtype=object, count=len(arr)
    )


def _floats(arr: Any, rows: Sequence[int] | np.ndarray) -> np.ndarray:
    """A number column's values at ``rows`` as float64 (NaN where null); for the time order."""
    kind = _kind(arr)
    if kind == "null":
        return np.full(len(rows), np.nan)
    if kind not in ("int", "float"):
        raise _Unsupported
    return _as_float(arr)[np.asarray(rows)]
