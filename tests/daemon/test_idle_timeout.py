"""``--idle-timeout`` counts from the assignment (or the first record): a daemon whose group is
already caught up gets no record at all, and must still stop once idle that long — it ran until
``--timeout`` before."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from driftwarden.daemon.sources import RawRecord, Source
from tests.daemon.embedded import embedded_daemon


class CaughtUp(Source):
    """An endless source with nothing new (a consumer group at the end of its partitions)."""

    roles: dict[str, str | None] = {"file": None}

    def __init__(self) -> None:
        self.assigned: Any = None

    def poll(self, max_records: int, timeout_s: float) -> list[RawRecord]:
        time.sleep(min(timeout_s, 0.05))
        return []

    def seek(self, offsets: dict[tuple[str, int], int]) -> None:
        self.assigned = offsets


def _daemon(tmp_path: Path) -> Any:
    daemon = embedded_daemon(tmp_path)
    daemon.source = CaughtUp()
    return daemon


def test_a_caught_up_daemon_stops_once_idle_after_its_assignment(tmp_path: Path) -> None:
    daemon = _daemon(tmp_path)
    assert daemon.units  # assigned
    t0 = time.monotonic()
    summary = daemon.run(idle_timeout_s=0.5, timeout_s=20)
    assert summary.stopped_by == "idle" and summary.records == 0
    assert time.monotonic() - t0 < 5


def test_before_any_assignment_idle_time_does_not_count(tmp_path: Path) -> None:
    """Joining a group takes a while: with no partition yet, only the timeout ends the run."""
    daemon = _daemon(tmp_path)
    daemon.units.clear()
    summary = daemon.run(idle_timeout_s=0.2, timeout_s=1.0)
    assert summary.stopped_by == "timeout"
