"""A flood of malformed events: every one reaches the dead-letter topic and the counters, but
the log carries the first few of each interval and then says how many it left out."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from driftwarden.daemon import runner
from driftwarden.daemon.app import build_daemon
from driftwarden.daemon.settings import load_settings
from driftwarden.daemon.sinks import MemorySink
from driftwarden.daemon.sources import RawRecord

ROOT = Path(__file__).resolve().parents[2]


def test_dead_letters_are_all_kept_and_their_log_lines_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "driftwarden.yaml"
    cfg.write_text(
        f"source: file\nfile: {{events: {ROOT / 'config/examples/events.jsonl.gz'}}}\n"
        f"policies: {ROOT / 'config/embedded/policies'}\nstate: {{dir: {tmp_path / 'state'}}}\n"
        "http: {enabled: false}\n"
    )
    sink = MemorySink()
    daemon = build_daemon(load_settings(cfg, env={}), sink=sink)
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
