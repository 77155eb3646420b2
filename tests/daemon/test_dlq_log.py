"""A flood of malformed events: every one reaches the dead-letter topic and the counters, but
the log carries the first few of each interval and then says how many it left out."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from driftwarden.daemon import runner
from driftwarden.daemon.sources import RawRecord
from tests.daemon.embedded import embedded_daemon


def test_dead_letters_are_all_kept_and_their_log_lines_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = embedded_daemon(tmp_path)
    sink = daemon.sink
    bad = [RawRecord("file", 0, i, None, b"{not json") for i in range(100)]
    with capture_logs() as logs:
        daemon.process(bad)
        lines = [e for e in logs if e["event"] == "event sent to dead-letter topic"]
        assert len(lines) == runner.DLQ_LOG_BURST
        assert len(sink.records["driftwarden.dlq"]) == 100 and daemon.summary.invalid == 100

        monkeypatch.setattr(runner, "DLQ_LOG_EVERY_S", 0.0)  # the next interval has begun
        daemon.process([RawRecord("file", 0, 100, None, b"[]")])
        lines = [e for e in logs if e["event"] == "event sent to dead-letter topic"]
        assert lines[-1]["not_logged_before"] == 100 - runner.DLQ_LOG_BURST
        assert lines[-1]["offset"] == 100


def test_an_event_timed_far_ahead_of_its_kafka_timestamp_is_dead_lettered(tmp_path: Path) -> None:
    """A placeholder time (9999-12-31) or a typo in the year would move the model's windows and
    join years ahead: refused against the record's own Kafka timestamp (so replays refuse the
    same events), within limits.max_future_skew (1 d) accepted."""
    import gzip

    from tests.daemon.embedded import EVENTS

    daemon = embedded_daemon(tmp_path)
    with gzip.open(EVENTS) as f:
        good = f.readline().rstrip(b"\n")
    assert b'"timestamp":"2026-' in good.replace(b" ", b"")
    stamp = good.split(b'"timestamp":')[1][1:21].decode()
    from driftwarden.daemon.events import parse_time

    sent_ms = int(parse_time(stamp) * 1000)
    later = good.replace(stamp.encode(), b"9999-12-31T00:00:00Z")
    records = [
        RawRecord("file", 0, 0, None, good, sent_ms - 3_600_000),  # an hour early: fine
        RawRecord("file", 0, 1, None, later, sent_ms),
        RawRecord("file", 0, 2, None, later, None),  # no Kafka timestamp: not checked
    ]
    daemon.process(records)
    dlq = daemon.sink.records.get("driftwarden.dlq", [])
    assert len(dlq) == 1 and daemon.summary.invalid == 1
    assert b"max_future_skew" in dlq[0][1] and b'"offset":1' in dlq[0][1].replace(b" ", b"")
