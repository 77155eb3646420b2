"""The event contract: valid events decode, every kind of bad input is refused with a reason."""

from __future__ import annotations

import math

import orjson
import pytest

from driftwarden.daemon.client import label_event, prediction_event
from driftwarden.daemon.events import (
    LABEL_SCHEMA,
    PREDICTION_SCHEMA,
    InvalidEvent,
    LabelEvent,
    PredictionEvent,
    decode,
    format_time,
    parse_time,
)

GOOD = {
    "schema": PREDICTION_SCHEMA,
    "prediction_id": "c0a8-1",
    "model": "churn",
    "model_version": "7",
    "timestamp": "2026-11-26T10:15:00Z",
    "features": {"days_since_last_login": 12, "plan": "pro", "user_age": 41, "x": None, "b": True},
    "prediction": {"label": 1, "score": 0.83},
    "segment": {"customer_tier": "enterprise", "region": "eu"},
}


def test_decodes_the_design_example() -> None:
    """The prediction example of DESIGN §2 decodes with its fields intact."""
    ev = decode(orjson.dumps(GOOD))
    assert isinstance(ev, PredictionEvent)
    assert ev.model == "churn" and ev.model_version == "7"
    assert ev.timestamp == parse_time("2026-11-26T10:15:00+00:00")
    assert ev.features["plan"] == "pro" and ev.segment["region"] == "eu"


def test_label_event_decodes() -> None:
    """A label event decodes; the schema decides the type."""
    ev = decode(label_event("churn", "c0a8-1", 0, timestamp="2026-12-20T00:00:00Z"))
    assert isinstance(ev, LabelEvent) and ev.label == 0


def _mut(**changes: object) -> bytes:
    doc = dict(GOOD)
    for k, v in changes.items():
        if v is ...:
            doc.pop(k)
        else:
            doc[k] = v
    return orjson.dumps(doc)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty message"),
        (b"{not json", "invalid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"x": NaN}', "invalid JSON"),
        (_mut(schema="driftwarden.prediction/v9"), "unknown schema"),
        (_mut(prediction_id=...), "missing field 'prediction_id'"),
        (_mut(prediction_id=17.5), "'prediction_id' must be a string"),
        (_mut(model=""), "'model' must be 1 to"),
        (_mut(timestamp="yesterday"), "not an ISO-8601 time"),
        (_mut(timestamp="2026-11-26T10:15:00"), "has no time zone"),
        (_mut(timestamp=...), "missing field 'timestamp'"),
        (_mut(features=[1, 2]), "'features' must be an object"),
        (_mut(features={"a": [1]}), "features.a must be a number"),
        (_mut(features={"a": {"b": 1}}), "features.a must be a number"),
        (_mut(prediction={}), "at least one of label, score, value"),
        (_mut(prediction={"score": "high"}), "prediction.score must be a finite number"),
        (_mut(prediction=...), "missing field 'prediction'"),
        (_mut(segment="eu"), "'segment' must be an object"),
    ],
)
def test_bad_events_are_refused_with_a_reason(raw: bytes, reason: str) -> None:
    """Each malformed event raises InvalidEvent whose message names what is wrong."""
    with pytest.raises(InvalidEvent, match=reason.replace("(", r"\(")):
        decode(raw)


def test_oversized_and_wrong_topic() -> None:
    """Size limit and the topic's schema are enforced."""
    with pytest.raises(InvalidEvent, match="over the 100-byte limit"):
        decode(orjson.dumps(GOOD), max_bytes=100)
    with pytest.raises(InvalidEvent, match="on a topic that carries"):
        decode(orjson.dumps(GOOD), expect=LABEL_SCHEMA)


def test_label_must_not_be_null() -> None:
    """A label event without a usable label is refused."""
    raw = orjson.dumps(
        {
            "schema": LABEL_SCHEMA,
            "prediction_id": "a",
            "model": "m",
            "timestamp": "2026-01-01T00:00:00Z",
            "label": None,
        }
    )
    with pytest.raises(InvalidEvent, match="'label' must be"):
        decode(raw)


def test_client_refuses_nan_before_sending() -> None:
    """The producer helper validates with the same decoder: NaN never leaves the service."""
    with pytest.raises(InvalidEvent):
        prediction_event("churn", "1", {"x": 1}, {"score": math.nan})


def test_window_bounds_beyond_the_years_1_to_9999_are_written_clamped_and_padded() -> None:
    """A window of an event near either end of the accepted range can begin or end beyond it;
    year 1 is written as 0001 (glibc's strftime writes "1", which no parser reads back)."""
    from driftwarden.policies.model import iso_utc, parse_iso

    first = parse_time("0001-01-01T00:00:00Z")
    last = parse_time("9999-12-31T23:59:59Z")
    for fmt in (format_time, iso_utc):
        assert fmt(first - 7 * 86400) == "0001-01-01T00:00:00Z"
        assert fmt(first + 86400.5) == "0001-01-02T00:00:00.500Z"
        assert fmt(last + 7 * 86400) == "9999-12-31T23:59:59Z"
        assert parse_iso(fmt(first + 3600)) == first + 3600


def test_time_round_trip() -> None:
    """format_time and parse_time are inverse on whole and fractional seconds."""
    for ts in (0.0, 1795688100.0, 1795688100.25):
        assert parse_time(format_time(ts)) == ts


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"model_version": 7},
        {"segment": None},
        {"segment": ...},
        {"prediction": {"value": 3}},
        {"prediction": {"label": True, "probabilities": [0.2, 0.8]}},
        {"prediction": {"label": None, "score": 1}},
        {"features": {}},
        {"extra": {"ignored": [1, 2]}},
    ],
)
def test_fast_path_decodes_like_the_detailed_validator(changes: dict[str, object]) -> None:
    """The one-pass fast path and the field-by-field validator give equal events."""
    from driftwarden.daemon.events import _decode_prediction

    raw = _mut(**changes)
    ev = decode(raw)
    assert ev == _decode_prediction(orjson.loads(raw))
    # Kept for the join buffer only without fields beyond the contract's.
    assert isinstance(ev, PredictionEvent) and ev.raw == (None if "extra" in changes else raw)


def test_valid_label_fast_path_equals_detailed() -> None:
    """A label event takes the fast path and equals the detailed validator's result."""
    from driftwarden.daemon.events import _decode_label

    raw = label_event("churn", "c0a8-1", "yes", timestamp="2026-12-20T00:00:00Z")
    assert decode(raw) == _decode_label(orjson.loads(raw))


def test_raw_bytes_are_an_exact_copy() -> None:
    """A memoryview or bytearray input is kept as its own bytes (no view on a larger buffer)."""
    raw = orjson.dumps(GOOD)
    for given in (memoryview(raw), bytearray(raw)):
        ev = decode(given)
        assert isinstance(ev, PredictionEvent) and type(ev.raw) is bytes and ev.raw == raw


@pytest.mark.parametrize("extra", [{}, {"segment": None}, {"request": "x" * 20_000}])
def test_only_an_event_without_fields_of_its_own_keeps_its_raw_bytes(
    extra: dict[str, object],
) -> None:
    """The join buffer keeps ``raw`` while the prediction waits (and checkpoints it): fields
    beyond the contract are accepted and ignored, so they must not wait with it."""
    from driftwarden.daemon.join import JoinBuffer

    raw = orjson.dumps({**GOOD, **extra})
    ev = decode(raw)
    assert isinstance(ev, PredictionEvent)
    assert ev.raw == (None if "request" in extra else raw)
    buf = JoinBuffer(ttl_s=1e9, max_entries=10)
    assert buf.add_prediction(ev.prediction_id, ev.record(), ev.raw) is None
    assert len(orjson.dumps(buf.state())) < 2_000
    joined = buf.add_label(ev.prediction_id, 1, ev.timestamp + 1)
    # The same joined record either way (the one kept as decoded is encoded by the join).
    plain = decode(orjson.dumps({k: v for k, v in {**GOOD, **extra}.items() if k != "request"}))
    assert isinstance(plain, PredictionEvent) and plain.raw is not None
    other = JoinBuffer(ttl_s=1e9, max_entries=10)
    other.add_prediction(plain.prediction_id, plain.record(), plain.raw)
    assert joined is not None and joined == other.add_label("c0a8-1", 1, ev.timestamp + 1)


def test_events_are_immutable_and_compare_without_their_raw_bytes() -> None:
    """Events cannot be changed after decoding; two events with the same fields are equal
    whatever bytes they were decoded from, and ``raw`` stays out of their repr."""
    raw = orjson.dumps(GOOD)
    ev = decode(raw)
    assert isinstance(ev, PredictionEvent)
    with pytest.raises(AttributeError):
        ev.model = "other"  # type: ignore[misc]
    same = PredictionEvent(
        ev.prediction_id,
        ev.model,
        ev.model_version,
        ev.timestamp,
        ev.features,
        ev.prediction,
        ev.segment,
    )
    assert same == ev and same.raw is None and ev.raw == raw
    assert ev != PredictionEvent(
        **{**{f: getattr(ev, f) for f in ev.__struct_fields__}, "model": "x"}
    )
    assert "raw" not in repr(ev) and "c0a8-1" in repr(ev) and "enterprise" in repr(ev)
    label = decode(label_event("churn", "c0a8-1", 0, timestamp="2026-12-20T00:00:00Z"))
    assert label == LabelEvent("c0a8-1", "churn", parse_time("2026-12-20T00:00:00Z"), 0)
    assert label != ev and ev != label


@pytest.mark.parametrize(
    "text", ["2026-11-26T10:15:00Z", "2026-11-26T10:15:00z", "2026-11-26T10:15:00+00:00"]
)
def test_a_utc_time_parses_with_z_lower_z_or_an_offset(text: str) -> None:
    """``Z``, ``z`` and ``+00:00`` are the same instant; a date with a ``Z`` and no time is
    refused for having no time zone, as before."""
    assert parse_time(text) == 1795688100.0
    with pytest.raises(InvalidEvent, match="has no time zone"):
        parse_time("2026-11-26Z")
