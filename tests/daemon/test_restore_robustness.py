"""Restoring a model's state never crash-loops the daemon on what changed around it: the
reference profile travels in the checkpoint (a registry outage does not stop a restart or a
takeover), a rebuilt profile file or a detector whose type changed drops only that detector's
window, a profile that cannot be found drops the detectors (join, counters and alert state
kept) — and a policy whose detectors do not fit its profile is refused by ``validate`` and at
start-up with the detector's line, or, met at run time (a new model version without a
feature), leaves the model counted but unmonitored instead of dead-lettering its events, and
alerts the policy's receivers until it is judged again."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from driftwarden.daemon.app import StartupError, build_daemon
from driftwarden.daemon.cli import main
from driftwarden.daemon.runner import Daemon
from driftwarden.daemon.settings import load_settings
from driftwarden.daemon.sinks import MemorySink
from driftwarden.detectors.profile import ReferenceProfile
from driftwarden.policies.loader import load_policies

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "config/examples/events.jsonl.gz"
POLICY = ROOT / "config/embedded/policies/churn.yaml"


def _setup(
    tmp: Path, reference: str | None = None, edit: Callable[[str], str] | None = None
) -> Path:
    """A config over a copy of the embedded churn policy and profile (both editable here)."""
    (tmp / "policies").mkdir(exist_ok=True)
    profile = tmp / "churn.json"
    if not profile.exists():
        shutil.copy(ROOT / "config/profiles/churn.json", profile)
    text = POLICY.read_text().replace(
        "file:../../profiles/churn.json", reference or f"file:{profile}"
    )
    (tmp / "policies" / "churn.yaml").write_text(edit(text) if edit else text)
    cfg = tmp / "driftwarden.yaml"
    cfg.write_text(
        f"source: file\nfile: {{events: {EVENTS}}}\npolicies: {tmp / 'policies'}\n"
        f"state: {{dir: {tmp / 'state'}}}\nhttp: {{enabled: false}}\n"
    )
    return cfg


def _states(daemon: Daemon) -> dict[str, dict]:
    mon = daemon.units[0].models["churn"]
    return {k: d.state_dict() for k, d in mon.detectors.items()}


def _first_run(cfg: Path, **kw: object) -> dict[str, dict]:
    daemon = build_daemon(load_settings(cfg, env={}), sink=MemorySink(), **kw)  # type: ignore[arg-type]
    daemon.run(max_events=6_000)
    states = _states(daemon)
    assert states
    return states


def test_a_registry_reference_restores_from_the_checkpoints_copy(tmp_path: Path) -> None:
    """models:/ reference: the first run has its profile; the restart has no registry at all
    (the loader raises) and restores every detector from the checkpoint's copy."""
    cfg = _setup(tmp_path, reference="models:/churn@champion")
    before = _first_run(cfg, profile=ReferenceProfile.load(tmp_path / "churn.json"))
    again = build_daemon(load_settings(cfg, env={}), sink=MemorySink())  # no tracking_uri
    assert _states(again) == before


def test_a_rebuilt_profile_file_drops_only_the_detectors_it_no_longer_fits(
    tmp_path: Path,
) -> None:
    cfg = _setup(tmp_path)
    before = _first_run(cfg)
    doc = json.loads((tmp_path / "churn.json").read_text())
    edges = doc["features"]["user_age"]
    # The operator rebuilt the profile with other bins for one feature.
    for key in ("bin_edges", "edges"):
        if key in edges:
            edges[key] = edges[key][::2]
    (tmp_path / "churn.json").write_text(json.dumps(doc))
    again = build_daemon(load_settings(cfg, env={}), sink=MemorySink())
    after = _states(again)
    assert set(after) == set(before)
    kept = [k for k in before if after[k] == before[k]]
    assert "errors" in kept and "enterprise_recall" in kept  # labeled-stream detectors kept
    assert after["drift"] != before["drift"]  # its window starts empty on the new bins
    again.run(max_events=2_000)  # and the daemon goes on


def test_a_detector_whose_type_changed_starts_afresh(tmp_path: Path) -> None:
    cfg = _setup(tmp_path)
    before = _first_run(cfg)
    _setup(
        tmp_path,
        edit=lambda t: t.replace(
            "{name: errors, type: concept_drift, method: adwin}",
            "{name: errors, type: prediction_drift, method: js, threshold: 0.1}",
        ),
    )
    again = build_daemon(load_settings(cfg, env={}), sink=MemorySink())
    after = _states(again)
    assert after["errors"]["kind"] == "prediction_drift" and after["drift"] == before["drift"]


def test_a_missing_profile_at_restore_drops_the_detectors_not_the_model(tmp_path: Path) -> None:
    """No profile anywhere (a state from before profiles were kept in checkpoints, and the
    file gone): the model keeps its join, counters and alert state; no detectors until its
    profile loads; the events are counted as unmonitored."""
    cfg = _setup(tmp_path)
    _first_run(cfg)
    state_file = next((tmp_path / "state").glob("checkpoint-p0*"))
    doc = json.loads(state_file.read_text())
    for model_state in doc["models"].values():
        model_state.pop("profile")
    state_file.write_text(json.dumps(doc))
    settings = load_settings(cfg, env={})
    from driftwarden.daemon.app import load_policy_set

    policies = load_policy_set(settings["policies"])
    (tmp_path / "churn.json").unlink()
    again = build_daemon(settings, sink=MemorySink(), policies=policies)
    mon = again.units[0].models["churn"]
    assert mon.detectors == {} and mon.events == 6_000 - mon.labels
    again.run(max_events=1_000)
    assert again.units[0].unmonitored["churn"] > 0
    assert (
        again.metrics.registry.get_sample_value(
            "driftwarden_unmonitored_events_total", {"model": "churn", "reason": "no_reference"}
        )
        > 0
    )


def _misfit(text: str) -> str:
    return text.replace("features: all}", "features: [plan, not_a_feature]}")


def test_validate_and_start_up_refuse_a_detector_that_does_not_fit_its_profile(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _setup(tmp_path, edit=_misfit)
    policy = tmp_path / "policies" / "churn.yaml"
    line = next(i for i, t in enumerate(policy.read_text().splitlines(), 1) if "not_a_feature" in t)
    assert main(["validate", str(tmp_path / "policies")]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"{policy}:{line}: detector 'drift' does not fit the reference profile")
    assert "not_a_feature" in out
    with pytest.raises(StartupError, match=f"{policy}:{line}: detector 'drift'"):
        build_daemon(load_settings(cfg, env={}), sink=MemorySink())


def test_a_detector_that_does_not_fit_at_run_time_leaves_the_model_unmonitored(
    tmp_path: Path,
) -> None:
    """A hot reload (or a new model version's profile) the policy's detectors do not fit:
    the model's events are counted, not dead-lettered, and nothing raises."""
    cfg = _setup(tmp_path)
    daemon = build_daemon(load_settings(cfg, env={}), sink=MemorySink())
    daemon.run(max_events=3_000)
    _setup(tmp_path, edit=_misfit)
    policies, errors = load_policies(tmp_path / "policies")
    assert errors == []  # the file itself is fine: only the profile says otherwise
    daemon.set_policies(policies)
    with capture_logs() as logs:
        daemon.run(max_events=6_000)
        daemon.tick()  # delivers the alert through the outbox to the policy's log receiver
    assert daemon.summary.invalid == 0 and "driftwarden.dlq" not in daemon.sink.records
    assert daemon.units[0].unmonitored["churn"] > 0
    alerts = [
        e for e in logs if e.get("labels", {}).get("alertname") == "DriftwardenModelUnmonitored"
    ]
    assert len(alerts) == 1 and "not_a_feature" in alerts[0]["description"]
    assert alerts[0]["labels"]["model"] == "churn" and alerts[0]["status"] == "firing"

    # The policy fixed: the model is judged again and the alert resolves.
    _setup(tmp_path)
    daemon.set_policies(load_policies(tmp_path / "policies")[0])
    with capture_logs() as logs:
        daemon.run(max_events=9_000)
        daemon.tick()
    resolved = [
        e for e in logs if e.get("labels", {}).get("alertname") == "DriftwardenModelUnmonitored"
    ]
    assert [e["status"] for e in resolved] == ["resolved"]
    assert daemon.units[0].models["churn"].detectors
