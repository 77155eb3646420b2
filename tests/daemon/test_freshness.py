"""The freshness gauges: seconds since each owned model's last event and last label. A label
pipeline that stops while predictions flow shows in the label gauge alone; a model handed to
another replica leaves this one's gauges (no staleness alert from the old owner)."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from driftwarden.daemon import runner
from driftwarden.daemon.events import PREDICTION_SCHEMA
from driftwarden.daemon.sources import RawRecord
from tests.daemon.embedded import EVENTS, ROOT, embedded_daemon


def _gauge(daemon: object, name: str, model: str) -> float | None:
    return daemon.metrics.registry.get_sample_value(  # type: ignore[attr-defined]
        f"driftwarden_seconds_since_last_{name}", {"model": model}
    )


def test_labels_that_stop_show_while_predictions_flow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = embedded_daemon(tmp_path)
    assert daemon.report_freshness(0.0, 60.0) == []  # nothing read yet: no series
    assert _gauge(daemon, "event", "churn") is None

    clock = {"now": 1_000.0}
    monkeypatch.setattr(runner.time, "time", lambda: clock["now"])
    daemon.run(max_events=5_000)  # predictions and their labels
    assert daemon.summary.records == 5_000
    labels_read = daemon.units[0].models["churn"].labels
    assert labels_read > 0
    assert daemon.report_freshness(1_030.0, 60.0) == []
    assert _gauge(daemon, "event", "churn") == 30.0
    assert _gauge(daemon, "label", "churn") == 30.0

    # The label pipeline breaks: only predictions arrive from now on.
    with gzip.open(EVENTS, "rb") as f:
        lines = f.read().splitlines()[5_000:]
    predictions = [line for line in lines if PREDICTION_SCHEMA.encode() in line][:500]
    assert len(predictions) == 500
    clock["now"] = 2_000.0
    daemon.process([RawRecord("file", 0, 5_000 + i, None, v) for i, v in enumerate(predictions)])
    assert daemon.report_freshness(2_010.0, 60.0) == []  # events are fresh...
    assert _gauge(daemon, "event", "churn") == 10.0
    assert _gauge(daemon, "label", "churn") == 1_010.0  # ...labels are not
    assert daemon.units[0].models["churn"].labels == labels_read

    assert daemon.report_freshness(2_100.0, 60.0) == ["churn"]  # no events for 100 s

    daemon.revoke([0])  # the model went to another replica: this one stops reporting it
    assert daemon.report_freshness(9_000.0, 60.0) == []
    assert _gauge(daemon, "event", "churn") is None
    assert _gauge(daemon, "label", "churn") is None


def test_a_revoked_model_leaves_no_gauges(tmp_path: Path) -> None:
    """After a handover the old owner exports none of the model's gauges (detector statistics,
    triggered flags, join counters): a stale ``triggered 1`` would keep an alert firing."""
    daemon = embedded_daemon(tmp_path)
    daemon.run(max_events=20_000)
    assert daemon.summary.windows > 0

    def series(name: str) -> list[dict[str, str]]:
        return [
            s.labels
            for m in daemon.metrics.registry.collect()
            for s in m.samples
            if s.name == name and s.labels.get("model") == "churn"
        ]

    gauges = (
        "driftwarden_detector_statistic",
        "driftwarden_detector_triggered",
        "driftwarden_join",
    )
    assert all(series(g) for g in gauges)
    windows_before = series("driftwarden_windows_total")

    def detectors() -> set[str]:
        return {s["detector"] for s in series("driftwarden_detector_triggered")}

    assert {"scores", "drift"} <= detectors()
    # A reloaded policy without the `scores` detector: its gauges go, the others stay.
    policy = (ROOT / "config/embedded/policies/churn.yaml").read_text()
    policy = policy.replace(
        "file:../../profiles/churn.json", f"file:{ROOT / 'config/profiles/churn.json'}"
    )
    policy = policy.replace(
        "  - {name: scores, type: prediction_drift, method: js, threshold: 0.1}\n", ""
    )
    policy = policy.replace(
        "(drift or scores or enterprise_recall)", "(drift or enterprise_recall)"
    )
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "churn.yaml").write_text(policy)
    assert daemon.reload_policies(tmp_path / "policies") == []
    assert "scores" not in detectors() and "drift" in detectors()
    daemon.revoke([0])
    assert [g for g in gauges if series(g)] == []
    assert series("driftwarden_windows_total") == windows_before  # counters stay
