"""The prediction ⋈ label join: early and late labels, TTL, bounds, exact counters, state."""

from __future__ import annotations

import orjson
import pytest

from driftwarden.daemon.join import JoinBuffer


def rec(pid: str, ts: float) -> dict:
    return {
        "prediction_id": pid,
        "timestamp": ts,
        "features": {"x": 1},
        "prediction": {"label": 1},
        "segment": {},
        "model_version": "1",
    }


def test_late_and_early_labels_match() -> None:
    """A label after its prediction and a label before it both produce one joined record."""
    j = JoinBuffer(ttl_s=100)
    assert j.add_prediction("a", rec("a", 1.0)) is None
    joined = j.add_label("a", 0, 50.0)
    assert joined is not None and joined["label"] == 0 and joined["timestamp"] == 50.0
    assert j.add_label("b", 1, 51.0) is None
    joined = j.add_prediction("b", rec("b", 49.0))
    assert joined is not None and joined["label"] == 1 and joined["timestamp"] == 51.0
    assert j.counters.matched == 2 and j.pending_labels == 0 and j.pending_predictions == 0


def test_ttl_expires_unlabeled_predictions_and_orphan_labels() -> None:
    """Entries older than the TTL behind the watermark expire and are counted once."""
    j = JoinBuffer(ttl_s=10)
    j.add_prediction("a", rec("a", 0.0))
    j.add_label("z", 1, 1.0)
    j.add_prediction("b", rec("b", 20.0))  # watermark 20 → horizon 10
    c = j.counters
    assert (c.expired_unlabeled, c.orphan_labels) == (1, 1)
    assert j.add_label("a", 1, 21.0) is None  # too late: now an orphan-in-waiting
    assert j.pending_predictions == 1 and j.pending_labels == 1


def test_max_entries_bounds_memory() -> None:
    """Past max_entries the oldest waiting prediction is evicted and counted."""
    j = JoinBuffer(ttl_s=1e9, max_entries=3)
    for i in range(5):
        j.add_prediction(str(i), rec(str(i), float(i)))
    assert j.pending_predictions == 3 and j.counters.expired_unlabeled == 2


def test_duplicates_are_counted_not_joined_twice() -> None:
    """A repeated prediction id is ignored and counted."""
    j = JoinBuffer()
    j.add_prediction("a", rec("a", 1.0))
    j.add_prediction("a", rec("a", 2.0))
    assert j.counters.duplicate_predictions == 1 and j.pending_predictions == 1


def test_state_round_trip_gives_identical_later_behaviour() -> None:
    """A JSON round trip of the state changes nothing about later matches and counters."""
    a = JoinBuffer(ttl_s=30)
    for i in range(10):
        a.add_prediction(f"p{i}", rec(f"p{i}", float(i)))
    a.add_label("q", 1, 5.0)
    b = JoinBuffer.from_state(
        orjson.loads(orjson.dumps(a.state())), ttl_s=30, max_entries=a.max_entries
    )
    for buf in (a, b):
        buf.add_label("p3", 0, 12.0)
        buf.add_prediction("q", rec("q", 4.0))
        buf.add_prediction("late", rec("late", 100.0))
    assert orjson.dumps(a.state()) == orjson.dumps(b.state())
    c = JoinBuffer.from_state(a.state(), ttl_s=30, max_entries=a.max_entries)
    assert orjson.dumps(c.state()) == orjson.dumps(a.state())


def _event(pid: str, ts: float, **extra: object) -> bytes:
    return orjson.dumps(
        {
            "schema": "driftwarden.prediction/v1",
            "prediction_id": pid,
            "model": "m",
            "model_version": "1",
            "timestamp": "2026-11-26T10:15:00Z",
            "features": {"x": 1},
            "prediction": {"label": 1},
            **extra,
        }
    )


def test_waiting_event_bytes_join_like_the_record() -> None:
    """A prediction kept as its event's bytes joins to the same record as one kept encoded."""
    by_record, by_event = JoinBuffer(ttl_s=100), JoinBuffer(ttl_s=100)
    by_record.add_prediction("a", rec("a", 3.0))
    by_event.add_prediction("a", rec("a", 3.0), _event("a", 3.0, segment=None))
    assert by_event.add_label("a", 0, 9.0) == by_record.add_label("a", 0, 9.0)
    # An integer model_version is text in records, as the decoder makes it.
    j = JoinBuffer(ttl_s=100)
    j.add_prediction("b", rec("b", 3.0), _event("b", 3.0, model_version=1))
    joined = j.add_label("b", 1, 4.0)
    assert joined is not None and joined["model_version"] == "1" and joined["segment"] == {}


def test_version_2_state_still_loads() -> None:
    """A version 2 state (records as JSON strings) restores and joins as before."""
    old = JoinBuffer(ttl_s=100)
    old.add_prediction("a", rec("a", 3.0))
    state = orjson.loads(orjson.dumps(old.state()))
    assert state["predictions"][0][2] == rec("a", 3.0)  # version 3: an embedded object
    state["version"] = 2
    state["predictions"] = [
        [pid, ts, orjson.dumps(doc).decode()] for pid, ts, doc in state["predictions"]
    ]
    restored = JoinBuffer.from_state(state, ttl_s=100, max_entries=10)
    assert restored.add_label("a", 0, 9.0) == old.add_label("a", 0, 9.0)
    state["version"] = 1
    with pytest.raises(ValueError, match="version 1 is unknown"):
        JoinBuffer.from_state(state, ttl_s=100, max_entries=10)
