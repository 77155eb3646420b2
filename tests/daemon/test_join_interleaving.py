"""End to end through a model's monitor: how the predictions and labels topics interleave (one
read hours ahead of the other: a catch-up, a slow labels partition, a restart) changes neither
which examples are joined nor the labeled windows they fall in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from driftwarden.daemon.client import label_event, prediction_event
from driftwarden.daemon.events import decode, format_time
from driftwarden.daemon.monitor import ModelMonitor
from driftwarden.detectors.profile import ReferenceProfile
from driftwarden.policies.loader import load_policy_file
from tests.daemon.embedded import ROOT


def _monitor(tmp: Path) -> ModelMonitor:
    path = tmp / "churn.yaml"
    path.write_text(
        f"""apiVersion: driftwarden/v1
kind: Policy
model: churn
reference: file:{ROOT / "config" / "profiles" / "churn.json"}
window: {{duration: 1h, labeled: {{duration: 1h}}}}
detectors:
  - {{name: scores, type: prediction_drift, method: js, threshold: 0.1}}
rules:
  - {{name: seen, when: scores.n >= 1, actions: [{{alert: log}}]}}
receivers:
  log: {{type: log}}
""",
        encoding="utf-8",
    )
    profile = ReferenceProfile.load(ROOT / "config" / "profiles" / "churn.json")
    return ModelMonitor(
        "churn",
        load_policy_file(path),
        lambda m, v: profile,
        join_ttl_s=2 * 3600.0,
        join_max_entries=10**6,
    )


def test_labeled_windows_do_not_depend_on_how_the_topics_interleave(tmp_path: Path) -> None:
    """Six hours of predictions, each labeled 30 min later (TTL 2 h), the labels topic read in
    step or 3 h behind the predictions topic: the same 360 matches, the same labeled windows."""
    t0 = datetime(2026, 11, 26, 10, tzinfo=UTC)
    preds, labels = [], []
    for i in range(360):
        t, pid = t0 + timedelta(minutes=i), f"p{i}"
        lt = t + timedelta(minutes=30)
        raw = prediction_event(
            "churn",
            "1",
            {"plan": "pro"},
            {"label": 0, "score": 0.1},
            prediction_id=pid,
            timestamp=format_time(t.timestamp()),
        )
        preds.append((t, decode(raw)))
        raw = label_event("churn", pid, i % 2, timestamp=format_time(lt.timestamp()))
        labels.append((lt, decode(raw)))
    runs = []
    for lag in (timedelta(0), timedelta(hours=3)):
        mon = _monitor(tmp_path)
        merged = sorted(
            [(t, 0, e) for t, e in preds] + [(t + lag, 1, e) for t, e in labels],
            key=lambda x: (x[0], x[1]),
        )
        windows = []
        for k in range(0, len(merged), 100):
            out = mon.process([e for _, _, e in merged[k : k + 100]])
            windows += [(w["start"], w["count"]) for w in out.windows if w["stream"] == "labeled"]
        c = mon.join.counters
        runs.append((windows, c.matched, c.expired_unlabeled))
    assert runs[0][1:] == (360, 0)
    assert runs[1] == runs[0]
    assert [n for _, n in runs[0][0]] == [30, 60, 60, 60, 60]
