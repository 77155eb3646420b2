"""A reference profile that cannot be loaded (registry down, a new version's profile not logged
yet) leaves the model unmonitored, but loses nothing the events already did: a window that
closed and was decided is published, and labels the join matched reach the labeled store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from driftwarden.daemon.events import PredictionEvent, decode
from driftwarden.daemon.monitor import ModelMonitor, ProfileMissing
from driftwarden.detectors.profile import ReferenceProfile
from driftwarden.policies.loader import load_policy_file
from tests.daemon.embedded import embedded_daemon

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ReferenceProfile.load(ROOT / "config" / "profiles" / "churn.json")


def _policy(tmp: Path) -> Any:
    path = tmp / "churn.yaml"
    path.write_text(
        f"""apiVersion: driftwarden/v1
kind: Policy
model: churn
reference: file:{ROOT / "config" / "profiles" / "churn.json"}
window: {{events: 60, labeled: {{events: 60}}}}
detectors:
  - {{name: quality, type: data_quality, min_samples: 30}}
rules:
  - {{name: broken-input, when: quality, severity: critical, actions: [{{alert: log}}]}}
receivers:
  log: {{type: log}}
""",
        encoding="utf-8",
    )
    return load_policy_file(path)


def _broken(pid: str, version: str) -> PredictionEvent:
    ev = decode(
        orjson.dumps(
            {
                "schema": "driftwarden.prediction/v1",
                "prediction_id": pid,
                "model": "churn",
                "model_version": version,
                "timestamp": "2026-11-26T10:15:00Z",
                "features": {"plan": "pro", "user_age": None, "monthly_spend": 0.0},
                "prediction": {"label": 0, "score": 0.05},
                "segment": {"customer_tier": "smb", "region": "eu"},
            }
        )
    )
    assert isinstance(ev, PredictionEvent)
    return ev


def test_a_window_decided_before_a_new_versions_profile_fails_is_returned(tmp_path: Path) -> None:
    down = {"2"}

    def loader(model: str, version: str | None) -> Any:
        if version in down:
            raise ProfileMissing("registry unreachable")
        return PROFILE

    mon = ModelMonitor("churn", _policy(tmp_path), loader, join_ttl_s=1e9, join_max_entries=1000)
    assert mon.process([_broken(f"p{i}", "1") for i in range(59)]).decisions == []
    # The window's 60th event is the new version: the window closes, is decided, and only
    # then is the new version's profile asked for (and fails).
    out = mon.process([_broken("p59", "2")])
    assert [(d.rule, d.status) for d in out.decisions] == [("broken-input", "firing")]
    assert len(out.windows) == 1
    # The next batch tries again and reports it, with what its events did.
    try:
        mon.process([_broken("p60", "2")])
    except ProfileMissing as exc:
        assert exc.output is not None and exc.output.labeled == []
    else:
        raise AssertionError("the missing profile was not reported")


def test_labels_matched_while_the_profile_is_missing_reach_the_labeled_store(
    tmp_path: Path,
) -> None:
    daemon = embedded_daemon(tmp_path, extra="checkpoint: {every_events: 1000000}\n")

    def no_profile(model: str, version: str | None) -> Any:
        raise ProfileMissing("registry unreachable")

    daemon.profile_loader = no_profile
    stored: list[dict[str, Any]] = []
    daemon.on_labeled = lambda model, rows, partition: stored.extend(rows)
    summary = daemon.run(max_events=6000)
    assert summary.records == 6000
    mon = daemon.units[0].models["churn"]
    assert not mon.detectors
    assert mon.join.counters.matched > 0
    assert len(stored) == mon.join.counters.matched
    assert daemon.units[0].unmonitored["churn"] == 6000 - summary.invalid
