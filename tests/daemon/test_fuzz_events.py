"""Fuzzing the event contract: ``decode`` rejects hostile input only with ``InvalidEvent``.

Random bytes, random JSON (deep nesting, huge numbers, NaN/Infinity literals, wrong types,
unicode and escaped surrogates), mutations of valid events and messages around the size limit
all go through :func:`driftwarden.daemon.events.decode`. The properties:

* it returns an event or raises :class:`InvalidEvent` with a non-empty one-line reason; nothing
  else escapes (the daemon must never crash on input);
* every rejected input makes a dead-letter record that decodes back to the original bytes;
* every accepted event can be published again through ``daemon.client`` and decodes equal;
* msgspec's one-pass decoder and the orjson path agree on every input: the same event (values
  of the same types) or the same reason.

Hypothesis runs derandomised (a fixed seed per test, no example database), so CI sees the same
examples on every run; each test is bounded by ``max_examples``.
"""

from __future__ import annotations

import base64
import json
import math
from datetime import UTC, datetime
from typing import Any, TypeAlias

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import event as hypothesis_event
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from driftwarden.daemon.client import label_event, prediction_event
from driftwarden.daemon.events import (
    DEFAULT_MAX_BYTES,
    LABEL_SCHEMA,
    PREDICTION_SCHEMA,
    InvalidEvent,
    LabelEvent,
    PredictionEvent,
    _decode_json,
    decode,
    format_time,
)
from driftwarden.daemon.sinks import DLQ_VALUE_MAX_BYTES, dead_letter

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)

Event: TypeAlias = PredictionEvent | LabelEvent


# --- the property every input must satisfy ------------------------------------------------------


def note_event(text: str) -> None:
    """Record an event for --hypothesis-show-statistics (a no-op outside a @given test)."""
    if currently_in_test_context():
        hypothesis_event(text)


def check(raw: bytes, *, expect: str | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> Any:
    """Decode ``raw``: an event, or InvalidEvent with a reason whose DLQ record round-trips."""
    try:
        event = decode(raw, expect=expect, max_bytes=max_bytes)
    except InvalidEvent as exc:
        _check_same_as_orjson_path(raw, expect, max_bytes, exc)
        reason = str(exc)
        assert reason.strip(), "InvalidEvent without a reason"
        assert "\n" not in reason, reason
        _check_dead_letter(raw, reason)
        # Visible with --hypothesis-show-statistics: which checks the examples reach.
        note_event("rejected: " + " ".join(reason.split()[:2]))
        return exc
    assert isinstance(event, (PredictionEvent, LabelEvent))
    _check_same_as_orjson_path(raw, expect, max_bytes, event)
    note_event(f"accepted {type(event).__name__}")
    return event


def _check_same_as_orjson_path(
    raw: bytes, expect: str | None, max_bytes: int, got: Event | InvalidEvent
) -> None:
    """``decode`` (msgspec first) gives what the orjson path alone gives for ``raw``."""
    if not raw or len(raw) > max_bytes:
        return  # refused before either decoder runs
    try:
        ref: Event | InvalidEvent = _decode_json(bytes(raw), expect)
    except InvalidEvent as exc:
        ref = exc
    if isinstance(got, InvalidEvent) or isinstance(ref, InvalidEvent):
        assert type(got) is type(ref) and str(got) == str(ref), (got, ref)
        return
    assert got == ref
    # ``==`` calls 1 and 1.0 equal: the JSON of each mapping tells the types apart.
    for name in ("features", "prediction", "segment", "label"):
        assert orjson.dumps(getattr(got, name, None)) == orjson.dumps(getattr(ref, name, None))


def _check_dead_letter(raw: bytes, reason: str) -> None:
    value, headers = dead_letter(
        reason=reason,
        topic="predictions",
        partition=3,
        offset=12345,
        key=b"churn",
        value=raw,
        timestamp_ms=1_764_000_000_000,
    )
    doc = orjson.loads(value)
    # The whole event, or its first DLQ_VALUE_MAX_BYTES marked (the record must fit 1 MiB).
    assert base64.b64decode(doc["value_b64"]) == raw[:DLQ_VALUE_MAX_BYTES]
    assert doc.get("value_truncated", False) == (len(raw) > DLQ_VALUE_MAX_BYTES)
    assert len(value) < 1_000_000
    assert doc["value_bytes"] == len(raw) and doc["reason"] == reason
    assert doc["source"] == {"topic": "predictions", "partition": 3, "offset": 12345}
    hdr = dict(headers)
    assert hdr["__connect.errors.offset"] == b"12345"
    assert hdr["__connect.errors.exception.message"] == reason.encode()[:1000]
    assert all(isinstance(v, bytes) for v in hdr.values())


def republish(event: Event, timestamp: str) -> Event:
    """Publish an accepted event again through the client helper and decode the bytes."""
    if isinstance(event, PredictionEvent):
        raw = prediction_event(
            event.model,
            event.model_version,
            event.features,
            event.prediction,
            segment=event.segment,
            prediction_id=event.prediction_id,
            timestamp=timestamp,
        )
    else:
        raw = label_event(event.model, event.prediction_id, event.label, timestamp=timestamp)
    again = decode(raw)
    assert again == event
    return again


# --- strategies ---------------------------------------------------------------------------------

INT64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)
# No surrogates in the *values* we build (they are not UTF-8); escaped ones come via json.dumps.
TEXT = st.text(st.characters(codec="utf-8"), max_size=40)
IDS = st.text(st.characters(codec="utf-8"), min_size=1, max_size=60)
FINITE = st.floats(allow_nan=False, allow_infinity=False)
SCALAR = st.one_of(st.none(), st.booleans(), INT64, FINITE, TEXT)
WHEN = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
).map(lambda d: d.isoformat().replace("+00:00", "Z"))

ANY_JSON = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),  # beyond 64 bits too: json.dumps writes them, decode must cope
        st.floats(),  # NaN and +-inf become NaN/Infinity literals
        st.text(max_size=30),  # lone surrogates included (escaped or raw, see encode)
    ),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=30,
)


@st.composite
def prediction_docs(draw: st.DrawFn) -> dict[str, Any]:
    """A valid prediction event as a dict."""
    prediction: dict[str, Any] = {}
    kind = draw(st.sampled_from(["classification", "regression", "label-only"]))
    if kind == "classification":
        prediction = {"label": draw(st.integers(0, 5) | TEXT), "score": draw(FINITE)}
    elif kind == "regression":
        prediction = {"value": draw(FINITE)}
    else:
        prediction = {"label": draw(st.booleans() | st.integers(0, 5))}
    return {
        "schema": PREDICTION_SCHEMA,
        "prediction_id": draw(IDS),
        "model": draw(IDS),
        "model_version": draw(IDS),
        "timestamp": draw(WHEN),
        "features": draw(st.dictionaries(TEXT, SCALAR, max_size=12)),
        "prediction": prediction,
        "segment": draw(st.dictionaries(TEXT, SCALAR, max_size=3)),
    }


@st.composite
def label_docs(draw: st.DrawFn) -> dict[str, Any]:
    """A valid label event as a dict."""
    return {
        "schema": LABEL_SCHEMA,
        "prediction_id": draw(IDS),
        "model": draw(IDS),
        "timestamp": draw(WHEN),
        "label": draw(st.booleans() | INT64 | FINITE | TEXT),
    }


VALID_DOCS = prediction_docs() | label_docs()


def encode(doc: Any, how: str) -> bytes:
    """JSON text the way a careless producer might write it (NaN literals, raw surrogates)."""
    if how == "ascii":
        return json.dumps(doc, allow_nan=True).encode()
    # Raw surrogates are not UTF-8: "surrogatepass" writes the bytes a broken encoder would.
    return json.dumps(doc, allow_nan=True, ensure_ascii=False).encode("utf-8", "surrogatepass")


HOW = st.sampled_from(["ascii", "raw"])


# --- fuzz tests ---------------------------------------------------------------------------------


@FUZZ
@given(raw=st.binary(max_size=4096), expect=st.sampled_from([None, PREDICTION_SCHEMA]))
def test_random_bytes(raw: bytes, expect: str | None) -> None:
    """Arbitrary bytes are rejected with InvalidEvent (or, by chance, decoded): never a crash."""
    check(raw, expect=expect)


@FUZZ
@given(doc=ANY_JSON, how=HOW)
def test_random_json(doc: Any, how: str) -> None:
    """Any JSON value (NaN/Infinity literals, huge ints, surrogates) is handled."""
    check(encode(doc, how))


@FUZZ
@given(
    schema=st.sampled_from([PREDICTION_SCHEMA, LABEL_SCHEMA, "driftwarden.prediction/v2", None]),
    fields=st.dictionaries(
        st.sampled_from(
            [
                "prediction_id",
                "model",
                "model_version",
                "timestamp",
                "features",
                "prediction",
                "segment",
                "label",
                "score",
            ]
        ),
        ANY_JSON,
    ),
    how=HOW,
)
def test_schema_objects_with_random_fields(
    schema: str | None, fields: dict[str, Any], how: str
) -> None:
    """Objects with a known schema but random field values reach every validation branch."""
    check(encode({"schema": schema, **fields}, how))


@st.composite
def mutated_docs(draw: st.DrawFn) -> dict[str, Any]:
    """A valid event with one to three structural mutations."""
    doc = draw(VALID_DOCS)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["drop", "replace", "add", "nested"]))
        keys = sorted(doc)
        if op == "drop" and keys:
            doc.pop(draw(st.sampled_from(keys)))
        elif op == "replace" and keys:
            doc[draw(st.sampled_from(keys))] = draw(ANY_JSON)
        elif op == "add":
            doc[draw(TEXT)] = draw(ANY_JSON)
        else:
            inner = [
                k for k in ("features", "prediction", "segment") if isinstance(doc.get(k), dict)
            ]
            if inner:
                target = doc[draw(st.sampled_from(inner))]
                target[draw(st.sampled_from([*sorted(target), "score", "value", "label", "x"]))] = (
                    draw(ANY_JSON)
                )
    return doc


@FUZZ
@given(doc=mutated_docs(), how=HOW)
def test_mutated_valid_events(doc: dict[str, Any], how: str) -> None:
    """Structural mutations of valid events: rejected cleanly, or accepted and republishable."""
    result = check(encode(doc, how))
    if not isinstance(result, InvalidEvent):
        republish(result, doc["timestamp"])
        if isinstance(result, PredictionEvent):
            for key in ("score", "value"):
                if key in result.prediction:
                    assert math.isfinite(result.prediction[key])


@FUZZ
@given(
    doc=VALID_DOCS,
    edits=st.lists(
        st.tuples(st.sampled_from(["flip", "cut", "insert", "delete"]), st.integers(0, 10**6)),
        min_size=1,
        max_size=4,
    ),
    junk=st.binary(min_size=1, max_size=8),
)
def test_byte_mutations_of_valid_events(
    doc: dict[str, Any], edits: list[tuple[str, int]], junk: bytes
) -> None:
    """Flipped, cut, inserted and deleted bytes in a valid event never escape as a crash."""
    raw = bytearray(orjson.dumps(doc))
    for op, pos in edits:
        if not raw:
            break
        i = pos % len(raw)
        if op == "flip":
            raw[i] ^= 1 << (pos % 8)
        elif op == "cut":
            del raw[i:]
        elif op == "insert":
            raw[i:i] = junk
        else:
            del raw[i : i + 1 + pos % 3]
    check(bytes(raw))


@FUZZ
@given(
    depth=st.integers(1, 5000),
    opener=st.sampled_from([("[", "]"), ('{"a":', "}")]),
    where=st.sampled_from(["top", "feature", "score", "schema"]),
)
def test_deep_nesting(depth: int, opener: tuple[str, str], where: str) -> None:
    """Nesting far beyond any real event (at top level or inside fields) is rejected cleanly."""
    open_, close = opener
    nest = open_ * depth + "1" + close * depth
    if where == "top":
        text = nest
    elif where == "feature":
        text = (
            '{"schema":"driftwarden.prediction/v1","prediction_id":"p","model":"m",'
            '"model_version":"1","timestamp":"2026-01-01T00:00:00Z","prediction":{"label":1},'
            f'"features":{{"x":{nest}}}}}'
        )
    elif where == "score":
        text = (
            '{"schema":"driftwarden.prediction/v1","prediction_id":"p","model":"m",'
            '"model_version":"1","timestamp":"2026-01-01T00:00:00Z","features":{},'
            f'"prediction":{{"score":{nest}}}}}'
        )
    else:
        text = f'{{"schema":{nest}}}'
    result = check(text.encode())
    assert isinstance(result, InvalidEvent)


NUMBER_TEXT = st.one_of(
    st.integers(1, 400).map(lambda n: "9" * n),
    st.integers(1, 400).map(lambda n: "-" + "1" * n),
    st.integers(-2000, 2000).map(lambda e: f"1e{e}"),
    st.integers(1, 400).map(lambda n: "0." + "0" * n + "1"),
    st.sampled_from(
        ["NaN", "-Infinity", "Infinity", "1E400", "-0", "-0.0", "1.7976931348623157e309"]
    ),
)


@FUZZ
@given(
    number=NUMBER_TEXT,
    field=st.sampled_from(["score", "value", "label", "feature", "model_version", "timestamp"]),
)
def test_huge_and_odd_numbers(number: str, field: str) -> None:
    """Huge, tiny and non-finite number literals in every numeric slot: never a crash or NaN."""
    body = (
        '{"schema":"driftwarden.prediction/v1","prediction_id":"p","model":"m",'
        '"model_version":MV,"timestamp":TS,"features":{"x":FEAT},'
        '"prediction":{"label":LABEL,"score":SCORE,"value":VALUE}}'
    )
    slots = {
        "MV": '"7"',
        "TS": '"2026-01-01T00:00:00Z"',
        "FEAT": "1",
        "LABEL": "1",
        "SCORE": "0.5",
        "VALUE": "0.5",
    }
    slot = {
        "score": "SCORE",
        "value": "VALUE",
        "label": "LABEL",
        "feature": "FEAT",
        "model_version": "MV",
        "timestamp": "TS",
    }[field]
    slots[slot] = number
    for name, text in slots.items():
        body = body.replace(name, text)
    result = check(body.encode())
    if isinstance(result, PredictionEvent):
        for v in (*result.features.values(), *result.prediction.values()):
            assert not (isinstance(v, float) and not math.isfinite(v))
        republish(result, "2026-01-01T00:00:00Z")


LIMIT = 3 * 1024 * 1024  # "multi-MB": a daemon configured with limits.max_message_bytes = 3 MiB


@settings(FUZZ, max_examples=25)
@given(delta=st.integers(-3000, 3000), kind=st.sampled_from(["feature", "id", "segment"]))
def test_messages_near_the_size_limit(delta: int, kind: str) -> None:
    """A valid event of limit±3000 bytes is accepted iff it fits; otherwise the reason says so."""
    doc: dict[str, Any] = {
        "schema": PREDICTION_SCHEMA,
        "prediction_id": "p-1",
        "model": "churn",
        "model_version": "7",
        "timestamp": "2026-11-26T10:15:00Z",
        "features": {"plan": "pro"},
        "prediction": {"label": 1, "score": 0.8},
        "segment": {},
    }
    base = len(orjson.dumps(doc))
    pad = "é" * ((LIMIT + delta - base) // 2)  # two UTF-8 bytes per character
    if kind == "feature":
        doc["features"]["notes"] = pad
    elif kind == "segment":
        doc["segment"]["notes"] = pad
    else:
        doc["prediction_id"] = pad  # an over-long id: invalid at any size
    raw = orjson.dumps(doc)
    result = check(raw, max_bytes=LIMIT)
    if len(raw) > LIMIT:
        assert isinstance(result, InvalidEvent) and f"over the {LIMIT}-byte limit" in str(result)
    elif kind == "id":
        assert isinstance(result, InvalidEvent) and "prediction_id" in str(result)
    else:
        assert isinstance(result, PredictionEvent) and len(raw) > LIMIT - 4000


def test_size_limit_boundary_is_exact() -> None:
    """A message of exactly max_bytes is decoded; one byte more is rejected."""
    raw = prediction_event(
        "m", "1", {"x": 1}, {"label": 1}, prediction_id="p", timestamp="2026-01-01T00:00:00Z"
    )
    assert isinstance(check(raw, max_bytes=len(raw)), PredictionEvent)
    assert isinstance(check(raw, max_bytes=len(raw) - 1), InvalidEvent)


# --- round trips through the client ----------------------------------------------------------------


@FUZZ
@given(doc=prediction_docs())
def test_valid_predictions_round_trip_through_client(doc: dict[str, Any]) -> None:
    """prediction_event(...) of valid fields decodes to exactly those fields."""
    raw = prediction_event(
        doc["model"],
        doc["model_version"],
        doc["features"],
        doc["prediction"],
        segment=doc["segment"],
        prediction_id=doc["prediction_id"],
        timestamp=doc["timestamp"],
    )
    event = decode(raw, expect=PREDICTION_SCHEMA)
    assert isinstance(event, PredictionEvent)
    assert (event.model, event.model_version, event.prediction_id) == (
        doc["model"],
        doc["model_version"],
        doc["prediction_id"],
    )
    assert event.features == doc["features"] and event.prediction == doc["prediction"]
    assert event.segment == doc["segment"]
    when = datetime.fromisoformat(doc["timestamp"].replace("Z", "+00:00"))
    assert event.timestamp == when.timestamp()
    republish(event, doc["timestamp"])
    # The decoder's own time formatting reads back to the same instant (to the millisecond).
    again = decode(label_event("m", "p", 1, timestamp=format_time(event.timestamp)))
    assert 0 <= event.timestamp - again.timestamp < 1e-3


@FUZZ
@given(doc=label_docs())
def test_valid_labels_round_trip_through_client(doc: dict[str, Any]) -> None:
    """label_event(...) of valid fields decodes to exactly those fields."""
    raw = label_event(doc["model"], doc["prediction_id"], doc["label"], timestamp=doc["timestamp"])
    event = decode(raw, expect=LABEL_SCHEMA)
    assert isinstance(event, LabelEvent)
    assert (event.model, event.prediction_id, event.label) == (
        doc["model"],
        doc["prediction_id"],
        doc["label"],
    )
    assert type(event.label) is type(doc["label"])


# --- regressions: inputs the fuzzers found that once escaped as other exceptions ---------------


@pytest.mark.parametrize("stamp", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_accepted_timestamps_can_be_formatted(stamp: str) -> None:
    """Every timestamp decode accepts can be written back with format_time."""
    raw = label_event("m", "p", 1, timestamp="2026-01-01T00:00:00Z").replace(
        b"2026-01-01T00:00:00Z", stamp.encode()
    )
    result = check(raw)
    if isinstance(result, LabelEvent):
        format_time(result.timestamp)


@pytest.mark.parametrize("value", ["\ud800", 2**70, float("nan")], ids=["surrogate", "int", "nan"])
def test_client_refuses_unencodable_features_with_invalid_event(value: Any) -> None:
    """The client helper reports a feature it cannot publish as InvalidEvent."""
    with pytest.raises(InvalidEvent):
        prediction_event("m", "1", {"x": value}, {"label": 1}, timestamp="2026-01-01T00:00:00Z")
