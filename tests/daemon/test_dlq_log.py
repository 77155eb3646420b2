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
