"""Hot reload: a bad edit keeps the last good policy in force and alerts; a good edit applies."""

from __future__ import annotations

import shutil
from pathlib import Path

import orjson
from structlog.testing import capture_logs

from driftwarden.daemon.app import build_daemon
from driftwarden.daemon.settings import load_settings
from driftwarden.daemon.sinks import MemorySink

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "config" / "examples" / "events.jsonl.gz"


def test_bad_edit_keeps_last_good_policy_and_alerts(tmp_path: Path) -> None:
    """Mid-stream: a broken edit is refused with an alert naming file:line; a fixed one applies."""
    pol = tmp_path / "policies"
    shutil.copytree(ROOT / "config" / "embedded" / "policies", pol)
    shutil.copy(ROOT / "config" / "profiles" / "churn.json", tmp_path / "churn.json")
    policy = pol / "churn.yaml"
    policy.write_text(
        policy.read_text().replace("file:../../profiles/churn.json", "file:../churn.json")
    )
    cfg = tmp_path / "driftwarden.yaml"
    cfg.write_text(
        f"source: file\nfile: {{events: {EVENTS}}}\npolicies: {pol}\n"
        f"state: {{dir: {tmp_path / 'state'}}}\nhttp: {{enabled: false}}\n"
    )
    sink = MemorySink()
    daemon = build_daemon(load_settings(cfg, env={}), sink=sink)
    daemon.run(max_events=10_000)  # the clean period

    good = policy.read_text()
    policy.write_text(good.replace("when: quality", "when: qualty"))
    with capture_logs() as logs:
        errors = daemon.reload_policies(pol)
        daemon.tick()  # delivers the alert through the outbox to the log receiver
    assert errors and errors[0].startswith(f"{policy}:") and "qualty" in errors[0]
    alerts = [
        e for e in logs if e.get("labels", {}).get("alertname") == "DriftwardenPolicyReloadFailed"
    ]
    assert alerts and "policy edit refused" in alerts[0]["summary"]
    assert daemon.policies.for_model("churn").rules[0].when_text == "quality"  # still in force

    # A good edit: the broken-input rule now also needs the drift detector.
    policy.write_text(
        good.replace(
            "name: broken-input\n    when: quality",
            "name: broken-input\n    when: quality and drift",
        )
    )
    assert daemon.reload_policies(pol) == []
    assert daemon.policies.for_model("churn").rules[0].when_text == "quality and drift"
    daemon.run()
    decisions = [orjson.loads(v) for _, v, _ in sink.records["driftwarden.decisions"]]
    fired = [d for d in decisions if d.get("rule") == "broken-input" and d["status"] == "firing"]
    assert fired and all(d["detectors"]["drift"] and d["detectors"]["quality"] for d in fired)


def test_policy_cron_retrain_becomes_a_decision_through_the_outbox(tmp_path: Path) -> None:
    """`schedule: {retrain: ...}` validates as a crontab and, when it fires, hands the model's
    retrain action to the executor like a rule would (one job per model, idempotent)."""
    from driftwarden.daemon.wiring import Scheduler
    from driftwarden.policies.loader import load_policy_file, validate_paths

    pol = tmp_path / "policies"
    shutil.copytree(ROOT / "config" / "embedded" / "policies", pol)
    shutil.copy(ROOT / "config" / "profiles" / "churn.json", tmp_path / "churn.json")
    policy = pol / "churn.yaml"
    text = policy.read_text().replace("file:../../profiles/churn.json", "file:../churn.json")
    retrain = "      - retrain: {trainer: examples.churn:train, gates: {min: {roc_auc: 0.7}}}\n"
    text = text.replace(
        "    actions: [{alert: log}]\nreceivers:",
        f"    actions:\n      - {{alert: log}}\n{retrain}receivers:",
    )
    policy.write_text(text + "schedule: {retrain: '0 3 * * 1'}\n")
    assert validate_paths([str(policy)]) == []
    bad = tmp_path / "bad.yaml"
    bad.write_text(text + "schedule: {retrain: 'every monday'}\n")
    errors = validate_paths([str(bad)])
    assert errors and "schedule.retrain: 'every monday' is not a crontab expression" in errors[0]

    cfg = tmp_path / "driftwarden.yaml"
    cfg.write_text(
        f"source: file\nfile: {{events: {EVENTS}}}\npolicies: {pol}\n"
        f"state: {{dir: {tmp_path / 'state'}}}\nhttp: {{enabled: false}}\n"
    )
    daemon = build_daemon(load_settings(cfg, env={}), sink=MemorySink())
    loaded = load_policy_file(policy)
    assert loaded.schedule is not None and loaded.schedule.cron == "0 3 * * 1"
    assert daemon.scheduled_retrain(daemon.policies.for_model("churn"), 1_795_000_000.0) == 1
    assert daemon.scheduled_retrain(daemon.policies.for_model("churn"), 1_795_000_000.0) == 0
    jobs = daemon.executor.outbox.pending()
    assert [j.kind for j in jobs] == ["retrain"]
    assert jobs[0].key.startswith("churn/scheduled-retrain/")

    sched = Scheduler(daemon.work)  # the crontab is accepted by the real scheduler too
    sched.cron(loaded.schedule.cron, lambda: None, "cron-test")
