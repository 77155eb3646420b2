"""``join.compress`` end to end: checkpoints compress the predictions still waiting for their
labels, a restart reads them back, and nothing a run produces differs from a run without it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from driftwarden.daemon.app import build_daemon
from driftwarden.daemon.join import COMPACT_MIN
from driftwarden.daemon.settings import load_settings
from driftwarden.daemon.sinks import MemorySink
from tests.daemon.embedded import comparable_state, embedded_config


def _daemon(tmp: Path, extra: str = "") -> Any:
    tmp.mkdir(exist_ok=True)
    cfg = embedded_config(tmp, extra="checkpoint: {every_events: 2000}\n" + extra)
    return build_daemon(load_settings(cfg, env={}), sink=MemorySink())


def _published(*daemons: Any) -> list[tuple[str, str | None, bytes]]:
    return sorted(
        (topic, key, value)
        for d in daemons
        for topic, records in d.sink.records.items()
        for key, value, _ in records
    )


def test_compressed_predictions_survive_a_restart_and_change_no_result(tmp_path: Path) -> None:
    """Half the example stream, a restart from the checkpoint, the other half: the waiting
    predictions were held compressed and the windows, decisions and final state equal those
    of one uninterrupted run with ``join.compress: false``."""
    first = _daemon(tmp_path / "on")
    first.run(max_events=24_000)
    join = first.units[0].models["churn"].join
    assert join.pending_predictions > COMPACT_MIN
    # Only those that came after the last checkpoint are not compressed.
    assert 0 < join.compressed_predictions <= join.pending_predictions
    first.checkpoint()
    assert join.compressed_predictions == join.pending_predictions

    second = _daemon(tmp_path / "on")  # restores the checkpoint
    assert second.units[0].models["churn"].join.compressed_predictions > COMPACT_MIN
    second.run()
    plain = _daemon(tmp_path / "off", "join: {compress: false}\n")
    plain.run()
    assert plain.units[0].models["churn"].join.compressed_predictions == 0

    assert second.summary.records + first.summary.records == plain.summary.records == 48_005
    assert first.summary.decisions + second.summary.decisions == plain.summary.decisions
    assert _published(first, second) == _published(plain)
    assert comparable_state(second.units[0].models["churn"].state()) == comparable_state(
        plain.units[0].models["churn"].state()
    )
