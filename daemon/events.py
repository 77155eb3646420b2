"""The event contract (DESIGN §2): decode and validate raw Kafka values in our own code.

kafka-python's deserializers are not used on purpose: an exception other than TypeError from a
deserializer escapes ``poll()``. Here every record's bytes go through :func:`decode`, which
either returns a :class:`PredictionEvent` / :class:`LabelEvent` or raises :class:`InvalidEvent`
with a one-sentence reason; the daemon sends the latter to the dead-letter topic.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
import orjson

__all__ = [
    "LABEL_SCHEMA",
    "PREDICTION_SCHEMA",
    "InvalidEvent",
    "LabelEvent",
    "PredictionEvent",
    "decode",
    "format_time",
    "parse_time",
]

PREDICTION_SCHEMA = "driftwarden.prediction/v1"
LABEL_SCHEMA = "driftwarden.label/v1"
DEFAULT_MAX_BYTES = 1_048_576
_MAX_ID = 256
_MAX_FEATURES = 10_000
_MIN_TS = datetime(1, 1, 1, tzinfo=UTC).timestamp()
_MAX_TS = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()


class InvalidEvent(ValueError):
    """An event that does not meet the contract; ``str()`` is the reason."""


# The events are frozen msgspec structs, not frozen dataclasses: one is made per record on the
# hot path, and a frozen dataclass's __init__ sets each field through object.__setattr__
# (1.7 us for a prediction event against 0.2 us). Equality and repr leave ``raw`` out, as the
# dataclass field did (``compare=False, repr=False``).
class PredictionEvent(msgspec.Struct, frozen=True):
    """A decoded, valid prediction event."""

    prediction_id: str
    model: str
    model_version: str
    timestamp: float
    features: dict[str, Any]
    prediction: dict[str, Any]
    segment: dict[str, Any]
    #: the bytes the event was decoded from: the join buffer keeps them while the prediction
    #: waits for its label, instead of encoding the record again
    raw: bytes | None = None

    def _fields(self) -> tuple[Any, ...]:
        return (
            self.prediction_id,
            self.model,
            self.model_version,
            self.timestamp,
            self.features,
            self.prediction,
            self.segment,
        )

    def __eq__(self, other: object) -> bool:
        if type(other) is not PredictionEvent:
            return NotImplemented
        return self._fields() == other._fields()

    def __repr__(self) -> str:
        names = ("prediction_id", "model", "model_version", "timestamp", "features")
        shown = ", ".join(f"{k}={v!r}" for k, v in zip(names, self._fields(), strict=False))
        return f"PredictionEvent({shown}, prediction={self.prediction!r}, segment={self.segment!r})"

    def record(self) -> dict[str, Any]:
        """The plain record the join buffer, windows and labeled store keep."""
        return {
            "prediction_id": self.prediction_id,
            "model_version": self.model_version,
            "timestamp": self.timestamp,
            "features": self.features,
            "prediction": self.prediction,
            "segment": self.segment,
        }


class LabelEvent(msgspec.Struct, frozen=True):
    """A decoded, valid label event."""

    prediction_id: str
    model: str
    timestamp: float
    label: Any


def parse_time(value: Any, where: str = "timestamp") -> float:
    """RFC 3339 / ISO-8601 text with a time zone → epoch seconds."""
    if not isinstance(value, str):
        raise InvalidEvent(f"{where} must be an ISO-8601 string, got {type(value).__name__}")
    try:
        dt = datetime.fromisoformat(value)  # takes a trailing "Z" itself (Python 3.11)
    except ValueError:
        text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            raise InvalidEvent(f"{where} {value[:40]!r} is not an ISO-8601 time") from None
    if dt.tzinfo is None:
        raise InvalidEvent(f"{where} {value[:40]!r} has no time zone (add Z or +00:00)")
    ts = dt.timestamp()
    if not _MIN_TS <= ts <= _MAX_TS:  # window bounds are written back as ISO text
        raise InvalidEvent(f"{where} {value[:40]!r} is outside the years 1 to 9999 UTC")
    return ts


def format_time(ts: float) -> str:
    """Epoch seconds → ``2026-11-26T10:15:00Z`` (milliseconds kept when present).

    Clamped to the years 1 to 9999: a window of an event near either end of the accepted range
    can begin or end beyond it.
    """
    dt = datetime.fromtimestamp(min(max(ts, _MIN_TS), _MAX_TS), tz=UTC)
    # not strftime("%Y"): glibc writes year 1 as "1", which no ISO-8601 parser reads back
    text = dt.isoformat(timespec="seconds").removesuffix("+00:00")
    if dt.microsecond:
        return f"{text}.{dt.microsecond // 1000:03d}Z"
    return text + "Z"


def _text(obj: dict[str, Any], key: str, *, allow_int: bool = False) -> str:
    if key not in obj:
        raise InvalidEvent(f"missing field {key!r}")
    v = obj[key]
    if allow_int and isinstance(v, int) and not isinstance(v, bool):
        v = str(v)
    if not isinstance(v, str):
        raise InvalidEvent(f"field {key!r} must be a string, got {type(v).__name__}")
    if not v or len(v) > _MAX_ID:
        raise InvalidEvent(f"field {key!r} must be 1 to {_MAX_ID} characters long")
    return v


_PLAIN = frozenset({str, int, bool, type(None)})


def _scalar_ok(v: Any) -> bool:
    t = type(v)
    if t in _PLAIN:  # exact types first: the hot path for every feature value
        return True
    if t is float:
        return math.isfinite(v)
    return isinstance(v, (str, int)) or (isinstance(v, float) and math.isfinite(v))


def _flat_object(obj: dict[str, Any], key: str, *, required: bool) -> dict[str, Any]:
    if key not in obj:
        if required:
            raise InvalidEvent(f"missing field {key!r}")
        return {}
    v = obj[key]
    if v is None and not required:
        return {}
    if not isinstance(v, dict):
        raise InvalidEvent(f"field {key!r} must be an object, got {type(v).__name__}")
    if len(v) > _MAX_FEATURES:
        raise InvalidEvent(f"field {key!r} has {len(v)} entries (limit {_MAX_FEATURES})")
    for name, value in v.items():
        if not _scalar_ok(value):
            kind = "a non-finite number" if isinstance(value, float) else type(value).__name__
            raise InvalidEvent(
                f"{key}.{name} must be a number, string, boolean or null, got {kind}"
            )
    return v


def _finite(pred: dict[str, Any], key: str) -> None:
    if key in pred:
        v = pred[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise InvalidEvent(f"prediction.{key} must be a finite number")


def _decode_prediction(obj: dict[str, Any], raw: bytes | None = None) -> PredictionEvent:
    pred = obj.get("prediction")
    if not isinstance(pred, dict):
        raise InvalidEvent(
            "missing field 'prediction'" if pred is None else "field 'prediction' must be an object"
        )
    if not any(k in pred for k in ("label", "score", "value")):
        raise InvalidEvent("prediction needs at least one of label, score, value")
    _finite(pred, "score")
    _finite(pred, "value")
    if "label" in pred and not _scalar_ok(pred["label"]):
        raise InvalidEvent("prediction.label must be a number, string or boolean")
    return PredictionEvent(
        prediction_id=_text(obj, "prediction_id"),
        model=_text(obj, "model"),
        model_version=_text(obj, "model_version", allow_int=True),
        timestamp=parse_time(obj.get("timestamp")) if "timestamp" in obj else _missing("timestamp"),
        features=_flat_object(obj, "features", required=True),
        prediction=pred,
        segment=_flat_object(obj, "segment", required=False),
        raw=_kept(obj, raw),
    )


def _missing(key: str) -> float:
    raise InvalidEvent(f"missing field {key!r}")


def _decode_label(obj: dict[str, Any]) -> LabelEvent:
    if "label" not in obj:
        raise InvalidEvent("missing field 'label'")
    label = obj["label"]
    if label is None or not _scalar_ok(label):
        raise InvalidEvent("field 'label' must be a finite number, string or boolean")
    return LabelEvent(
        prediction_id=_text(obj, "prediction_id"),
        model=_text(obj, "model"),
        timestamp=parse_time(obj.get("timestamp")) if "timestamp" in obj else _missing("timestamp"),
        label=label,
    )


# Exact types orjson yields for a valid flat value (its floats are always finite: it refuses
# NaN, Infinity and numbers that overflow a double).
_LEAF = frozenset({str, int, float, bool, type(None)})
_NUMBER = frozenset({int, float})
_LABEL_TYPES = frozenset({str, int, float, bool})


#: The prediction event's own fields: an event with others keeps no raw bytes (see _kept).
_PREDICTION_FIELDS = frozenset(
    ("schema", "prediction_id", "model", "model_version", "timestamp", "features")
    + ("prediction", "segment")
)


def _kept(obj: dict[str, Any], raw: bytes | None) -> bytes | None:
    """``raw`` for the join buffer to keep while the prediction waits for its label, or None
    when the event carries fields of its own beyond the contract's (a request log, a trace):
    accepted and ignored, they would otherwise wait with it, unbounded in size, and go into
    every checkpoint (the join then keeps the decoded record instead)."""
    return raw if obj.keys() <= _PREDICTION_FIELDS else None


def _fast_prediction(obj: dict[str, Any], raw: bytes) -> PredictionEvent | None:
    """The common valid prediction with few Python operations; None sends it to the detailed
    validator, which either accepts it the same way or names what is wrong."""
    pred = obj.get("prediction")
    features = obj.get("features")
    segment = obj.get("segment")
    if segment is None:
        segment = {}
    pid = obj.get("prediction_id")
    model = obj.get("model")
    version = obj.get("model_version")
    stamp = obj.get("timestamp")
    if (
        type(pred) is not dict
        or type(features) is not dict
        or type(segment) is not dict
        or type(pid) is not str
        or type(model) is not str
        or type(version) is not str
        or type(stamp) is not str
        or not 0 < len(pid) <= _MAX_ID
        or not 0 < len(model) <= _MAX_ID
        or not 0 < len(version) <= _MAX_ID
        or len(features) > _MAX_FEATURES
        or len(segment) > _MAX_FEATURES
        # one C-level pass over the values: every one a plain JSON scalar
        or not _LEAF.issuperset(map(type, features.values()))
        or not _LEAF.issuperset(map(type, segment.values()))
        or not _prediction_ok(pred)
    ):
        return None
    return PredictionEvent(
        pid, model, version, parse_time(stamp), features, pred, segment, _kept(obj, raw)
    )


def _prediction_ok(pred: dict[str, Any]) -> bool:
    """At least one of score, value, label; score and value numbers, label a JSON scalar."""
    found = False
    if "score" in pred:
        if type(pred["score"]) not in _NUMBER:
            return False
        found = True
    if "value" in pred:
        if type(pred["value"]) not in _NUMBER:
            return False
        found = True
    if "label" in pred:
        if type(pred["label"]) not in _LEAF:
            return False
        found = True
    return found


# --- msgspec: the common valid event in one C pass -------------------------------------------
#
# The wire types accept a subset of what the orjson path accepts, and decode it to the same
# Python values: exact JSON scalars only (no containers in ``features``, ``segment`` or
# ``prediction``), integers within int64 (orjson turns larger ones into floats; those take the
# orjson path and get its result), no unknown top-level fields (an ignored field could hold
# what orjson refuses, e.g. 1e400, and the join buffer parses the raw bytes with orjson again).
# Floats out of range, bad UTF-8, control characters and lone surrogates fail in both.
# ``tests/daemon/test_fuzz_events.py`` checks on every input that both paths agree.

_Int = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
_Scalar = str | _Int | float | bool | None


class _WirePrediction(
    msgspec.Struct, tag_field="schema", tag=PREDICTION_SCHEMA, forbid_unknown_fields=True
):
    prediction_id: str
    model: str
    model_version: str
    timestamp: str
    features: dict[str, _Scalar]
    prediction: dict[str, _Scalar]
    segment: dict[str, _Scalar] | None = None


class _WireLabel(msgspec.Struct, tag_field="schema", tag=LABEL_SCHEMA, forbid_unknown_fields=True):
    prediction_id: str
    model: str
    timestamp: str
    label: str | _Int | float | bool


_WIRE_DECODERS: dict[str | None, msgspec.json.Decoder[Any]] = {
    None: msgspec.json.Decoder(_WirePrediction | _WireLabel),
    PREDICTION_SCHEMA: msgspec.json.Decoder(_WirePrediction),
    LABEL_SCHEMA: msgspec.json.Decoder(_WireLabel),
}


def _from_wire(wire: Any, raw: bytes) -> PredictionEvent | LabelEvent | None:
    """The event of a msgspec-decoded value, or None when a check the types cannot express
    fails (lengths, the prediction's fields): the orjson path then names the reason."""
    if type(wire) is _WireLabel:
        pid, model = wire.prediction_id, wire.model
        if not 0 < len(pid) <= _MAX_ID or not 0 < len(model) <= _MAX_ID:
            return None
        return LabelEvent(pid, model, parse_time(wire.timestamp), wire.label)
    pid, model, version = wire.prediction_id, wire.model, wire.model_version
    features, pred = wire.features, wire.prediction
    segment = wire.segment
    if segment is None:
        segment = {}
    if (
        not 0 < len(pid) <= _MAX_ID
        or not 0 < len(model) <= _MAX_ID
        or not 0 < len(version) <= _MAX_ID
        or len(features) > _MAX_FEATURES
        or len(segment) > _MAX_FEATURES
        or not _prediction_ok(pred)
    ):
        return None
    return PredictionEvent(
        pid, model, version, parse_time(wire.timestamp), features, pred, segment, _exact(raw)
    )


def _fast_label(obj: dict[str, Any]) -> LabelEvent | None:
    """The common valid label event (see :func:`_fast_prediction`)."""
    pid = obj.get("prediction_id")
    model = obj.get("model")
    stamp = obj.get("timestamp")
    label = obj.get("label")
    if (
        type(pid) is not str
        or type(model) is not str
        or type(stamp) is not str
        or type(label) not in _LABEL_TYPES
        or not 0 < len(pid) <= _MAX_ID
        or not 0 < len(model) <= _MAX_ID
    ):
        return None
    return LabelEvent(pid, model, parse_time(stamp), label)


def decode(
    raw: bytes | None, *, expect: str | None = None, max_bytes: int = DEFAULT_MAX_BYTES
) -> PredictionEvent | LabelEvent:
    """Decode one event's bytes; ``expect`` is the schema the topic carries (or None: any).

    The common valid event is decoded and type-checked in one C pass by msgspec (see
    :data:`_WIRE_DECODERS`); anything msgspec does not take goes to :func:`_decode_json`,
    which accepts it the same way or names what is wrong.
    """
    if not raw:
        raise InvalidEvent("empty message")
    if len(raw) > max_bytes:
        raise InvalidEvent(f"message is {len(raw)} bytes, over the {max_bytes}-byte limit")
    wire_decoder = _WIRE_DECODERS.get(expect)
    if wire_decoder is not None:
        try:
            wire = wire_decoder.decode(raw)
        except Exception:  # noqa: BLE001 - DecodeError, UnicodeDecodeError, RecursionError...:
            pass  # whatever msgspec does not take, the orjson path judges and explains
        else:
            ev = _from_wire(wire, raw)
            if ev is not None:
                return ev
    return _decode_json(_exact(raw), expect)


def _decode_json(raw: bytes, expect: str | None) -> PredictionEvent | LabelEvent:
    """:func:`decode` with orjson and Python checks (every event msgspec did not take)."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"invalid JSON: {exc}") from None
    if type(obj) is not dict:
        raise InvalidEvent(f"event must be a JSON object, got {type(obj).__name__}")
    schema = obj.get("schema")
    # Fast path: the event meets the contract in the common way (a time that does not parse
    # still raises from parse_time with its reason, as the detailed path would).
    if schema == PREDICTION_SCHEMA and (expect is None or expect == schema):
        ev: PredictionEvent | LabelEvent | None = _fast_prediction(obj, _exact(raw))
        if ev is not None:
            return ev
    elif schema == LABEL_SCHEMA and (expect is None or expect == schema):
        ev = _fast_label(obj)
        if ev is not None:
            return ev
    if schema not in (PREDICTION_SCHEMA, LABEL_SCHEMA):
        raise InvalidEvent(f"unknown schema {str(schema)[:80]!r}")
    if expect is not None and schema != expect:
        raise InvalidEvent(f"schema {schema!r} on a topic that carries {expect!r}")
    if schema == PREDICTION_SCHEMA:
        return _decode_prediction(obj, _exact(raw))
    return _decode_label(obj)


def _exact(raw: Any) -> bytes:
    """``raw`` as its own bytes object (a memoryview would pin the buffer it views)."""
    if type(raw) is bytes:
        return raw
    return raw.encode() if isinstance(raw, str) else bytes(raw)
