"""``checkpoint.max_share``: count- and time-triggered checkpoints keep a pause after them in
proportion to how long they took, so a large state cannot eat the daemon's time. The pause
moves only checkpoint boundaries: the windows and decisions published are the same."""

from __future__ import annotations

import gzip
import time
from pathlib import Path
from typing import Any

import pytest

from driftwarden.daemon.app import build_daemon
from driftwarden.daemon.runner import Daemon
from driftwarden.daemon.settings import ConfigError, load_settings
from driftwarden.daemon.sinks import MemorySink

ROOT = Path(__file__).resolve().parents[2]
SAVE_S = 0.05  # each checkpoint save is slowed to at least this
EVENTS_FILE = ROOT / "config/examples/events.jsonl.gz"  # ~48 000 events with an incident


def _daemon(tmp_path: Path, name: str, share: float) -> tuple[Daemon, MemorySink]:
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(
        f"source: file\nfile: {{events: {EVENTS_FILE}}}\n"
        f"policies: {ROOT / 'config/embedded/policies'}\n"
        f"state: {{dir: {tmp_path / name}}}\n"
        f"checkpoint: {{every_events: 500, every: 1h, max_share: {share}}}\n"
        "kafka: {max_poll_records: 50}\nhttp: {enabled: false}\n"
    )
    sink = MemorySink()
    daemon = build_daemon(load_settings(cfg, env={}), sink=sink)
    assert daemon.store is not None
    save = daemon.store.save

    def slow_save(unit: str, payload: dict[str, Any]) -> None:
        time.sleep(SAVE_S)
        save(unit, payload)

    daemon.store.save = slow_save  # type: ignore[method-assign]
    return daemon, sink


def _published(sink: MemorySink) -> dict[str, list[Any]]:
    """Windows and decisions without the wall-clock fields."""
    out: dict[str, list[Any]] = {}
    for topic in sorted(sink.records):
        if topic.endswith(("windows", "decisions")):
            vals = sink.values(topic)
            for v in vals:
                for k in ("emitted_at", "decided_at", "published_at", "join"):
                    v.pop(k, None)
            out[topic] = vals
    return out


def test_a_slow_checkpoint_delays_the_next_and_changes_no_result(tmp_path: Path) -> None:
    """With max_share 1 a checkpoint follows every 500 records; with 0.1 each 50 ms save is
    followed by a pause of at least 0.45 s, so far fewer happen; the outputs are equal."""
    every, _ = _daemon(tmp_path, "every", 1.0)
    paced, _ = _daemon(tmp_path, "paced", 0.1)
    with gzip.open(EVENTS_FILE, "rb") as fh:
        events = sum(1 for _ in fh)
    sinks = []
    counts = []
    for daemon in (every, paced):
        summary = daemon.run()  # to the end of the file
        assert summary.valid + summary.invalid == events
        counts.append(summary.checkpoints)
        assert isinstance(daemon.sink, MemorySink)
        sinks.append(daemon.sink)
    assert counts[0] >= events // 500  # one per 500 records (and the final one)
    assert counts[1] < counts[0] / 2, counts
    a, b = _published(sinks[0]), _published(sinks[1])
    assert len(a["driftwarden.windows"]) >= 10 and a["driftwarden.decisions"]
    assert a == b


def test_the_pause_follows_the_last_checkpoint(tmp_path: Path) -> None:
    """The pause is d * (1 - share) / share of the last checkpoint's duration d; while it
    lasts no checkpoint is due, even past every_events."""
    daemon, _ = _daemon(tmp_path, "unit", 0.1)
    daemon.run(max_events=200)
    assert daemon._checkpoint_pause >= SAVE_S * 9
    daemon._since_checkpoint = 10_000
    assert not daemon._checkpoint_due()
    daemon._last_checkpoint -= daemon._checkpoint_pause
    assert daemon._checkpoint_due()
    whole, _ = _daemon(tmp_path, "whole", 1.0)
    whole.run(max_events=200)
    assert whole._checkpoint_pause == 0.0


def test_waiting_for_the_broker_does_not_lengthen_the_pause(tmp_path: Path) -> None:
    """A checkpoint that waited a second for its outputs to be acknowledged and another for the
    commit (a broker outage) keeps the pause of its own work: the state writes. (Counting the
    waits, the next commit came 18 s or more later; in the broker-restart fault test, minutes.)"""
    daemon, _ = _daemon(tmp_path, "outage", 0.1)
    flush, commit = daemon.sink.flush, daemon.source.commit

    def slow_flush() -> None:
        time.sleep(1.0)
        flush()

    def slow_commit(offsets: Any, *, wait: bool = True) -> None:
        time.sleep(1.0)
        commit(offsets, wait=wait)

    daemon.sink.flush = slow_flush  # type: ignore[method-assign]
    daemon.source.commit = slow_commit  # type: ignore[method-assign]
    daemon.run(max_events=200)
    assert SAVE_S * 9 <= daemon._checkpoint_pause < 2.0


@pytest.mark.parametrize("bad", ["0", "1.5", "-0.1", "often", "true"])
def test_max_share_must_be_in_0_1(tmp_path: Path, bad: str) -> None:
    """A share outside (0, 1] is a config error naming the key."""
    cfg = tmp_path / "driftwarden.yaml"
    cfg.write_text(f"checkpoint: {{max_share: {bad}}}\n")
    with pytest.raises(ConfigError, match=r"checkpoint.max_share: must be a number in \(0, 1\]"):
        load_settings(cfg, env={})


def test_a_store_waiting_for_its_broker_does_not_lengthen_the_pause(tmp_path: Path) -> None:
    """The same for the state writes: a store that spent a second waiting for the broker's
    acknowledgements (the Kafka state topic after an outage) reports it in ``waited_s``, and
    the pause keeps only the store's own work."""
    daemon, _ = _daemon(tmp_path, "state-outage", 0.1)
    store = daemon.store
    assert store is not None
    save_all = store.save_all

    def acked_late(units: Any) -> None:
        save_all(units)
        time.sleep(1.0)
        store.waited_s += 1.0

    store.save_all = acked_late  # type: ignore[method-assign]
    daemon.run(max_events=200)
    assert SAVE_S * 9 <= daemon._checkpoint_pause < 2.0
