"""The consumer-lag gauge: per owned (topic, partition), the records between the next one the
daemon will process and the partition's end as the source last saw it. And the gauge of the
partitions a replica holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from driftwarden.daemon import runner
from driftwarden.daemon.app import build_daemon
from driftwarden.daemon.settings import load_settings
from driftwarden.daemon.sinks import MemorySink

ROOT = Path(__file__).resolve().parents[2]


def _lag(daemon: object, topic: str, partition: int) -> float | None:
    return daemon.metrics.registry.get_sample_value(  # type: ignore[attr-defined]
        "driftwarden_consumer_lag", {"topic": topic, "partition": str(partition)}
    )


def _daemon(tmp_path: Path) -> Any:
    """The embedded daemon on the example events (file source, one partition)."""
    cfg = tmp_path / "driftwarden.yaml"
    cfg.write_text(
        f"source: file\nfile: {{events: {ROOT / 'config/examples/events.jsonl.gz'}}}\n"
        f"policies: {ROOT / 'config/embedded/policies'}\nstate: {{dir: {tmp_path / 'state'}}}\n"
        "http: {enabled: false}\n"
    )
    return build_daemon(load_settings(cfg, env={}), sink=MemorySink())


def test_lag_is_the_distance_to_the_end_and_leaves_with_the_partition(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "LAG_EVERY_S", 0.0)  # the run loop reports at every turn
    daemon = _daemon(tmp_path)
    ends = {("file", 0): 12_345}
    daemon.source.end_offsets = lambda: dict(ends)  # type: ignore[method-assign]
    daemon.report_lag()
    assert _lag(daemon, "file", 0) is None  # nothing processed yet: no next offset to measure

    daemon.run(max_events=5_000)
    assert _lag(daemon, "file", 0) == 12_345 - 5_000

    ends.clear()  # an end the source no longer knows is left out, not reported as 0
    daemon.report_lag()
    assert _lag(daemon, "file", 0) is None

    ends[("file", 0)] = 20_000
    daemon.report_lag()
    assert _lag(daemon, "file", 0) == 20_000 - 5_000
    daemon.revoke([0])  # the partition went to another replica: its series goes too
    daemon.report_lag()
    assert _lag(daemon, "file", 0) is None


def test_the_assigned_partitions_gauge_follows_assignments_and_revocations(
    tmp_path: Path,
) -> None:
    daemon = _daemon(tmp_path)

    def held() -> float | None:
        return daemon.metrics.registry.get_sample_value("driftwarden_assigned_partitions")

    held_at_start = held()
    daemon.assign([1, 2])
    assert held() == held_at_start + 2
    daemon.revoke([1])
    assert held() == held_at_start + 1
    daemon.revoke([0, 2])
    assert held() == 0
