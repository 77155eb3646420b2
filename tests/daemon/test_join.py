"""The prediction ⋈ label join: early and late labels, TTL, bounds, exact counters, state."""

from __future__ import annotations

import orjson
import pytest
import zstandard

from driftwarden.daemon.join import COMPACT_MIN, JoinBuffer


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
    """Entries older than the TTL behind the other side's watermark expire and are counted
    once."""
    j = JoinBuffer(ttl_s=10)
    j.add_prediction("a", rec("a", 0.0))
    j.add_label("z", 1, 1.0)
    j.add_prediction("b", rec("b", 20.0))  # predictions at 20 → labels before 10 expire
    c = j.counters
    assert (c.expired_unlabeled, c.orphan_labels) == (0, 1)  # "a" waits for the labels
    assert j.add_label("a", 1, 21.0) is None  # too late: now an orphan-in-waiting
    assert (c.expired_unlabeled, c.orphan_labels) == (1, 1)
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


def _wide_event(i: int) -> bytes:
    """A prediction event as producers send it: 20 numeric and 5 categorical features."""
    feats: dict[str, object] = {
        f"num_{k}": round((i * 7919 + k * 104729) % 10007 / 997.0, 4) for k in range(20)
    }
    feats.update({f"cat_{k}": ("a", "b", "c", "d")[(i + k) % 4] for k in range(5)})
    return orjson.dumps(
        {
            "schema": "driftwarden.prediction/v1",
            "prediction_id": f"p{i}",
            "model": "m",
            "model_version": "3",
            "timestamp": "2026-11-26T10:15:00Z",
            "features": feats,
            "prediction": {"score": round(i % 97 / 97, 4), "label": i % 2},
            "segment": {"tier": ("free", "pro", "enterprise")[i % 3]},
        }
    )


def _feed(j: JoinBuffer, lo: int, hi: int) -> None:
    for i in range(lo, hi):
        raw = _wide_event(i)
        doc = orjson.loads(raw)
        record = {
            "prediction_id": doc["prediction_id"],
            "model_version": doc["model_version"],
            "timestamp": float(i),
            "features": doc["features"],
            "prediction": doc["prediction"],
            "segment": doc["segment"],
        }
        j.add_prediction(f"p{i}", record, raw)


def _held_bytes(j: JoinBuffer) -> int:
    return sum(len(blob) for _, blob in j._predictions.values())


def test_compacted_predictions_join_as_before_in_under_40_percent_of_the_bytes() -> None:
    """compact() compresses what waits; every later match gives the same record as a buffer
    that never compressed, and the held bytes fall below 40 %. Predictions added afterwards
    stay as they are until the next compaction, which takes only them."""
    plain, packed = JoinBuffer(ttl_s=1e9, compress=False), JoinBuffer(ttl_s=1e9)
    for j in (plain, packed):
        _feed(j, 0, 300)
    assert plain.compact() == 0 and plain.compressed_predictions == 0
    assert packed.compact() == 300 and packed.compressed_predictions == 300
    assert _held_bytes(packed) < 0.4 * _held_bytes(plain)
    assert packed.compact() == 0  # nothing new
    for j in (plain, packed):
        _feed(j, 300, 350)
    assert packed.compressed_predictions == 300 and packed.compact() == 50
    for i in (0, 1, 299, 300, 349, 150):
        got = packed.add_label(f"p{i}", i % 2, 1000.0 + i)
        assert got is not None and got == plain.add_label(f"p{i}", i % 2, 1000.0 + i)
    assert packed.counters == plain.counters and packed.pending_predictions == 344


def test_compaction_waits_for_enough_predictions_to_train_on() -> None:
    """Fewer than COMPACT_MIN waiting: nothing is compressed (no dictionary from too few)."""
    j = JoinBuffer(ttl_s=1e9)
    _feed(j, 0, COMPACT_MIN - 1)
    assert j.compact() == 0 and j.compressed_predictions == 0 and j.state()["dictionary"] is None
    _feed(j, COMPACT_MIN - 1, COMPACT_MIN)
    assert j.compact() == COMPACT_MIN and j.state()["dictionary"] is not None


def test_compacted_state_round_trips_and_is_smaller() -> None:
    """A state with compressed predictions survives a JSON round trip (and an in-memory
    hand-over): the restored buffer matches and compacts as the original; its JSON is less
    than half the size of the uncompressed state's. A buffer restored with compress=False
    still reads the compressed ones; compressed predictions without a dictionary are refused."""
    a, plain = JoinBuffer(ttl_s=1e9), JoinBuffer(ttl_s=1e9, compress=False)
    for j in (a, plain):
        _feed(j, 0, 200)
    a.compact()
    _feed(a, 200, 210)  # some not compressed yet
    _feed(plain, 200, 210)
    text = orjson.dumps(a.state())
    assert len(text) < 0.5 * len(orjson.dumps(plain.state()))
    plain_state = orjson.loads(orjson.dumps(plain.state()))
    for restored in (
        JoinBuffer.from_state(orjson.loads(text), ttl_s=1e9, max_entries=a.max_entries),
        JoinBuffer.from_state(a.state(), ttl_s=1e9, max_entries=a.max_entries),
        JoinBuffer.from_state(
            orjson.loads(text), ttl_s=1e9, max_entries=a.max_entries, compress=False
        ),
    ):
        assert restored.compressed_predictions == 200
        assert orjson.dumps(restored.state()) == text
        twin = JoinBuffer.from_state(plain_state, ttl_s=1e9, max_entries=10**6, compress=False)
        for i in (5, 205):
            got = restored.add_label(f"p{i}", 1, 500.0)
            assert got is not None and got == twin.add_label(f"p{i}", 1, 500.0)
        assert restored.compact() == (9 if restored.compress else 0)
    broken = orjson.loads(text)
    broken["dictionary"] = None
    with pytest.raises(ValueError, match="compressed predictions but no dictionary"):
        JoinBuffer.from_state(broken, ttl_s=1e9, max_entries=10)


def test_a_dictionary_zstd_cannot_train_falls_back_to_raw_content(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When zstd refuses to train on the samples, the samples' own text is the dictionary:
    compaction still shrinks the buffer and every match is unchanged, across a round trip."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise zstandard.ZstdError("cannot train dict")

    monkeypatch.setattr(zstandard, "train_dictionary", refuse)
    plain, packed = JoinBuffer(ttl_s=1e9, compress=False), JoinBuffer(ttl_s=1e9)
    for j in (plain, packed):
        _feed(j, 0, 100)
    assert packed.compact() == 100
    assert _held_bytes(packed) < 0.5 * _held_bytes(plain)
    restored = JoinBuffer.from_state(
        orjson.loads(orjson.dumps(packed.state())), ttl_s=1e9, max_entries=10**6
    )
    for i in range(100):
        assert restored.add_label(f"p{i}", 0, 1e4) == plain.add_label(f"p{i}", 0, 1e4)


def test_a_damaged_kept_prediction_is_dropped_with_its_label_and_counted() -> None:
    """A checkpoint whose kept copy of a waiting prediction is damaged (a compressed frame
    with a flipped byte, or an uncompressed one that is no longer the event's JSON) still
    loads; when that prediction's label comes, both are dropped and counted as
    ``unreadable_predictions``, and every other prediction joins as before."""
    import base64

    plain, packed = JoinBuffer(ttl_s=1e9, compress=False), JoinBuffer(ttl_s=1e9)
    for j in (plain, packed):
        _feed(j, 0, 100)
    packed.compact()
    state = orjson.loads(orjson.dumps(packed.state()))
    for entry in state["predictions"]:
        if entry[0] == "p7":
            frame = bytearray(base64.b64decode(entry[2]))
            frame[len(frame) // 2] ^= 0xFF
            entry[2] = base64.b64encode(bytes(frame)).decode()
        if entry[0] == "p50":
            entry[2] = {"features": {}}  # kept uncompressed, and not a prediction event
    restored = JoinBuffer.from_state(state, ttl_s=1e9, max_entries=200_000)

    assert restored.add_label("p7", 1, 2000.0) is None
    assert restored.add_label("p50", 1, 2000.0) is None
    assert restored.counters.unreadable_predictions == 2
    for i in (0, 6, 8, 99):
        got = restored.add_label(f"p{i}", i % 2, 1000.0 + i)
        assert got is not None and got == plain.add_label(f"p{i}", i % 2, 1000.0 + i)
    assert restored.counters.matched == plain.counters.matched == 4
    assert restored.add_label("p7", 1, 2001.0) is None  # its prediction is gone: the label waits
    assert restored.pending_predictions == 100 - 6


def _within(a: list, b: list, lead: float, seeds: int = 10) -> list[list]:
    """Merges of two time-ordered sequences (kind, id, time) in which neither is read more
    than ``lead`` of event time ahead of the other: each in its own order, shifted by up to
    ``lead`` either way, with some jitter."""
    import random

    out = []
    for shift in (-0.95, -0.5, 0.0, 0.5, 0.95):
        for seed in range(seeds):
            rng = random.Random(seed)
            jitter = 0.0 if seed == 0 else 0.04
            keyed = [(e[2] + shift * lead + rng.uniform(-jitter, jitter) * lead, 0, e) for e in a]
            keyed += [(e[2], 1, e) for e in b]
            # Stable per sequence: a sequence's keys grow with its times (shifts are shared,
            # the jitter is far below the spacing of the test's events).
            out.append([e for _, _, e in sorted(keyed, key=lambda k: (k[0], k[1]))])
    return out


def test_matches_do_not_depend_on_how_the_two_topics_interleave() -> None:
    """Each topic in its own (event-time) order, merged in any interleaving where neither is
    read more than the TTL ahead of the other (a catch-up, a slow partition, a restart): the
    same predictions are matched, exactly those whose label comes within the TTL of them,
    and once both topics are past every TTL the counters are the same too."""
    ttl = 100.0
    preds = [("P", f"p{i}", 10.0 * i) for i in range(60)]
    delays = {f"p{i}": float((i * 37) % 160) for i in range(60) if i % 7}  # 0-150 s late
    labels = sorted(
        [("L", pid, 10.0 * int(pid[1:]) + d) for pid, d in delays.items()]
        + [("L", f"x{i}", 50.0 * i) for i in range(8)],  # labels of unknown predictions
        key=lambda e: e[2],
    )
    expected = {pid for pid, d in delays.items() if d <= ttl}
    assert 0 < len(expected) < len(delays)
    results = set()
    for order in _within(preds, labels, ttl):
        assert [e for e in order if e[0] == "P"] == preds  # each topic in its own order
        j = JoinBuffer(ttl_s=ttl)
        joined = set()
        for kind, pid, ts in order:
            r = j.add_prediction(pid, rec(pid, ts)) if kind == "P" else j.add_label(pid, 0, ts)
            if r is not None:
                joined.add(r["prediction_id"])
        assert joined == expected
        j.add_prediction("end", rec("end", 1e6))
        j.add_label("end-label", 0, 1e6)
        results.add(tuple(sorted(j.counters.as_dict().items())))
    assert len(results) == 1
    counters = dict(results.pop())
    assert counters["matched"] == len(expected)
    assert counters["expired_unlabeled"] == 60 - len(expected)
    assert counters["orphan_labels"] == 8 + len(delays) - len(expected)


def test_a_prediction_waits_for_the_label_topic_not_for_newer_predictions() -> None:
    """The predictions topic read a TTL ahead of the labels topic does not expire the
    waiting predictions: only the labels passing a prediction's time plus the TTL does (and
    likewise only newer predictions expire a waiting label)."""
    day = 86400.0
    j = JoinBuffer(ttl_s=7 * day)
    j.add_prediction("p1", rec("p1", 0.0))
    j.add_prediction("p2", rec("p2", 8 * day))
    assert j.pending_predictions == 2 and j.counters.expired_unlabeled == 0
    joined = j.add_label("p1", 1, 1 * day)
    assert joined is not None and joined["label"] == 1
    j.add_label("x", 0, 9 * day)  # the labels are past p1 + TTL, not past p2 + TTL
    assert j.pending_predictions == 1 and j.counters.expired_unlabeled == 0
    j.add_label("y", 0, 15 * day + 1)  # past p2 + TTL
    assert j.pending_predictions == 0 and j.counters.expired_unlabeled == 1
    assert j.pending_labels == 2  # x and y wait: no prediction is past their time + TTL
    j.add_prediction("p3", rec("p3", 16 * day + 1))  # past x + TTL
    assert j.pending_labels == 1 and j.counters.orphan_labels == 1


def test_redelivered_copies_after_a_match_are_duplicates() -> None:
    """A prediction or label delivered again after its pair was matched (an at-least-once
    producer's retry) is counted as a duplicate: it neither waits (to expire as unlabeled or
    orphan later) nor joins a second time."""
    for seq, dups in (
        ("PLP", (1, 0)),
        ("PLL", (0, 1)),
        ("PLPL", (1, 1)),
        ("LPLP", (1, 1)),
        ("PPLL", (1, 1)),
        ("LLPP", (1, 1)),
    ):
        j = JoinBuffer(ttl_s=100)
        joined = 0
        for kind in seq:
            r = j.add_prediction("a", rec("a", 1.0)) if kind == "P" else j.add_label("a", 0, 5.0)
            joined += r is not None
        j.add_prediction("later", rec("later", 1000.0))  # both topics past the TTL
        j.add_label("later-label", 0, 1000.0)
        c = j.counters
        assert joined == 1 and (c.duplicate_predictions, c.duplicate_labels) == dups, seq
        assert (c.expired_unlabeled, c.orphan_labels) == (0, 0), seq


def test_a_topic_that_stops_leaves_the_other_two_ttls_of_its_entries() -> None:
    """A model whose labels stop (or never come): its predictions expire by their own clock
    two TTLs behind, not only when join.max_entries evicts them (the labels' clock no longer
    moves); labels whose predictions stopped likewise."""
    j = JoinBuffer(ttl_s=10.0)
    for i in range(100):
        j.add_prediction(f"p{i}", rec(f"p{i}", float(i)))
    assert j.pending_predictions == 21  # 79..99: within two TTLs of 99
    assert j.counters.expired_unlabeled == 79
    k = JoinBuffer(ttl_s=10.0)
    for i in range(100):
        k.add_label(f"q{i}", 0, float(i))
    assert k.pending_labels == 21 and k.counters.orphan_labels == 79


def test_matched_ids_are_forgotten_after_the_ttl_and_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The ids of matched pairs are kept until both topics are a TTL past the pair (then a
    copy is a new prediction again), and at most ``MATCHED_KEEP`` of them, the oldest first."""
    from driftwarden.daemon import join

    monkeypatch.setattr(join, "MATCHED_KEEP", 3)
    j = JoinBuffer(ttl_s=10, max_entries=3)
    j.add_prediction("a", rec("a", 0.0))
    j.add_label("a", 1, 2.0)
    j.add_prediction("b", rec("b", 13.0))  # labels still at 2: "a" is remembered
    assert j.add_label("a", 1, 3.0) is None and j.counters.duplicate_labels == 1
    j.add_label("z", 0, 12.5)  # both topics past 2 + 10: "a" is forgotten
    assert j.add_prediction("a", rec("a", 13.0)) is None
    assert j.counters.duplicate_predictions == 0 and j.pending_predictions == 2
    k = JoinBuffer(ttl_s=1e9, max_entries=3)
    for i in range(5):
        k.add_prediction(f"p{i}", rec(f"p{i}", float(i)))
        k.add_label(f"p{i}", 0, float(i))
    assert k.add_prediction("p0", rec("p0", 0.0)) is None  # evicted: a new prediction
    assert k.add_prediction("p4", rec("p4", 4.0)) is None  # remembered: a duplicate
    assert k.counters.duplicate_predictions == 1 and k.pending_predictions == 1


def test_version_4_state_loads_with_its_one_watermark_for_both_topics() -> None:
    """A version 4 state (one watermark for both topics, no matched ids) restores: its
    watermark is each topic's, and the restored buffer expires and matches as the new one."""
    j = JoinBuffer(ttl_s=10)
    j.add_prediction("a", rec("a", 5.0))
    j.add_label("z", 0, 8.0)
    state = orjson.loads(orjson.dumps(j.state()))
    assert state["version"] == 5 and state["matched"] == []
    assert (state["pred_watermark"], state["label_watermark"]) == (5.0, 8.0)
    old = {k: v for k, v in state.items() if k not in ("pred_watermark", "label_watermark")}
    del old["matched"]
    old.update(version=4, watermark=8.0)
    restored = JoinBuffer.from_state(old, ttl_s=10, max_entries=10)
    assert (restored.pred_watermark, restored.label_watermark) == (8.0, 8.0)
    restored.add_label("y", 0, 15.5)  # labels past a + TTL
    assert restored.counters.expired_unlabeled == 1 and restored.pending_predictions == 0
    matched = JoinBuffer(ttl_s=10)
    matched.add_prediction("m", rec("m", 1.0))
    matched.add_label("m", 0, 2.0)
    again = JoinBuffer.from_state(
        orjson.loads(orjson.dumps(matched.state())), ttl_s=10, max_entries=10
    )
    assert again.add_prediction("m", rec("m", 1.0)) is None
    assert again.counters.duplicate_predictions == 1
