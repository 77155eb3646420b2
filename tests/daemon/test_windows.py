"""Tumbling windows on event time: counts, durations, lateness, empty windows, state."""

from __future__ import annotations

import orjson
import pytest

from driftwarden.daemon.windows import Windower, WindowSpec


def recs(*ts: float) -> list[dict]:
    return [{"timestamp": t} for t in ts]


def closes(steps: list) -> list[tuple[int, int]]:
    return [(c.index, c.count) for _, c in steps if c is not None]


def test_count_windows_close_every_n() -> None:
    """A count window closes after exactly N records, across batch boundaries."""
    w = Windower(WindowSpec(events=3))
    assert closes(w.add_many(recs(1, 2))) == []
    steps = w.add_many(recs(3, 4, 5, 6, 7))
    assert closes(steps) == [(0, 3), (1, 3)]
    assert sum(len(f) for f, _ in steps) == 5 and w.count == 1


def test_duration_windows_with_lateness_and_late_drops() -> None:
    """Windows close when the watermark passes end + lateness; later stragglers are counted late."""
    w = Windower(WindowSpec(duration_s=10, lateness_s=5))
    steps = w.add_many(recs(1, 2, 12, 9, 14))  # 9 is late but within lateness
    assert closes(steps) == []
    steps = w.add_many(recs(16))  # watermark 16 ≥ 10 + 5 → window 0 closes with 3 records
    assert closes(steps) == [(0, 3)]
    w.add_many(recs(8))  # window 0 is closed: late
    assert w.late == 1


def test_duration_windows_skip_empty_gaps() -> None:
    """A gap in traffic does not produce a run of empty windows."""
    w = Windower(WindowSpec(duration_s=10))
    steps = w.add_many(recs(1, 2, 105, 106, 300))
    assert closes(steps) == [(0, 2), (10, 2)]
    assert w.index == 30


def test_every_record_is_fed_once() -> None:
    """Whatever the order, each non-late record is fed exactly once."""
    w = Windower(WindowSpec(duration_s=5, lateness_s=3))
    ts = [0, 1, 7, 2, 6, 11, 8, 20, 13, 25, 19, 40]
    fed = sum(len(f) for f, _ in w.add_many(recs(*ts)))
    # 40 waits: window 7 is open until 43 (lateness) and windows are fed one at a time.
    assert fed + w.late + sum(map(len, w.future.values())) == len(ts)
    fed += sum(len(f) for f, _ in w.add_many([], watermark=1000.0))
    assert fed + w.late == len(ts) and not w.future


def test_state_round_trip() -> None:
    """Restoring the state continues exactly as the original."""
    a = Windower(WindowSpec(duration_s=10, lateness_s=2))
    a.add_many(recs(1, 5, 13, 11))
    b = Windower.from_state(a.spec, orjson.loads(orjson.dumps(a.state())))
    more = recs(14, 25, 3)
    assert closes(a.add_many(more)) == closes(b.add_many(more))
    assert a.state() == b.state()


def test_spec_needs_exactly_one_kind() -> None:
    """A window spec with both or neither of events and duration is refused."""
    with pytest.raises(ValueError, match="exactly one"):
        WindowSpec()
    with pytest.raises(ValueError, match="exactly one"):
        WindowSpec(events=1, duration_s=1)


def test_external_watermark_makes_windows_independent_of_interleaving() -> None:
    """Two in-order streams merged in any interleaving, watermark = the smaller of their
    progress: the windows and their contents never change."""
    import math
    import random

    a = [float(t) for t in range(0, 100, 2)]
    b = [float(t) for t in range(1, 100, 2)]
    results = set()
    for seed in range(6):
        rng = random.Random(seed)
        ia = ib = 0
        w = Windower(WindowSpec(duration_s=10))
        contents: list[tuple[int, int]] = []
        while ia < len(a) or ib < len(b):
            batch = []
            for _ in range(rng.randint(1, 9)):  # arbitrary batch boundaries
                if ia >= len(a) and ib >= len(b):
                    break
                if ib >= len(b) or (ia < len(a) and rng.random() < 0.5):
                    batch.append(a[ia])
                    ia += 1
                elif ib < len(b):
                    batch.append(b[ib])
                    ib += 1
            wm = min(a[ia - 1] if ia else -math.inf, b[ib - 1] if ib else -math.inf)
            steps = w.add_many(recs(*batch), watermark=wm)
            contents += [(c.index, c.count) for _, c in steps if c is not None]
        steps = w.add_many([], watermark=1000.0)
        contents += [(c.index, c.count) for _, c in steps if c is not None]
        assert w.late == 0
        results.add(tuple(contents))
    assert results == {tuple((k, 10) for k in range(10))}


def test_ordered_windows_feed_in_event_time_order_whatever_the_arrival() -> None:
    """An ordered window feeds its records sorted at close, and only then."""
    w = Windower(WindowSpec(duration_s=10, ordered=True))
    first = w.add_many([{"timestamp": t, "prediction_id": str(t)} for t in (5.0, 1.0, 3.0)])
    assert all(not feed for feed, _ in first)  # nothing fed before the close
    steps = w.add_many([{"timestamp": 12.0, "prediction_id": "x"}], watermark=11.0)
    fed = [r["timestamp"] for feed, c in steps if c is not None for r in feed]
    assert fed == [1.0, 3.0, 5.0]


def test_first_window_waits_for_the_watermark() -> None:
    """A record of a later window arriving first does not make earlier ones late."""
    w = Windower(WindowSpec(duration_s=10, ordered=True))
    w.add_many([{"timestamp": 25.0}], watermark=5.0)  # the other input is only at t=5
    steps = w.add_many([{"timestamp": 3.0}, {"timestamp": 14.0}], watermark=40.0)
    assert w.late == 0
    assert [(c.index, c.count) for _, c in steps if c is not None] == [(0, 1), (1, 1), (2, 1)]


def test_lateness_holds_for_a_window_after_an_empty_one() -> None:
    """After a window closes, the next one is the first whose end plus lateness the watermark
    has not passed, even when the window before it was empty and a record of a later one
    waits: a record within the lateness is kept, and the empty window is not reported."""
    w = Windower(WindowSpec(duration_s=10, lateness_s=5))
    steps = w.add_many(recs(1, 22))  # watermark 22: window 0 closes; window 1 open until 25
    steps += w.add_many(recs(18, 40))
    assert closes(steps) == [(0, 1), (1, 1), (2, 1)] and w.late == 0
    # An external watermark (the labeled stream), nothing waiting: the same.
    o = Windower(WindowSpec(duration_s=10, lateness_s=5, ordered=True))
    steps = o.add_many([{"timestamp": 1.0, "prediction_id": "a"}], watermark=1.0)
    steps += o.add_many([], watermark=22.0)
    steps += o.add_many([{"timestamp": 18.0, "prediction_id": "b"}], watermark=23.0)
    steps += o.add_many([], watermark=100.0)
    assert closes(steps) == [(0, 1), (1, 1)] and o.late == 0
    # Past the lateness, a gap is still jumped over in one go, with no empty windows.
    g = Windower(WindowSpec(duration_s=10, lateness_s=5))
    assert closes(g.add_many(recs(1, 2, 105, 106, 300))) == [(0, 2), (10, 2)]
    assert g.index == 29 and closes(g.add_many(recs(298))) == [] and g.late == 0


def test_a_record_ahead_of_the_watermark_does_not_close_the_windows_before_it() -> None:
    """With an external watermark, a record of a later window waiting does not make the
    windows between the closed one and it late: they are still open (no lateness)."""
    w = Windower(WindowSpec(duration_s=10, ordered=True))
    steps = w.add_many([{"timestamp": 5.0, "prediction_id": "a"}], watermark=5.0)
    steps += w.add_many([{"timestamp": 47.0, "prediction_id": "b"}], watermark=25.0)
    steps += w.add_many([{"timestamp": 27.0, "prediction_id": "c"}], watermark=30.0)
    steps += w.add_many([], watermark=100.0)
    assert closes(steps) == [(0, 1), (2, 1), (4, 1)] and w.late == 0
