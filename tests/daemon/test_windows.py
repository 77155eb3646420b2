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
    assert fed + w.late == len(ts)


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
