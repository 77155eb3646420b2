"""A policy whose window changes kind between a checkpoint and its restore (count → event time,
and back): the model goes on being judged — windows keep closing with the new spec, no record
is dropped as late, none waits forever — instead of the restored window state and the new spec
contradicting each other."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

from driftwarden.daemon.events import PredictionEvent, decode
from driftwarden.daemon.monitor import ModelMonitor, _specs
from driftwarden.detectors.profile import ReferenceProfile
from driftwarden.policies.loader import load_policy_file
from driftwarden.policies.model import Policy
from tests.daemon.embedded import POLICIES, ROOT, embedded_daemon

COUNT = "window: {events: 2000, labeled: {events: 1000}}"
# The example events are two seconds apart: a 1 h window holds ~1800 of them.
DURATION = "window: {duration: 1h, labeled: {duration: 1h}}"


def _policies(tmp: Path, window: str) -> Path:
    pol = tmp / "policies"
    shutil.rmtree(pol, ignore_errors=True)
    shutil.copytree(POLICIES, pol)
    shutil.copy(ROOT / "config" / "profiles" / "churn.json", tmp / "churn.json")
    policy = pol / "churn.yaml"
    text = policy.read_text().replace("file:../../profiles/churn.json", "file:../churn.json")
    assert COUNT in text
    policy.write_text(text.replace(COUNT, window))
    return pol


@pytest.mark.parametrize(("before", "after"), [(COUNT, DURATION), (DURATION, COUNT)])
def test_a_window_that_changes_kind_goes_on_after_a_restore(
    tmp_path: Path, before: str, after: str
) -> None:
    first = embedded_daemon(tmp_path, policies=_policies(tmp_path, before))
    assert first.run(max_events=12_000).records == 12_000
    windows_before = first.summary.windows
    assert windows_before > 0

    second = embedded_daemon(tmp_path, policies=_policies(tmp_path, after))
    summary = second.run(max_events=24_000)
    assert summary.records == 24_000  # from the checkpoint on: records 12 000 to 36 000
    mon = second.units[0].models["churn"]
    assert summary.windows >= 8  # both streams keep closing windows with the new spec
    assert (mon.pred_windows.spec, mon.lab_windows.spec) == _specs(mon.policy)
    assert mon.pred_windows.late == 0 and mon.lab_windows.late == 0
    # Nothing waits for a window that never opens: what is buffered is at most the span of
    # the open windows.
    waiting = sum(len(v) for v in mon.pred_windows.future.values())
    assert waiting <= 2000


# -- a changed window size, by hot reload or across a restart: decisions go on -----------------


def _window_policy(tmp: Path, window: str, extra_rule: str = "") -> Policy:
    path = tmp / f"churn-{len(list(tmp.glob('churn-*.yaml')))}.yaml"
    path.write_text(
        f"""apiVersion: driftwarden/v1
kind: Policy
model: churn
reference: file:{ROOT / "config" / "profiles" / "churn.json"}
window: {window}
detectors:
  - {{name: scores, type: prediction_drift, method: js, threshold: 0.1}}
rules:
  - {{name: seen, when: scores.n >= 1, actions: [{{alert: log}}]}}
{extra_rule}
receivers:
  log: {{type: log}}
""",
        encoding="utf-8",
    )
    return load_policy_file(path)


def _example_predictions(n: int) -> list[PredictionEvent]:
    out: list[PredictionEvent] = []
    with gzip.open(ROOT / "config" / "examples" / "events.jsonl.gz", "rb") as f:
        for line in f:
            ev = decode(line.rstrip(b"\n"))
            if isinstance(ev, PredictionEvent):
                out.append(ev)
                if len(out) == n:
                    break
    return out


def _monitor(policy: Policy) -> ModelMonitor:
    profile = ReferenceProfile.load(ROOT / "config" / "profiles" / "churn.json")
    return ModelMonitor(
        "churn", policy, lambda m, v: profile, join_ttl_s=1e9, join_max_entries=10**6
    )


NEW_RULE = "  - {name: new-rule, when: scores.n >= 1, actions: [{alert: log}]}"


@pytest.mark.parametrize(
    ("before", "after"),
    [("{events: 100}", "{events: 500}"), ("{duration: 10m}", "{duration: 20m}")],
)
def test_a_hot_reload_that_changes_the_window_size_keeps_deciding(
    tmp_path: Path, before: str, after: str
) -> None:
    """The new windows' indexes count on another scale (from 0; event time / a longer
    duration): the evaluator must not take them for windows it decided already."""
    events = _example_predictions(6000)
    mon = _monitor(_window_policy(tmp_path, before))
    assert mon.process(events[:3000]).decisions  # 'seen' fired under the old window
    mon.set_policy(_window_policy(tmp_path, after, NEW_RULE))
    out = mon.process(events[3000:])
    closed = [w["index"] for w in out.windows if w["stream"] == "predictions"]
    assert closed
    assert [(d.rule, d.status, d.window_index) for d in out.decisions] == [
        ("new-rule", "firing", closed[0])
    ]


@pytest.mark.parametrize("saved_spec", [True, False], ids=["spec-saved", "older-checkpoint"])
def test_a_restore_under_a_longer_duration_window_starts_new_windows(
    tmp_path: Path, saved_spec: bool
) -> None:
    """10 min → 20 min while the daemon was stopped: restored as they were, the saved windows'
    index (event time / 10 min) lay far ahead of every new record's (event time / 20 min),
    which all counted as late — nothing was judged for decades."""
    events = _example_predictions(6000)
    first = _monitor(_window_policy(tmp_path, "{duration: 10m}"))
    first.process(events[:3000])
    state = first.state()
    if not saved_spec:
        del state["window_specs"]  # as a checkpoint written before the specs were recorded
    second = _monitor(_window_policy(tmp_path, "{duration: 20m}", NEW_RULE))
    second.restore(state)
    out = second.process(events[3000:])
    assert second.pred_windows.late == 0
    closed = [w["index"] for w in out.windows if w["stream"] == "predictions"]
    assert len(closed) >= 5
    assert ("new-rule", "firing", closed[0]) in [
        (d.rule, d.status, d.window_index) for d in out.decisions
    ]
    # Unchanged spec: the saved windows go on where they were.
    same = _monitor(_window_policy(tmp_path, "{duration: 10m}"))
    same.restore(first.state())
    assert same.pred_windows.state() == first.pred_windows.state()
    assert same.policy_state == first.policy_state
